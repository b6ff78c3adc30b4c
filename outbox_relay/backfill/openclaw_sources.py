"""Where an OpenClaw state directory keeps its transcripts, and reading them without disturbing it.

Layout (openclaw@2026.9.6; see docs-openclaw-transcripts.md):

    <DIR>/agents/<agent>/sessions/sessions.json            session key -> {sessionId, displayName, …}
    <DIR>/agents/<agent>/sessions/<sessionId>.jsonl         the JSONL era's live transcripts
    <DIR>/agents/<agent>/sessions/<sessionId>.jsonl.reset.<ts>[.zst]   archives (also .deleted., .bak.)
    <DIR>/agents/<agent>/session-sqlite-import-archive/<key>.<file>.imported-<ms>   migrated copies
    <DIR>/agents/<agent>/agent/openclaw-agent.sqlite        the SQLite era: transcript_events,
                                                            session_windows, conversations

Everything is opened for reading only. The SQLite file is opened with `mode=ro` (the gateway writes it
live in WAL: a reader never blocks it) and read in short chunks, each its own read transaction, so the
gateway's checkpoints are not held back for the whole backfill.

Nothing under DIR is trusted (openclaw_files.py reads the JSONL and JSON files). What cannot be read
at all, or not to its end (a symlink loop, a corrupt or locked store, a corrupt zstd frame), is an
unreadable source: in Agent.unreadable when found while looking for transcripts, a SourceUnreadable
item when found while reading one.
"""

import dataclasses
import json
import logging
import os
import sqlite3

from ..errors import OutboxRelayError
from ..message.openclaw_text import split_session_key
from ..outbox.sqlitefile import file_uri
from .openclaw_files import MAX_EVENT_BYTES, SourceUnreadable, jsonl_lines, load_json_file

log = logging.getLogger(__name__)

SQLITE_FILE = os.path.join("agent", "openclaw-agent.sqlite")
IMPORT_ARCHIVE = "session-sqlite-import-archive"
CHUNK_ROWS = 500
READ_BUSY_TIMEOUT_S = 5
# Files beside the transcripts that are not transcripts: runtime traces (another format), lock files
# and half-written temporaries. Every other name with ".jsonl" in it is read (live files, compaction
# checkpoints, .reset./.deleted./.bak. archives, doctor backups): copies cost only a dedupe.
NOT_TRANSCRIPTS = (".trajectory.jsonl", ".lock", ".tmp")


class TranscriptsUnreadable(OutboxRelayError):
    """Raised when the OpenClaw directory is missing, is not one, or cannot be read at all."""


@dataclasses.dataclass
class Transcript:
    """One session's transcript: a JSONL file, or one session's rows in an agent's SQLite file."""

    agent: str
    where: str  # for the report: a path relative to DIR, `#<session id>` for SQLite rows
    session_id: str | None
    session: dict  # {key, channel, chat_type, chat_id, topic}: what is known of its chat
    read: object  # callable() -> iterator of (position, line object | Exception)
    sessions: dict  # the agent's session id -> session dict, for a header naming another id


@dataclasses.dataclass
class Agent:
    name: str
    sessions: dict  # session id -> session dict
    group_names: dict  # a group's display name -> its chat id (for archives whose key is lost)
    transcripts: list
    # conversation_id -> {kind, native_channel_id}: the SQLite store's conversations, which a line's
    # __openclaw.transport.conversationRef names (the p2p oc_ chat id is only there)
    conversations: dict = dataclasses.field(default_factory=dict)
    unreadable: list = dataclasses.field(default_factory=list)  # (where, why): found while looking


def discover(root):
    """Every agent under DIR/agents/ with its transcripts: SQLite first (the current store), then
    live JSONL, then archives, so that the first copy of a message read is the newest store's."""
    return [_agent(root, name) for name in check_root(root)]


def check_root(root):
    """The agent names under DIR/agents/, or TranscriptsUnreadable saying what is wrong with DIR."""
    agents_dir = os.path.join(root, "agents")
    if not os.path.isdir(root):
        raise TranscriptsUnreadable(f"{root} is not a directory (give OpenClaw's state directory, "
                                    "by default ~/.openclaw)")
    if not os.path.isdir(agents_dir):
        raise TranscriptsUnreadable(f"{root} has no agents/ directory: not an OpenClaw state directory")
    try:
        return sorted(e.name for e in os.scandir(agents_dir) if _dir_or_unknown(e))
    except OSError as e:
        raise TranscriptsUnreadable(f"{agents_dir} cannot be read: {e.strerror}") from None


def _dir_or_unknown(entry):
    """A directory, or an entry that cannot be looked at (a symlink loop): _agent reports that one."""
    try:
        return entry.is_dir()
    except OSError:
        return True


def _agent(root, name):
    agent = Agent(name, {}, {}, [])
    base = os.path.join(root, "agents", name)
    db = os.path.join(base, SQLITE_FILE)
    if not _present(root, agent, base):
        return agent
    db_sessions, db_names = (_sqlite_sessions(root, agent, db) if _present(root, agent, db) and os.path.isfile(db)
                             else ({}, []))
    if db_sessions:
        agent.conversations = _conversations(db)
    for path in [os.path.join(base, "sessions", "sessions.json")] + _files(root, agent, IMPORT_ARCHIVE,
                                                                           "sessions.json"):
        _read_store(root, path, agent)
    agent.sessions.update(db_sessions)  # the SQLite era's is the newer record
    for group_name, info in db_names:
        _learn_group_name(agent, group_name, info)
    for sid in db_sessions:
        agent.transcripts.append(Transcript(agent.name, f"{os.path.relpath(db, root)}#{sid}", sid,
                                            db_sessions[sid], _reader(_sqlite_rows, db, sid), agent.sessions))
    _add_jsonl(root, agent)
    return agent


def _present(root, agent, path):
    """True if `path` can be looked at, False if it is missing, None (noted in agent.unreadable) if
    looking fails: a symlink loop, a folder that may not be entered."""
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        agent.unreadable.append((os.path.relpath(path, root), f"cannot read: {e.strerror}"))
        return None


def _add_jsonl(root, agent):
    files = _files(root, agent, "sessions", ".jsonl")
    live = [p for p in files if p.endswith(".jsonl")]
    for path in live + [p for p in files if p not in live]:
        # <session id>.jsonl, <id>.jsonl.reset.<ts>, <id>.checkpoint.<uuid>.jsonl: the id comes first.
        agent.transcripts.append(_jsonl_transcript(root, path, agent, os.path.basename(path).split(".")[0]))
    for path in _files(root, agent, IMPORT_ARCHIVE, ".jsonl"):
        # <session key slug>.<file>.imported-<ms>: the session header inside names the id.
        agent.transcripts.append(_jsonl_transcript(root, path, agent, None))


def _reader(fn, *args):
    return lambda: fn(*args)


def _files(root, agent, sub, needle):
    """The files in the agent's folder `sub` whose names hold `needle`; a folder or an entry that
    cannot be looked at goes to agent.unreadable."""
    folder = os.path.join(root, "agents", agent.name, sub)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as e:
        agent.unreadable.append((os.path.relpath(folder, root), f"cannot list: {e.strerror}"))
        return []
    files = []
    for entry in entries:
        if needle not in entry.name or entry.name.endswith(NOT_TRANSCRIPTS):
            continue
        try:
            if entry.is_file():
                files.append(entry.path)
        except OSError as e:
            agent.unreadable.append((os.path.relpath(entry.path, root), f"cannot read: {e.strerror}"))
    return files


# -- sessions: key -> chat ------------------------------------------------------------------------

def session_info(key, channel=None, chat_type=None, chat_id=None):
    """What a session tells about its chat: the key's parts first, the store's fields after."""
    parts = split_session_key(key)
    return {"key": key if isinstance(key, str) else None,
            "channel": parts["channel"] or channel,
            "chat_type": parts["chat_type"] or chat_type,
            "chat_id": parts["peer"].split(":")[0] if parts["peer"] else chat_id,
            "topic": parts["topic"]}


def _read_store(root, path, agent):
    """sessions.json (or an archived copy of it): session key -> {sessionId, displayName, …}."""
    data, problem = load_json_file(path)
    if problem is not None:
        agent.unreadable.append((os.path.relpath(path, root), problem))
    if not isinstance(data, dict):
        return
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sessionId"), str):
            continue
        origin = entry.get("origin") if isinstance(entry.get("origin"), dict) else {}
        info = session_info(key, origin.get("provider"), entry.get("chatType"))
        agent.sessions.setdefault(entry["sessionId"], info)
        for field in ("displayName", "subject", "groupSubject"):
            _learn_group_name(agent, entry.get(field), info)


def _learn_group_name(agent, name, info):
    if not (isinstance(name, str) and name and info["chat_type"] == "group" and info["chat_id"]):
        return
    # Two groups of one name: the name says nothing, forget it.
    known = agent.group_names.setdefault(name, info["chat_id"])
    if known != info["chat_id"]:
        agent.group_names[name] = None


# -- JSONL ----------------------------------------------------------------------------------------

def _jsonl_transcript(root, path, agent, sid):
    return Transcript(agent.name, os.path.relpath(path, root), sid, agent.sessions.get(sid) or session_info(None),
                      _reader(jsonl_lines, path), agent.sessions)


# -- SQLite ---------------------------------------------------------------------------------------

def connect_readonly(path):
    """A read-only connection: `mode=ro` can neither write nor take the write lock; busy_timeout
    covers the moments a WAL reader must wait (the gateway restarting a checkpoint)."""
    conn = sqlite3.connect(file_uri(path, "ro"), uri=True, timeout=READ_BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _columns(conn, table):
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _sqlite_sessions(root, agent, path):
    """({session id: session dict}, [(group name, session dict)]), from session_windows +
    conversations (whatever columns this schema version has); a session that only has transcript
    rows is read too, its chat then known from its lines alone. A store that cannot be read (corrupt,
    locked past the busy timeout) goes to agent.unreadable."""
    try:
        conn = connect_readonly(path)
        try:
            sessions = {sid: session_info(None) for (sid,) in
                        conn.execute("SELECT DISTINCT session_id FROM transcript_events")}
            names = []
            if "session_key" in _columns(conn, "session_windows"):
                for row in _window_rows(conn):
                    sessions[row["session_id"]] = info = _window_info(row)
                    names += [(row.get(k), info) for k in ("display_name", "label")]
            return sessions, names
        finally:
            conn.close()
    except sqlite3.Error as e:
        agent.unreadable.append((os.path.relpath(path, root), f"cannot read: {e}"))
        return {}, []


def _conversations(path):
    """conversation_id -> {kind, native_channel_id} of the store's conversations table ({} when this
    schema has none, or it cannot be read: the lines' chats then come from their sessions)."""
    try:
        conn = connect_readonly(path)
        try:
            if not {"conversation_id", "kind", "native_channel_id"} <= _columns(conn, "conversations"):
                return {}
            rows = conn.execute("SELECT conversation_id, kind, native_channel_id FROM conversations")
            return {cid: {"kind": kind, "native_channel_id": native} for cid, kind, native in rows}
        finally:
            conn.close()
    except sqlite3.Error as e:
        log.warning("%s: conversations unreadable: %s", path, e)
        return {}


def _window_rows(conn):
    w, c = _columns(conn, "session_windows"), _columns(conn, "conversations")
    wanted = [f"w.{x}" for x in ("session_id", "session_key", "channel", "chat_type", "display_name") if x in w]
    join = ""
    if c and "primary_conversation_id" in w:
        wanted += [f"c.{x}" for x in ("peer_id", "native_channel_id", "native_direct_user_id", "label") if x in c]
        join = " LEFT JOIN conversations c ON c.conversation_id = w.primary_conversation_id"
    cur = conn.execute(f"SELECT {', '.join(wanted)} FROM session_windows w{join}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur]


def _window_info(row):
    kind = row.get("chat_type")
    native = row.get("native_direct_user_id") if kind == "direct" else row.get("native_channel_id")
    peer = native or row.get("peer_id")
    if isinstance(peer, str) and peer.split(":", 1)[0] in ("chat", "user", "channel"):
        peer = peer.split(":", 1)[1]
    return session_info(row.get("session_key"), row.get("channel"), kind, peer)


def _sqlite_rows(path, sid):
    """(seq, event object or the reason it is not one), CHUNK_ROWS rows per short read."""
    try:
        conn = connect_readonly(path)
    except sqlite3.Error as e:
        yield 0, SourceUnreadable(f"cannot open: {e}")
        return
    try:
        has_zstd = "event_zstd" in _columns(conn, "transcript_events")
        columns = "seq, event_json, event_zstd, event_utf8_bytes" if has_zstd else "seq, event_json, NULL, NULL"
        # Up to the last row there now: what the gateway appends meanwhile is the next run's, so a
        # busy session cannot keep one backfill reading forever.
        (end,) = conn.execute("SELECT max(seq) FROM transcript_events WHERE session_id = ?", (sid,)).fetchone()
        last = None
        while end is not None and (last is None or last < end):
            rows = conn.execute(
                f"SELECT {columns} FROM transcript_events WHERE session_id = ? AND seq > coalesce(?, -1)"
                " AND seq <= ? ORDER BY seq LIMIT ?", (sid, last, end, CHUNK_ROWS)).fetchall()
            for seq, text, blob, size in rows:
                yield seq, _event(text, blob, size)
            if not rows:
                return
            last = rows[-1][0]
    except sqlite3.Error as e:
        yield -1, SourceUnreadable(f"reading stopped: {e}")
    finally:
        conn.close()


def _event(text, blob, size):
    try:
        if text is None and blob is not None:
            import zstandard
            limit = size if isinstance(size, int) and 0 < size <= MAX_EVENT_BYTES else MAX_EVENT_BYTES
            text = zstandard.ZstdDecompressor().decompress(bytes(blob), max_output_size=limit)
        return json.loads(text)
    except Exception as e:  # noqa: BLE001 - zstd and JSON errors alike: this one row is unreadable
        return ValueError(f"event unreadable: {str(e)[:80]}")
