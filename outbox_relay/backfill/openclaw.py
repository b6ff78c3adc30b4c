"""`backfill openclaw`: the inbound Feishu messages in OpenClaw's transcripts that the archive lacks.

Reads every agent's transcripts (both storage eras: openclaw_sources.py), keeps the user lines that
are inbound Feishu messages, makes each a Message through the one normalizer (shape
"openclaw.transcript"), and commits the ones the target does not hold yet to the outbox, in chunks.
Everything else is skipped and counted by reason. A message read in several files (a reset archive
and the live file, the JSONL copy and the SQLite row after a migration) counts once: the first copy
read wins, and the SQLite store is read first.

Idempotent: the target's existing ids are skipped, the outbox dedupes the rest, and the relay's
`ON CONFLICT (message_id) DO NOTHING` makes a re-send harmless. Running it twice adds nothing.

A file or store that cannot be read at all, or not to its end, is an unreadable source: listed in
the report (`unreadable_sources`), and the rest is read and committed all the same.
"""

import logging

from ..errors import InvalidMessage
from ..message import normalize
from ..message.openclaw_text import line_text, queued_items, read_user_line
from ..progress import NO_PROGRESS
from .commit import Committer
from .openclaw_files import SourceUnreadable
from .openclaw_sources import discover

log = logging.getLogger(__name__)

CHUNK = 500
MAX_EXAMPLES = 20
# Every reason a line is not committed, in the order the summary lists them.
SKIP_REASONS = (
    "assistant",        # the agent's own replies
    "tool_output",      # tool results, bash output
    "compaction",       # compaction and branch summaries
    "generated",        # user-role lines OpenClaw made itself (no __openclaw sender, other provenance)
    "other_channel",    # user messages from Telegram, the web UI, …
    "no_message_id",    # a Feishu-looking line without [message_id: …] nor a Conversation-info id
    "other_entry",      # session headers, model changes, labels, custom entries
    "out_of_range",     # outside --since/--until
    "invalid",          # the normalizer refused it (too large, malformed fields)
    "unreadable",       # not JSON, undecodable, a read error
)
TOOL_ROLES = ("toolResult", "tool", "bashExecution")


def backfill_openclaw(root, outbox, target=None, *, since_ms=None, until_ms=None, dry_run=False,
                      progress=NO_PROGRESS, stop=None):
    """Read DIR's transcripts and commit what the archive lacks. Returns the report dict:
    found (distinct messages in range), new (committed; with dry_run: would be), already_stored
    (in the target or the outbox), skipped {reason: n}, copies (extra copies of found messages),
    target_checked, files, agents, examples (the first unreadable/invalid lines, where and why),
    unreadable_sources (every file or store that could not be read, or not to its end: where, error)."""
    agents = discover(root)
    run = _Run(Committer(outbox, target, dry_run=dry_run, stop=stop), since_ms, until_ms, dry_run)
    run.report["agents"] = [a.name for a in agents]
    transcripts = [t for a in agents for t in a.transcripts]
    run.report["files"] = len(transcripts)
    task = progress.task("openclaw transcripts", total=len(transcripts))
    for agent in agents:
        for where, error in agent.unreadable:
            run.unreadable(where, error)
        for transcript in agent.transcripts:
            run.read(agent, transcript)
            task.advance(1)
    run.flush()
    return run.report


class _Run:
    """One backfill: the counts, the ids already seen, the chunk waiting to be committed."""

    def __init__(self, committer, since_ms, until_ms, dry_run):
        self.committer = committer
        self.since_ms, self.until_ms, self.dry_run = since_ms, until_ms, dry_run
        self.seen, self.chunk = set(), []
        self.report = {"found": 0, "new": 0, "already_stored": 0, "skipped": dict.fromkeys(SKIP_REASONS, 0),
                       "copies": 0, "dry_run": dry_run, "target_checked": committer.target_checked,
                       "files": 0, "agents": [], "examples": [], "unreadable_sources": []}

    def read(self, agent, transcript):
        for position, item in transcript.read():
            where = f"{transcript.where}:{position}"
            if isinstance(item, SourceUnreadable):
                self.unreadable(transcript.where, str(item))
            elif isinstance(item, Exception):
                self.skip("unreadable", where, str(item))
            elif isinstance(item, dict) and item.get("type") == "session":
                _adopt_header(transcript, item)
                self.skip("other_entry")
            else:
                for payload in self.payloads(agent, transcript, item, where):
                    self.take(payload, where)

    def payloads(self, agent, transcript, line, where):
        """The normalizer's inputs for one line (several for a collect-queue line), counting the
        lines that are not inbound Feishu messages."""
        reason = classify(line)
        if reason:
            self.skip(reason, where if reason == "unreadable" else None, "not a JSON object")
            return []
        message = line["message"]
        items = queued_items(line_text(message))
        out = []
        for index in range(len(items)) if items is not None else (None,):
            fields = read_user_line(message, index)
            session = _session_for(agent, transcript.session, fields)
            if session["channel"] not in (None, "feishu") or (session["channel"] is None and not fields["feishu_body"]):
                self.skip("other_channel")
            elif fields["message_id"] is None:
                self.skip("no_message_id")
            else:
                payload = {"openclaw_transcript": line, "session": session}
                conversation = agent.conversations.get(fields["conversation_ref"])
                if conversation:
                    payload["conversation"] = conversation
                if index is not None:
                    payload["queued_item"] = index
                out.append(payload)
        return out

    def take(self, payload, where):
        try:
            message = normalize(payload)
        except InvalidMessage as e:
            self.skip("invalid", where, str(e))
            return
        if message.message_id in self.seen:
            self.report["copies"] += 1
            return
        self.seen.add(message.message_id)
        if not self.in_range(message.created_at):
            self.skip("out_of_range")
            return
        self.report["found"] += 1
        self.chunk.append(message)
        if len(self.chunk) >= CHUNK:
            self.flush()

    def in_range(self, created_at):
        if created_at is None:
            return self.since_ms is None and self.until_ms is None
        return ((self.since_ms is None or created_at >= self.since_ms)
                and (self.until_ms is None or created_at < self.until_ms))

    def skip(self, reason, where=None, error=None):
        self.report["skipped"][reason] += 1
        if where is not None and len(self.report["examples"]) < MAX_EXAMPLES:
            self.report["examples"].append({"where": where, "reason": reason, "error": error})

    def unreadable(self, where, error):
        log.warning("%s: %s", where, error)
        self.report["unreadable_sources"].append({"where": where, "error": error})

    def flush(self):
        chunk, self.chunk = self.chunk, []
        new, already = self.committer.commit(chunk)
        self.report["new"] += new
        self.report["already_stored"] += already
        self.report["target_checked"] = self.committer.target_checked


def classify(line):
    """The skip reason of a transcript line, or None for a user message that came from outside."""
    if not isinstance(line, dict):
        return "unreadable"
    kind = line.get("type")
    if kind in ("compaction", "branch_summary"):
        return "compaction"
    if kind == "custom_message":
        return "generated"
    message = line.get("message")
    if kind != "message" or not isinstance(message, dict):
        return "other_entry"
    role = message.get("role")
    if role == "assistant":
        return "assistant"
    if role in TOOL_ROLES:
        return "tool_output"
    if role != "user":
        return "generated"
    provenance = message.get("provenance")
    if not isinstance(message.get("__openclaw"), dict) or (
            isinstance(provenance, dict) and provenance.get("kind") not in (None, "external_user")):
        return "generated"
    return None


def _adopt_header(transcript, header):
    """An archive copy's header names its session id: take that session's chat if the file name
    did not give it."""
    sid = header.get("id")
    if transcript.session.get("key") is None and isinstance(sid, str) and sid in transcript.sessions:
        transcript.session = transcript.sessions[sid]


def _session_for(agent, session, fields):
    """The session dict for one message: the transcript's, or (a reset archive whose session key is
    gone) the group its Conversation-info block names, looked up among the agent's known groups."""
    if session.get("chat_id"):
        return session
    subject = fields["chat"].get("group_subject")
    chat_id = agent.group_names.get(subject) if isinstance(subject, str) else None
    if not chat_id:
        return session
    return dict(session, chat_type="group", chat_id=chat_id)
