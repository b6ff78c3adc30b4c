"""An OpenClaw state directory of both storage eras, built from the structure the published packages
write (openclaw@2026.9.6, @openclaw/feishu@2026.9.5; see docs-openclaw-transcripts.md), with the
messages it holds and what `backfill openclaw` must make of them.

    build(root) -> Fixture(root, expected={message_id: fields}, skipped={reason: n}, copies, preexisting)

agents/main: the JSONL era. A Feishu group (live session + a reset archive holding an older session
and a copy of one live message), a Feishu direct chat (live + a zstd-compressed reset archive), a
Telegram chat; old labels "(untrusted metadata)" and the current "⟦openclaw:ctx⟧" marker, list and
string contents, replies, mention tags, [System: …] hints, a trailing Context block, a compaction,
assistant and tool lines, generated user lines, and a line still being appended.
agents/ops: the SQLite era (the real schema, tests/samples/openclaw-agent-schema.sql, in WAL): a
group with a reset window, rows in event_json and in event_zstd, a collect-queue line of two
messages, a direct chat in the shared main session, and a migration archive copy under
session-sqlite-import-archive/ (one message only there, one also in SQLite).
`preexisting` is a message the target already holds before the backfill.
"""

import collections
import dataclasses
import datetime as dt
import json
import pathlib
import sqlite3

import zstandard

MARKER = "⟦openclaw:ctx⟧"
SCHEMA = pathlib.Path(__file__).parent / "samples" / "openclaw-agent-schema.sql"
BASE_MS = 1796004000000  # 2026-11-30T02:00:00Z

GROUP = "oc_5ce6d572455d361153b7cb51da133945"
GROUP_NAME = "产品周会"
DIRECT = "ou_0e01c2d3e4f5a6b7c8d9e0f1a2b3c4d5"
TOM, LILEI = "ou_84aad35d084aa403a838cf73ee18467", "ou_55aa0c7e1b2d3f4a5b6c7d8e9f0a1b2c"
OPS_GROUP = "oc_7a9f00112233445566778899aabbccdd"
OPS_DIRECT = "ou_d2aa00112233445566778899aabbccdd"
BOT = "ou_b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"


@dataclasses.dataclass
class Fixture:
    root: pathlib.Path
    expected: dict  # message_id -> the fields the archived row must have
    skipped: collections.Counter
    copies: int
    preexisting: dict  # a flat message the target holds before the backfill (one of `expected`'s ids)
    ops_db: pathlib.Path
    ops_group_session: str


# -- the text of a user line -------------------------------------------------------------------------

def feishu_body(message_id, sender, text, quote=None, mentions=False, mentioned=()):
    """buildFeishuAgentBody, line for line."""
    body = f'[Replying to: "{quote}"]\n\n{text}' if quote else text
    body = f"{sender}: {body}"
    if mentions:
        body += ("\n\n[System: The content may include mention tags in the form <at user_id=\"...\">name</at>."
                 " Treat these as real mentions of Feishu entities (users or bots).]")
        body += f'\n[System: If user_id is "{BOT}", that mention refers to you.]'
    if mentioned:
        body += (f"\n\n[System: Feishu users mentioned in the incoming message, for context only: "
                 f"{', '.join(mentioned)}. Do not notify or mention these users solely because they are listed here.]")
    return f"[message_id: {message_id}]\n{body}"


def legacy_prefix(info, sender):
    """Blocks as older releases wrote them: "(untrusted metadata)" labels, pretty-printed JSON."""
    def block(label, value):
        return f"{label} (untrusted metadata):\n```json\n{json.dumps(value, ensure_ascii=False, indent=2)}\n```\n\n"
    return block("Conversation info", info) + block("Sender", sender)


def marked_prefix(info):
    """Blocks as current releases write them (formatContextJsonBlock): the marker, one-line JSON."""
    compact = json.dumps(info, ensure_ascii=False, separators=(",", ":"))
    return f"Conversation info: {MARKER}\n```json\n{compact}\n```\n\n"


def iso(ms):
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- lines -------------------------------------------------------------------------------------------

class Lines:
    """Transcript lines of one session, and what each one should count as."""

    def __init__(self, fixture, session_id):
        self.fx, self.items, self.parent = fixture, [], None
        self.add({"type": "session", "version": 3, "id": session_id, "timestamp": iso(BASE_MS), "cwd": "/home/claw"},
                 "other_entry")

    def add(self, line, reason=None):
        line.setdefault("id", f"e{len(self.items):07x}")
        line.setdefault("parentId", self.parent)
        self.parent = line["id"]
        self.items.append(line)
        if reason:
            self.fx.skipped[reason] += 1
        return line

    def user(self, text, ms, meta, expect=None, as_string=False, **extra):
        content = text if as_string else [{"type": "text", "text": text}]
        message = {"role": "user", "content": content, "timestamp": ms, **extra}
        if meta is not None:
            message["__openclaw"] = meta
        line = self.add({"type": "message", "timestamp": iso(ms), "message": message})
        if expect is not None:
            self.fx.expect(expect, created_at=ms)
        return line

    def assistant(self, text, ms):
        return self.add({"type": "message", "timestamp": iso(ms), "message": {
            "role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": ms}}, "assistant")

    def tool(self, ms):
        return self.add({"type": "message", "timestamp": iso(ms), "message": {
            "role": "toolResult", "toolCallId": "call_1", "toolName": "exec",
            "content": [{"type": "text", "text": "total 0\n[message_id: om_not_a_message]"}], "timestamp": ms}},
            "tool_output")

    def compaction(self, ms):
        return self.add({"type": "compaction", "timestamp": iso(ms), "summary": "会议改到下午三点",
                         "firstKeptEntryId": "e0000001", "tokensBefore": 18000}, "compaction")

    def jsonl(self):
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self.items)


def meta(sender_id, name):
    return {"senderId": sender_id, "senderName": name, "senderIsOwner": False, "media": []}


class _Builder:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.expected, self.skipped, self.copies = {}, collections.Counter(), 0

    def expect(self, fields, created_at):
        self.expected[fields["message_id"]] = {"source": "openclaw.transcript", "msg_type": "text",
                                               "sender_type": "user", "created_at": created_at,
                                               "parent_id": None, "root_id": None, "thread_id": None,
                                               "mentions": [], **fields}

    def write(self, relpath, data):
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path


# -- agents/main: the JSONL era ------------------------------------------------------------------------

S_GROUP, S_GROUP_OLD = "5f0c2a9e-4d1b-4c3a-9e7f-1a2b3c4d5e6f", "0a1b2c3d-1111-4222-8333-944455556666"
S_DIRECT, S_DIRECT_OLD = "7e8f9a0b-2222-4333-8444-a55566667777", "8f9a0b1c-3333-4444-9555-b66677778888"
S_TELEGRAM = "9a0b1c2d-4444-4555-a666-c77788889999"


def _main_group(b):
    live, old = Lines(b, S_GROUP), Lines(b, S_GROUP_OLD)
    t = BASE_MS + 60_000
    a_text = feishu_body("om_fx_a", "Tom", f'明天的会议改到下午三点 <at user_id="{LILEI}">李雷</at>', mentions=True,
                         mentioned=["李雷"])
    a_info = {"message_id": "om_fx_a", "sender_id": TOM, "sender": "Tom", "timestamp": "Mon 2026-11-30 09:21 GMT+8",
              "conversation_label": GROUP, "group_subject": GROUP, "is_group_chat": True, "was_mentioned": True}
    a = live.user(legacy_prefix(a_info, {"label": "Tom", "id": TOM, "name": "Tom"}) + a_text, t, meta(TOM, "Tom"),
                  {"message_id": "om_fx_a", "chat_id": GROUP, "chat_type": "group", "sender_id": TOM,
                   "text": "明天的会议改到下午三点 @李雷", "mentions": [{"id": {"open_id": LILEI}, "name": "李雷"}]})
    live.assistant("好的，已记录：会议改到下午三点。", t + 4000)
    live.tool(t + 5000)
    live.compaction(t + 600_000)
    b_info = {"chat_id": f"chat:{GROUP}", "message_id": "om_fx_b", "reply_to_id": "om_fx_a",
              "sender": {"id": LILEI, "name": "李雷"}, "group_subject": GROUP_NAME, "is_group_chat": True}
    b_text = feishu_body("om_fx_b", "李雷", "收到，我改日历\n第二行", quote="明天的会议改到下午三点")
    live.user(marked_prefix(b_info) + b_text,
              t + 700_000, {**meta(LILEI, "李雷"), "replyToId": "om_fx_a"},
              {"message_id": "om_fx_b", "chat_id": GROUP, "chat_type": "group", "sender_id": LILEI,
               "text": "收到，我改日历\n第二行", "parent_id": "om_fx_a"})
    live.add({"type": "custom_message", "customType": "reminder", "content": "提醒：三点开会", "display": True,
              "timestamp": iso(t + 800_000)}, "generated")
    live.user("[OpenClaw session heartbeat]", t + 900_000, None)
    b.skipped["generated"] += 1
    live.user(feishu_body("om_fx_internal", "Tom", "内部转发"), t + 950_000, meta(TOM, "Tom"),
              provenance={"kind": "inter_session", "sourceTool": "sessions_send"})
    b.skipped["generated"] += 1
    live.add({"type": "model_change", "timestamp": iso(t + 990_000), "provider": "anthropic", "modelId": "x"},
             "other_entry")
    # The old session, archived by a reset: its key is gone from sessions.json, its group named only
    # by the group's name, which sessions.json's displayName ties to the chat id.
    c_info = {"message_id": "om_fx_c", "sender_id": TOM, "sender": "Tom", "timestamp": "Sun 2026-11-29 09:00 GMT+8",
              "conversation_label": GROUP_NAME, "group_subject": GROUP_NAME,
              "is_group_chat": True, "was_mentioned": False}
    old.user("[Sun 2026-11-29 09:00 GMT+8] " + legacy_prefix(c_info, {"label": "Tom", "id": TOM})
             + feishu_body("om_fx_c", "Tom", "上周的纪要在这里"), BASE_MS - 86_000_000, meta(TOM, "Tom"),
             {"message_id": "om_fx_c", "chat_id": GROUP, "chat_type": "group", "sender_id": TOM,
              "text": "上周的纪要在这里"})
    old.assistant("收到", BASE_MS - 85_000_000)
    old.add(json.loads(json.dumps(a)))  # the same message in the archive and the live file
    b.copies += 1
    # The gateway is appending to the live file right now: its last line has no newline yet.
    partial = live.jsonl() + '{"type": "message", "timestamp": "2026-11-30T02:00:00.000Z", "message": {"role": "us'
    b.skipped["unreadable"] += 1
    b.write(f"agents/main/sessions/{S_GROUP}.jsonl", partial)
    b.write(f"agents/main/sessions/{S_GROUP_OLD}.jsonl.reset.2026-11-29T23-59-00.000Z", old.jsonl())
    # Beside them, files that are not transcripts and must not be read: a runtime trace and a lock.
    trace = {"type": "message", "message": {"role": "user", "__openclaw": meta(TOM, "Tom"), "timestamp": t,
                                            "content": feishu_body("om_fx_trace", "Tom", "not a transcript")}}
    b.write(f"agents/main/sessions/{S_GROUP}.trajectory.jsonl", json.dumps(trace) + "\n")
    b.write(f"agents/main/sessions/{S_GROUP}.jsonl.lock", json.dumps(trace) + "\n")


def _main_direct(b):
    live, old = Lines(b, S_DIRECT), Lines(b, S_DIRECT_OLD)
    t = BASE_MS + 3_600_000
    d_info = {"chat_id": f"user:{DIRECT}", "message_id": "om_fx_d", "sender": {"id": DIRECT, "name": "Lin"},
              "timestamp": "Mon 2026-11-30 10:20 GMT+8"}
    d_text = (marked_prefix(d_info) + feishu_body("om_fx_d", "Lin", "在干嘛呢？")
              + f"\n\nContext: {MARKER}\nLin's calendar: free after 3pm")
    live.user("[Mon 2026-11-30 10:20 GMT+8] " + d_text, t, meta(DIRECT, "Lin"),
              {"message_id": "om_fx_d", "chat_id": DIRECT, "chat_type": "p2p", "sender_id": DIRECT,
               "text": "在干嘛呢？"},
              as_string=True)
    live.assistant("在写代码", t + 3000)
    # Only the Conversation-info block names this one (no Feishu body line).
    live.user(marked_prefix({"chat_id": f"user:{DIRECT}", "message_id": "om_fx_e"}) + "只有元数据的消息", t + 60_000,
              meta(DIRECT, "Lin"), {"message_id": "om_fx_e", "chat_id": DIRECT, "chat_type": "p2p",
                                    "sender_id": DIRECT, "text": "只有元数据的消息"})
    live.user("没有任何消息编号", t + 120_000, meta(DIRECT, "Lin"))
    b.skipped["no_message_id"] += 1
    f_info = {"message_id": "om_fx_f", "sender_id": DIRECT, "sender": "Lin", "is_group_chat": False}
    old.user(legacy_prefix(f_info, {"label": "Lin", "id": DIRECT}) + feishu_body("om_fx_f", "Lin", "压缩归档里的消息"),
             BASE_MS - 172_800_000, meta(DIRECT, "Lin"),
             {"message_id": "om_fx_f", "chat_id": DIRECT, "chat_type": "p2p", "sender_id": DIRECT,
              "text": "压缩归档里的消息"})
    b.write(f"agents/main/sessions/{S_DIRECT}.jsonl", live.jsonl())
    b.write(f"agents/main/sessions/{S_DIRECT_OLD}.jsonl.reset.2026-11-29T00-00-00.000Z.zst",
            zstandard.ZstdCompressor().compress(old.jsonl().encode("utf-8")))


def _main_telegram(b):
    tg = Lines(b, S_TELEGRAM)
    tg.user(marked_prefix({"chat_id": "telegram:12345", "message_id": "881"}) + "hello from telegram",
            BASE_MS + 5000, {"senderId": "12345", "senderName": "Ann", "senderIsOwner": True})
    b.skipped["other_channel"] += 1
    tg.assistant("hi", BASE_MS + 6000)
    b.write(f"agents/main/sessions/{S_TELEGRAM}.jsonl", tg.jsonl())


def _main_store(b):
    store = {
        f"agent:main:feishu:group:{GROUP}": {"sessionId": S_GROUP, "updatedAt": BASE_MS + 990_000,
                                             "chatType": "group", "displayName": GROUP_NAME},
        f"agent:main:feishu:direct:{DIRECT}": {"sessionId": S_DIRECT, "updatedAt": BASE_MS, "chatType": "direct",
                                               "displayName": "Lin"},
        "agent:main:telegram:direct:12345": {"sessionId": S_TELEGRAM, "updatedAt": BASE_MS, "chatType": "direct"},
    }
    b.write("agents/main/sessions/sessions.json", json.dumps(store, ensure_ascii=False, indent=1))


# -- agents/ops: the SQLite era ------------------------------------------------------------------------

W_OLD, W_GROUP, W_MAIN = "a0000000-0000-4000-8000-000000000001", "a0000000-0000-4000-8000-000000000002", \
    "a0000000-0000-4000-8000-000000000003"


def schema_sql():
    """The real DDL; octet_length() (SQLite 3.43) becomes length() on an older library, which for
    the ASCII JSON it checks is the same number."""
    sql = SCHEMA.read_text(encoding="utf-8")
    if sqlite3.sqlite_version_info < (3, 43):
        sql = sql.replace("octet_length(", "length(")
    return sql


def navigation(size):
    return json.dumps({"version": 1, "report": {"kind": "canonical"}, "navigation": {}, "reset": {}, "model": {},
                       "modelBytes": size, "modelWithoutCheckpointBytes": size, "withoutCustomDataBytes": size})


def insert_event(conn, session_id, seq, event, compress):
    """One transcript_events row the way OpenClaw stores it: JSON text, or (event_json NULL) a zstd
    frame of it with its size and the navigation summary the CHECK requires."""
    text = json.dumps(event, ensure_ascii=False)
    created = event.get("message", {}).get("timestamp") or BASE_MS
    if compress:
        data = text.encode("utf-8")
        conn.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_zstd,"
                     " event_utf8_bytes, navigation_json) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                     (session_id, seq, created, zstandard.ZstdCompressor().compress(data), len(data),
                      navigation(len(data))))
    else:
        conn.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?, ?, ?, ?)",
                     (session_id, seq, text, created))


def _ops_sessions(conn):
    now = BASE_MS
    group_key, main_key = f"agent:ops:feishu:group:{OPS_GROUP}", "agent:ops:main"
    conn.executemany("INSERT INTO conversations (conversation_id, channel, account_id, kind, peer_id,"
                     " delivery_target, native_channel_id, native_direct_user_id, label, created_at, updated_at)"
                     " VALUES (?, 'feishu', 'default', ?, ?, ?, ?, ?, ?, ?, ?)", [
                         ("conv-g", "group", OPS_GROUP, f"chat:{OPS_GROUP}", OPS_GROUP, None, "运维群", now, now),
                         ("conv-d", "direct", OPS_DIRECT, f"user:{OPS_DIRECT}", None, OPS_DIRECT, "Kai", now, now)])
    conn.executemany("INSERT INTO session_nodes (session_key, current_session_id, entry_json, updated_at)"
                     " VALUES (?, ?, '{}', ?)", [(group_key, W_GROUP, now), (main_key, W_MAIN, now)])
    conn.executemany("INSERT INTO session_windows (session_id, session_key, previous_session_id, reason,"
                     " created_at, updated_at, chat_type, channel, account_id, primary_conversation_id, display_name)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, 'feishu', 'default', ?, ?)", [
                         (W_OLD, group_key, None, "initial", now, now, "group", "conv-g", "运维群"),
                         (W_GROUP, group_key, W_OLD, "reset", now, now, "group", "conv-g", "运维群"),
                         (W_MAIN, main_key, None, "initial", now, now, "direct", "conv-d", "Kai")])


def _ops_events(b):
    t = BASE_MS + 7_200_000
    old, group, main = Lines(b, W_OLD), Lines(b, W_GROUP), Lines(b, W_MAIN)
    info = {"chat_id": f"chat:{OPS_GROUP}", "is_group_chat": True}
    old.user(marked_prefix({**info, "message_id": "om_fx_l"}) + feishu_body("om_fx_l", "Tom", "重置之前的消息"),
             t - 3_600_000, meta(TOM, "Tom"), {"message_id": "om_fx_l", "chat_id": OPS_GROUP, "chat_type": "group",
                                               "sender_id": TOM, "text": "重置之前的消息"})
    group.user(marked_prefix({**info, "message_id": "om_fx_g"}) + feishu_body("om_fx_g", "Tom", "已经在库里的消息"), t,
               meta(TOM, "Tom"))
    group.user(marked_prefix({**info, "message_id": "om_fx_h"}) + feishu_body("om_fx_h", "李雷", "压缩存储的消息 ✅"),
               t + 1000, meta(LILEI, "李雷"), {"message_id": "om_fx_h", "chat_id": OPS_GROUP, "chat_type": "group",
                                             "sender_id": LILEI, "text": "压缩存储的消息 ✅"})
    group.assistant("好", t + 2000)
    group.tool(t + 3000)
    group.compaction(t + 4000)
    # A collect-queue drain: two messages that arrived while the agent was busy, in one line.
    queued = ("[Queued messages while agent was busy]\n\n---\nQueued #1 (from Tom)\n"
              + feishu_body("om_fx_j", "Tom", "第一条排队消息") + f"\n\n---\nQueued #2 (from {LILEI})\n"
              + feishu_body("om_fx_k", LILEI, "第二条排队消息"))
    group.user(queued, t + 5000, {"senderIsOwner": False, "senderId": TOM, "senderName": "Tom"})
    for mid, sender, text in (("om_fx_j", TOM, "第一条排队消息"), ("om_fx_k", LILEI, "第二条排队消息")):
        b.expect({"message_id": mid, "chat_id": OPS_GROUP, "chat_type": "group", "sender_id": sender, "text": text},
                 created_at=t + 5000)
    main.user(marked_prefix({"chat_id": f"user:{OPS_DIRECT}", "message_id": "om_fx_i",
                             "sender": {"id": OPS_DIRECT, "name": "Kai"}}) + feishu_body("om_fx_i", "Kai", "私聊消息"),
              t + 6000, meta(OPS_DIRECT, "Kai"), {"message_id": "om_fx_i", "chat_id": OPS_DIRECT, "chat_type": "p2p",
                                                   "sender_id": OPS_DIRECT, "text": "私聊消息"})
    main.assistant("收到", t + 7000)
    return old, group, main


def _ops(b):
    db = b.root / "agents/ops/agent/openclaw-agent.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    old, group, main = _ops_events(b)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(schema_sql())
    conn.execute("BEGIN")
    _ops_sessions(conn)
    for lines, sid in ((old, W_OLD), (group, W_GROUP), (main, W_MAIN)):
        for seq, event in enumerate(lines.items):
            insert_event(conn, sid, seq, event, compress=seq % 2 == 0)
    conn.execute("COMMIT")
    conn.close()
    # The JSONL copy of the old window that the migration archived: one message also in SQLite, one
    # that only this copy still holds.
    archive = Lines(b, W_OLD)
    archive.add(json.loads(json.dumps(old.items[1])))
    b.copies += 1
    archive.user(marked_prefix({"chat_id": f"chat:{OPS_GROUP}", "message_id": "om_fx_m"})
                 + feishu_body("om_fx_m", "Tom", "只在迁移归档里"), BASE_MS + 3_000_000, meta(TOM, "Tom"),
                 {"message_id": "om_fx_m", "chat_id": OPS_GROUP, "chat_type": "group", "sender_id": TOM,
                  "text": "只在迁移归档里"})
    b.write(f"agents/ops/session-sqlite-import-archive/agent_ops_feishu_group_{OPS_GROUP}.{W_OLD}.jsonl"
            ".imported-1795990000000", archive.jsonl())
    b.write("agents/ops/session-sqlite-import-archive/agent_ops.sessions.json.imported-1795990000000",
            json.dumps({f"agent:ops:feishu:group:{OPS_GROUP}": {"sessionId": W_OLD, "chatType": "group"}}))
    return db


def build(root):
    """The whole directory under `root`; returns the Fixture describing it."""
    b = _Builder(root)
    _main_group(b)
    _main_direct(b)
    _main_telegram(b)
    _main_store(b)
    db = _ops(b)
    pre = {"message_id": "om_fx_g", "chat_id": OPS_GROUP, "sender_id": TOM, "msg_type": "text",
           "text": "已经在库里的消息 (arrived by webhook)", "create_time": str(BASE_MS + 7_200_000)}
    return Fixture(b.root, b.expected, b.skipped, b.copies, pre, db, W_GROUP)


# -- hostile files (issue 24's trial), beside a fixture's transcripts ------------------------------------

GiB = 1024 ** 3


@dataclasses.dataclass
class Hostile:
    expected: set  # ids of the good messages beside the bad parts, none of them in the store that is locked
    locked: set  # ids only the locked store holds
    lines: dict  # where ("<file>:<line>") -> the reason a bad line is skipped
    sources: dict  # where -> why a file or store could not be read (at all, or to its end)
    locked_db: pathlib.Path  # a store in rollback-journal mode: lock it with BEGIN EXCLUSIVE


def good_line(message_id, ms):
    """A Feishu group message's user line, as the gateway writes it."""
    text = (marked_prefix({"chat_id": f"chat:{GROUP}", "message_id": message_id, "is_group_chat": True})
            + feishu_body(message_id, "Tom", f"hostile neighbour {message_id}"))
    line = {"type": "message", "id": message_id, "parentId": None, "timestamp": iso(ms),
            "message": {"role": "user", "timestamp": ms, "__openclaw": meta(TOM, "Tom"),
                        "content": [{"type": "text", "text": text}]}}
    return json.dumps(line, ensure_ascii=False) + "\n"


def _header(session_id):
    return json.dumps({"type": "session", "version": 3, "id": session_id, "timestamp": iso(BASE_MS)}) + "\n"


def hostile(fx):
    """Issue 24's hostile files under fx.root, each with good messages before (and where it has an end,
    after) its bad part: a 100,000-deep JSON line and a 900-deep one, a 5 MiB line, a 2 GiB sparse file
    without a newline, a 99 KB zstd file inflating to 3 GiB, a zstd file whose second frame is garbage,
    a symlink loop as a transcript and as an agent, a 100,000-deep sessions.json, a corrupt SQLite store
    and one to be locked."""
    sessions, good, lines, sources = fx.root / "agents" / "main" / "sessions", set(), {}, {}
    ms = BASE_MS + 20_000_000

    def ok(mid):
        nonlocal ms
        ms += 1000
        good.add(mid)
        return good_line(mid, ms)

    def where(path, line=None):
        return str(path.relative_to(fx.root)) + ("" if line is None else f":{line}")

    deep = sessions / "d0000000-0000-4000-8000-00000000000d.jsonl"
    nested = {"type": "message", "message": {"role": "user", "__openclaw": meta(TOM, "Tom"),
                                             "content": [{"type": "text", "text": "x", "deep": _nest(900)}]}}
    deep_block = json.loads(good_line("om_h_deep_block", ms + 500))  # its Conversation info 100,000 deep
    good.add("om_h_deep_block")  # the block is no JSON: the message stands without it, as for any such block
    deep_block["message"]["content"][0]["text"] = (f"Conversation info: {MARKER}\n```json\n" + "[" * 100_000
                                                   + "]" * 100_000 + "\n```\n\n"
                                                   + feishu_body("om_h_deep_block", "Tom", "深"))
    deep.write_text(_header("d0") + ok("om_h_deep_1") + "[" * 100_000 + "]" * 100_000 + "\n"
                    + json.dumps(nested) + "\n" + json.dumps(deep_block) + "\n" + ok("om_h_deep_2"))
    lines[where(deep, 3)] = "not JSON: nested too deeply"
    long = sessions / "d0000000-0000-4000-8000-00000000001a.jsonl"
    pad = json.dumps({"type": "custom", "pad": "x" * (5 * 1024 * 1024)})
    long.write_text(_header("d1") + ok("om_h_long_1") + pad + "\n" + ok("om_h_long_2"))
    lines[where(long, 3)] = "longer than 4 MiB: skipped"
    sparse = sessions / "d0000000-0000-4000-8000-00000000002b.jsonl"
    with open(sparse, "wb") as f:
        f.write((_header("d2") + ok("om_h_sparse")).encode())
        f.truncate(2 * GiB)  # a hole: two gigabytes of NUL, no newline
    lines[where(sparse, 3)] = "longer than 4 MiB: skipped"
    bomb = sessions / "d0000000-0000-4000-8000-00000000003c.jsonl.reset.2026-11-29T00-00-00.000Z.zst"
    with open(bomb, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as z:
        z.write((_header("d3") + ok("om_h_bomb")).encode())
        for _ in range(48):
            z.write(bytes(64 * 1024 * 1024))  # 3 GiB of NUL in a 99 KB file
    sources[where(bomb)] = "reading stopped: it decompresses to more than 1 GiB"
    broken_zst = sessions / "d0000000-0000-4000-8000-00000000004d.jsonl.deleted.2026-11-29T00-00-00.000Z.zst"
    # A good frame, then a second one that is garbage after its magic number.
    broken_zst.write_bytes(zstandard.ZstdCompressor().compress((_header("d4") + ok("om_h_zst")).encode())
                           + b"\x28\xb5\x2f\xfd" + b"garbage!" * 4)
    good.discard("om_h_zst")  # inflated in the same read as the corrupt frame: lost with it, the file reported
    sources[where(broken_zst)] = "reading stopped: "
    loop = sessions / "d0000000-0000-4000-8000-00000000005e.jsonl"
    loop.symlink_to(loop.name)
    sources[where(loop)] = "cannot read: Too many levels of symbolic links"
    agent_loop = fx.root / "agents" / "looped"
    agent_loop.symlink_to("looped")
    sources[where(agent_loop)] = "cannot read: Too many levels of symbolic links"
    deep_store = fx.root / "agents" / "ops" / IMPORT_ARCHIVE / "agent_ops_deep.sessions.json.imported-1795990000001"
    deep_store.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    sources[where(deep_store)] = "not JSON: nested too deeply"
    broken_db = fx.root / "agents" / "broken" / "agent" / "openclaw-agent.sqlite"
    broken_db.parent.mkdir(parents=True)
    broken_db.write_bytes(b"not a database " * 100)
    sources[where(broken_db)] = "cannot read: file is not a database"
    locked_db = fx.root / "agents" / "locked" / "agent" / "openclaw-agent.sqlite"
    locked_db.parent.mkdir(parents=True)
    conn = sqlite3.connect(locked_db, isolation_level=None)
    conn.executescript(schema_sql())
    insert_event(conn, "e0000000-0000-4000-8000-000000000001", 0, json.loads(good_line("om_h_locked", ms + 1000)),
                 compress=False)
    conn.close()
    sources[where(locked_db)] = "cannot read: database is locked"
    return Hostile(good, {"om_h_locked"}, lines, sources, locked_db)


IMPORT_ARCHIVE = "session-sqlite-import-archive"


def _nest(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value
