"""`history`: one message's life in the archive: as first archived, as the chat shows it now, and
every event about it in Feishu's order (with those still waiting in the outbox). A message's current
reactions are not a column of its row: they follow from its reaction events (the latest action of
each person on each emoji counts), so they are worked out here, the one place that reads them."""

import json

from ..errors import TargetError
from ..message import restore
from ..message.events import REACTION_ADDED, REACTION_REMOVED
from ..timeconv import ms_to_iso, to_ms

MESSAGE_COLUMNS = ("message_id", "chat_id", "sender_id", "msg_type", "text", "content", "created_at", "source",
                   "edited_at", "recalled_at", "recall_type", "original_text", "original_content")
EVENT_COLUMNS = ("event_id", "kind", "happened_at", "operator_id", "operator_type", "msg_type", "text", "content",
                 "emoji", "recall_type", "source")


def message_history(target, outbox, message_id):
    """{message, first, now, events, reactions, waiting, target_error}: what the archive knows of one
    message; `message` is None when the target has no row of it (yet)."""
    report = {"message_id": message_id, "message": None, "first": None, "now": None, "events": [],
              "reactions": {}, "waiting": _waiting(outbox, message_id), "target_error": None}
    if target is not None:
        try:
            row, events = _read(target, message_id)
        except TargetError as e:
            report["target_error"] = str(e)
        else:
            report["events"] = events
            if row is not None:
                report.update(message=row, **_versions(row))
    report["reactions"] = current_reactions(report["events"] + report["waiting"])
    return report


def _read(target, message_id):
    p = target.param
    with target.transaction() as tx:
        rows = tx.execute(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM {target.quoted} WHERE message_id = {p}",
                          (message_id,))
        events = tx.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM {target.quote(target.events_table)}"
                            f" WHERE message_id = {p} ORDER BY happened_at, event_id", (message_id,))
    row = _as_dict(MESSAGE_COLUMNS, rows[0]) if rows else None
    return row, [_as_dict(EVENT_COLUMNS, e) for e in events]


def _as_dict(columns, values):
    out = {}
    for name, value in zip(columns, values):
        if name.endswith("_at") and value is not None:
            value = ms_to_iso(to_ms(value))
        elif name.endswith("content") and isinstance(value, str):
            value = json.loads(value)  # SQLite and MariaDB hand JSON back as text
        out[name] = value
    return out


def _versions(row):
    """The message as first archived and as the chat shows it now."""
    edited = row["edited_at"] is not None
    first = {"text": row["original_text"] if edited else row["text"],
             "content": row["original_content"] if edited else row["content"], "at": row["created_at"]}
    now = {"text": row["text"], "content": row["content"], "edited_at": row["edited_at"],
           "recalled_at": row["recalled_at"], "recall_type": row["recall_type"]}
    return {"first": first, "now": now}


def _waiting(outbox, message_id):
    """Events about the message still in the outbox (not yet in the target), oldest first."""
    if outbox is None:
        return []
    return [{"event_id": e.event_id, "kind": e.kind, "happened_at": ms_to_iso(e.happened_at) if e.happened_at
             else None, "operator_id": e.operator_id, "text": e.text, "emoji": e.emoji, "where": f"outbox ({state})"}
            for state, e in ((s, restore("event", payload)) for s, payload in outbox.events_about(message_id))]


def current_reactions(events):
    """{emoji: [who]}: each person's latest action on each emoji (Feishu's time), kept if it added."""
    latest = {}
    for e in sorted(events, key=lambda e: (e["happened_at"] or "", e["event_id"])):
        if e["kind"] in (REACTION_ADDED, REACTION_REMOVED):
            latest[e["emoji"], e["operator_id"]] = e["kind"]
    out = {}
    for (emoji, who), kind in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if kind == REACTION_ADDED:
            out.setdefault(emoji, []).append(who)
    return out
