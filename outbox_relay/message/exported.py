"""The exported line: one archived message with its history, as `outbox-relay export --format jsonl`
writes it and `outbox-relay put` reads it back. Both directions live here, so the format has one home.
Pure: no I/O.

    {"archived": {message_id, chat_id, …, created_at, source, raw, edited_at, recalled_at, …},
     "history": [{event_id, kind, happened_at, …}, …]}

Read back, a line is the message as it was first archived (an edit's words replaced by the words the
edit replaced, from original_text/original_content) followed by its events: relayed into another
archive, the events make the row what it was (the same edit applied, the same recall), so the new
archive's rows equal the old one's, but for what the relay itself stamps (received_at, relayed_at,
outbox_host, outbox_id).
"""

from ..errors import InvalidMessage
from ..timeconv import ms_to_iso
from .events import EDITED, KINDS, Event
from .fields import check_token, field, id_field, kind_field, optional_time
from .model import Message

KEY = "archived"  # what makes a payload an exported line
HISTORY = "history"
MAX_SOURCE_LENGTH = 32  # the source column's width
# A message's columns in a line, in this order (the CSV's too): what the chat shows now first.
MESSAGE_FIELDS = ("message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id", "sender_id",
                  "sender_type", "msg_type", "created_at", "text", "content", "mentions", "source",
                  "edited_at", "recalled_at", "recall_type", "original_text", "original_content", "raw",
                  "received_at", "relayed_at")
EVENT_FIELDS = ("event_id", "kind", "happened_at", "chat_id", "operator_id", "operator_type", "msg_type",
                "text", "content", "mentions", "emoji", "recall_type", "source", "raw")
TIME_FIELDS = frozenset(("created_at", "edited_at", "recalled_at", "received_at", "relayed_at", "happened_at"))


def line(message, history):
    """A message's row and its events' rows (dicts of column -> value, times as epoch ms) -> the line."""
    return {KEY: _times(message, MESSAGE_FIELDS), HISTORY: [_times(e, EVENT_FIELDS) for e in history]}


def _times(row, names):
    return {n: ms_to_iso(row[n]) if n in TIME_FIELDS and row.get(n) is not None else row.get(n) for n in names}


def matches(payload):
    return KEY in payload


def parse(payload):
    """An exported line -> its Message, as first archived."""
    row = field(payload, KEY, dict, required=True, where="")
    history = _history(payload)
    edited = row.get("edited_at") is not None and any(e.get("kind") == EDITED for e in history)
    where = KEY + "."
    return Message(
        source=_token(row, "source", where, MAX_SOURCE_LENGTH, required=True),
        message_id=id_field(row, "message_id", where, required=True),
        chat_id=id_field(row, "chat_id", where),
        chat_type=kind_field(row, "chat_type", where),
        thread_id=id_field(row, "thread_id", where),
        root_id=id_field(row, "root_id", where),
        parent_id=id_field(row, "parent_id", where),
        sender_id=id_field(row, "sender_id", where),
        sender_type=kind_field(row, "sender_type", where),
        msg_type=kind_field(row, "msg_type", where, default="text"),
        content=row.get("original_content") if edited else row.get("content"),
        text=_text(row, "original_text" if edited else "text"),
        mentions=_list(row, "mentions", where),
        created_at=optional_time(row.get("created_at"), where + "created_at"),
        raw=row.get("raw"),
    )


def events(payload):
    """The events of an exported line's history."""
    message_id = id_field(payload[KEY], "message_id", KEY + ".", required=True)
    out = []
    for n, e in enumerate(_history(payload)):
        where = f"{HISTORY}[{n}]."
        kind = kind_field(e, "kind", where)
        if kind not in KINDS:
            raise InvalidMessage(f"{where}kind must be one of {', '.join(KINDS)}, not {kind!r}")
        out.append(Event(
            event_id=id_field(e, "event_id", where, required=True), message_id=message_id, kind=kind,
            source=_token(e, "source", where, MAX_SOURCE_LENGTH, required=True),
            happened_at=optional_time(e.get("happened_at"), where + "happened_at"),
            chat_id=id_field(e, "chat_id", where), operator_id=id_field(e, "operator_id", where),
            operator_type=kind_field(e, "operator_type", where), msg_type=kind_field(e, "msg_type", where),
            content=e.get("content"), text=_text(e, "text", None), mentions=_list(e, "mentions", where),
            emoji=kind_field(e, "emoji", where), recall_type=kind_field(e, "recall_type", where), raw=e.get("raw")))
    return out


def _history(payload):
    history = payload.get(HISTORY) or []
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise InvalidMessage(f"{HISTORY} must be a list of objects")
    return history


def _token(obj, key, where, limit, required=False):
    value = field(obj, key, str, required=required, where=where)
    return check_token(value, where + key, limit)


def _list(obj, key, where):
    """A JSON list column kept as it was: a list, or None (NULL)."""
    value = obj.get(key)
    if value is not None and not isinstance(value, list):
        raise InvalidMessage(f"{where}{key} must be a list")
    return value


def _text(obj, key, default=""):
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidMessage(f"{KEY}.{key} must be a string")
    return value
