"""Every accepted input shape -> one `Message`, or `InvalidMessage`. Pure: no I/O.

Shapes (samples in tests/samples/): Feishu event v2 (`im.message.receive_v1`),
Feishu event v1 (`event_callback`), OpenClaw's `message:received` hook event,
an item of the Open API's message list (what `backfill feishu` reads back),
and the flat dict the old in-process call and the legacy JSON queue used.
"""

import dataclasses
import difflib

from ..errors import InvalidMessage, NotAMessage
from . import events, exported, openclaw_text
from .fields import (
    MAX_ID_LENGTH,
    MAX_KIND_LENGTH,
    check_shape,
    check_token,
    field,
    id_field,
    json_string,
    json_type,
    kind_field,
    optional_time,
    parse_timestamp,
)
from .model import Message, parse_payload
from .text import extract_text, strip_at_tags

MESSAGE_EVENT_V2 = "im.message.receive_v1"
RECALLED_TEXT = "[recalled]"  # the text of a message recalled before it was archived


def normalize(payload):
    """Any accepted shape (a dict, or JSON text) -> Message, or Event (an edit, a recall, a reaction).
    Raises InvalidMessage / NotAMessage."""
    if isinstance(payload, (Message, events.Event)):
        return payload
    if isinstance(payload, (str, bytes, bytearray, memoryview)):
        payload = parse_payload(payload)
    if not isinstance(payload, dict):
        raise InvalidMessage(f"payload must be a JSON object, not {json_type(payload)}")
    check_shape(payload)
    if "encrypt" in payload and len(payload) == 1:
        raise InvalidMessage("encrypted Feishu event: it must be decrypted first (configure the encrypt key)")
    if payload.get("type") == "url_verification":
        raise NotAMessage("url_verification", "Feishu url_verification handshake, not a message")
    shape = detect(payload)
    if shape is not None:
        return shape.parse(payload)
    if "type" in payload and isinstance(payload["type"], str):
        raise InvalidMessage(f"unsupported event type {payload['type']!r}")
    raise InvalidMessage("unrecognised payload: no message_id and not a Feishu or OpenClaw event")


# -- shapes -------------------------------------------------------------------


def _from_feishu_v2(p):
    header = field(p, "header", dict, required=True, where="")
    event_type = field(header, "event_type", str, required=True, where="header.")
    if event_type in events.EVENT_TYPES:
        return events.from_feishu_v2(p, header, event_type)
    if event_type != MESSAGE_EVENT_V2:
        raise NotAMessage(event_type)
    event = field(p, "event", dict, required=True, where="")
    msg = field(event, "message", dict, required=True, where="event.")
    sender = field(event, "sender", dict, where="event.") or {}
    sender_ids = field(sender, "sender_id", dict, where="event.sender.") or {}
    msg_type = kind_field(msg, "message_type", "event.message.", default="text")
    content = json_string(msg, "content", "event.message.")
    mentions = field(msg, "mentions", list, where="event.message.") or []
    created = field(msg, "create_time", (str, int), where="event.message.")
    if created is None:
        created = field(header, "create_time", (str, int), where="header.")
    return Message(
        source="feishu.v2",
        **_message_ids(msg, "event.message."),
        sender_id=(id_field(sender_ids, "open_id", "event.sender.sender_id.")
                   or id_field(sender_ids, "user_id", "event.sender.sender_id.")
                   or id_field(sender_ids, "union_id", "event.sender.sender_id.")),
        sender_type=kind_field(sender, "sender_type", "event.sender."),
        msg_type=msg_type,
        content=content,
        text=extract_text(msg_type, content, mentions),
        mentions=mentions,
        created_at=parse_timestamp(created, "event.message.create_time"),
        raw=p,
    )



def _from_feishu_v1(p):
    event = field(p, "event", dict, required=True, where="")
    event_type = field(event, "type", str, required=True, where="event.")
    if event_type != "message":
        raise NotAMessage(event_type)
    msg_type = kind_field(event, "msg_type", "event.", default="text")
    raw_text = field(event, "text", str, where="event.") or ""
    chat_type = kind_field(event, "chat_type", "event.")
    content = {"text": raw_text} if msg_type == "text" else {
        k: v for k, v in event.items() if k in ("image_key", "file_key", "title", "text")}
    text = strip_at_tags(raw_text) if msg_type == "text" else extract_text(msg_type, content, [])
    ts = field(p, "ts", (str, int, float), where="")
    return Message(
        source="feishu.v1",
        message_id=id_field(event, "open_message_id", "event.", required=True, name="message_id"),
        chat_id=id_field(event, "open_chat_id", "event."),
        chat_type="p2p" if chat_type == "private" else chat_type,
        root_id=id_field(event, "root_id", "event."),
        parent_id=id_field(event, "parent_id", "event."),
        sender_id=id_field(event, "open_id", "event.") or id_field(event, "user_open_id", "event."),
        sender_type="user",
        msg_type=msg_type,
        content=content,
        text=text,
        mentions=[],
        created_at=optional_time(ts, "ts"),
        raw=p,
    )


def _from_openclaw(p):
    if p.get("action") != "received":
        raise NotAMessage(f"message:{p.get('action')}")
    ctx = field(p, "context", dict, required=True, where="")
    meta = field(ctx, "metadata", dict, where="context.") or {}
    body = field(ctx, "content", str, where="context.") or ""
    message_id = id_field(ctx, "messageId", "context.", required=True, name="message_id")
    chat_id, chat_type = _openclaw_chat(field(ctx, "conversationId", str, where="context.") or "",
                                        field(ctx, "from", str, where="context.") or "")
    # A message without words has OpenClaw's envelope as content: not the sender's words.
    words = "" if openclaw_text.is_envelope(body, message_id) else body
    # @openclaw/feishu sets context.timestamp from Feishu's create_time (messageCreateTimeMs, now
    # only when the event has none); the event's own top-level timestamp is when the hook fired.
    created = ctx.get("timestamp")
    if created is None:
        created = p.get("timestamp")
    return Message(
        source="openclaw",
        message_id=message_id,
        chat_id=check_token(chat_id, "context.conversationId", MAX_ID_LENGTH),
        chat_type=check_token(chat_type, "context.from", MAX_KIND_LENGTH),
        thread_id=id_field(meta, "threadId", "context.metadata."),
        sender_id=id_field(meta, "senderId", "context.metadata.") or _openclaw_sender(ctx),
        sender_type="user",
        **openclaw_text.as_feishu(words, openclaw_text.media_facts(ctx.get("media"))),
        created_at=optional_time(created, "context.timestamp"),
        raw=p,
    )


# OpenClaw's Feishu channel: conversationId "chat:oc_…" in a group, "user:ou_…" in a direct chat.
# A direct chat's event carries no p2p oc_ chat id, so chat_id holds the other party's open id
# (ou_…): one id per direct chat with this bot, and never mistaken for a chat id (oc_…). The
# webhook stores the oc_ id for the same chat; message_id keeps it one row whichever came first.
_OPENCLAW_KINDS = {"chat": "group", "user": "p2p"}


def _openclaw_chat(conversation, origin):
    """(chat_id, chat_type) from conversationId, or from the older guessed shape
    (from "feishu:group:oc_x", conversationId "feishu:oc_x": the provider prefix goes)."""
    kind, sep, rest = conversation.partition(":")
    if sep and kind in _OPENCLAW_KINDS and rest:
        return rest, _OPENCLAW_KINDS[kind]
    parts = origin.split(":")
    chat_type = parts[1] if len(parts) == 3 else None
    return ((rest or None) if sep else (conversation or None)), chat_type


def _openclaw_sender(ctx):
    """from "feishu:ou_x" -> ou_x, when metadata.senderId is missing (not "feishu:group:oc_x")."""
    parts = (field(ctx, "from", str, where="context.") or "").split(":")
    return check_token(parts[1], "context.from", MAX_ID_LENGTH) if len(parts) == 2 and parts[1] else None


def _from_open_api(p):
    """An item of the Open API's message list (`GET /open-apis/im/v1/messages`): what `backfill
    feishu` reads back. Same field rules as the v2 event, so a message archived from the event and
    the same message read back give the same row (chat_type aside: the item has none)."""
    body = field(p, "body", dict, where="") or {}
    sender = field(p, "sender", dict, where="") or {}
    msg_type = kind_field(p, "msg_type", "", default="text")
    mentions = _event_mentions(field(p, "mentions", list, where="") or [])
    deleted = p.get("deleted") is True
    # A recalled message's body is a notice, not its content, which Feishu no longer gives out:
    # the archive keeps the fact (who, when, where; `raw.deleted`) with empty content.
    content = {} if deleted else json_string(body, "content", "body.")
    created = field(p, "create_time", (str, int), where="")
    return Message(
        source="feishu.history",
        **_message_ids(p, ""),
        **_sender(sender, "id", "sender."),
        msg_type=msg_type,
        content=content,
        text=RECALLED_TEXT if deleted else extract_text(msg_type, content, mentions),
        mentions=mentions,
        created_at=optional_time(created, "create_time"),
        raw=p,
    )


def _event_mentions(mentions):
    """The API's `{key, id, id_type, name}` -> the event's `{key, id: {id_type: id}, name}`, so a
    query on `mentions[].id.open_id` finds a mention whichever way the message came."""
    out = []
    for m in mentions:
        if isinstance(m, dict) and isinstance(m.get("id"), str) and isinstance(m.get("id_type"), str):
            m = {k: v for k, v in m.items() if k != "id_type"} | {"id": {m["id_type"]: m["id"]}}
        out.append(m)
    return out


# Every field of the flat dict. Another key is a mistake (chatId, txt …) that would store a message
# without its chat or its words: refused, naming it. `seed_payload`: the seed's own dict (compat.py).
FLAT_FIELDS = ("message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id", "sender_id",
               "sender_type", "msg_type", "message_type", "content", "text", "mentions", "create_time",
               "created_at", "seed_payload")


def _from_flat(p):
    msg_type = kind_field(p, "msg_type", "", default=None) or kind_field(p, "message_type", "", default="text")
    if "content" in p and p["content"] is not None:
        if isinstance(p["content"], dict):
            content = p["content"]
        else:
            content = json_string(p, "content", "")
    else:
        text = field(p, "text", str, where="")
        content = {"text": text or ""}
    mentions = field(p, "mentions", list, where="") or []
    text = field(p, "text", str, where="")
    if text is None:
        text = extract_text(msg_type, content, mentions)
    created = p.get("create_time", p.get("created_at"))
    message = Message(
        source="api",
        **_message_ids(p, ""),
        **_sender(p, "sender_id", ""),
        msg_type=msg_type,
        content=content,
        text=text,
        mentions=mentions,
        created_at=optional_time(created, "create_time"),
        raw=p,
    )
    # After every field's own check (they say more): a misspelt key, then the chat.
    unknown = [k for k in p if k not in FLAT_FIELDS]
    if unknown:
        raise InvalidMessage("unknown field(s) in a flat message: " + ", ".join(map(_unknown_field, unknown[:5]))
                             + f" (its fields: {', '.join(FLAT_FIELDS[:-1])})")
    if message.chat_id is None:
        raise InvalidMessage("missing chat_id: a flat message names its chat")
    return message


def _unknown_field(name):
    near = difflib.get_close_matches(name.lower(), FLAT_FIELDS, n=1, cutoff=0.6)
    return f"{name[:40]!r}" + (f" (did you mean {near[0]}?)" if near else "")


def _from_openclaw_transcript(p):
    """{"openclaw_transcript": <a transcript line>, "session": {key, channel, chat_type, chat_id,
    topic}, "conversation": {kind, native_channel_id}, "queued_item": n} (built by
    backfill/openclaw.py) -> Message. The store's conversation names the chat; else the session's
    chat wins and the line's Conversation-info block fills what the session key does not name."""
    line = field(p, "openclaw_transcript", dict, required=True, where="")
    session = field(p, "session", dict, where="") or {}
    msg = field(line, "message", dict, required=True, where="openclaw_transcript.")
    if line.get("type") != "message" or msg.get("role") != "user":
        raise NotAMessage(f"openclaw.{line.get('type')}.{msg.get('role')}", "not a user line of the transcript")
    try:
        fields = openclaw_text.read_user_line(msg, p.get("queued_item"))
    except ValueError as e:
        raise InvalidMessage(str(e)) from None
    if fields["message_id"] is None:
        raise InvalidMessage("transcript line has no [message_id: …] line and no Conversation-info message_id")
    conversation = field(p, "conversation", dict, where="") or {}
    chat_type, chat_id = _transcript_chat(session, fields, conversation)
    topic = session.get("topic") if isinstance(session.get("topic"), str) else None
    created = msg.get("timestamp") if msg.get("timestamp") is not None else line.get("timestamp")
    return Message(
        source="openclaw.transcript",
        message_id=check_token(fields["message_id"], "message_id", MAX_ID_LENGTH),
        chat_id=check_token(chat_id, "session.chat_id", MAX_ID_LENGTH),
        chat_type=chat_type,
        thread_id=topic if topic and topic.startswith("omt_") else None,
        root_id=topic if topic and not topic.startswith("omt_") else None,
        parent_id=check_token(fields["parent_id"], "replyToId", MAX_ID_LENGTH),
        sender_id=check_token(fields["sender_id"], "senderId", MAX_ID_LENGTH),
        sender_type="user",
        msg_type=fields["msg_type"],
        content=fields["content"],
        text=fields["text"],
        mentions=fields["mentions"],
        created_at=optional_time(created, "message.timestamp"),
        raw=p,
    )


def _transcript_chat(session, fields, conversation):
    """(chat_type, chat_id) in Feishu's words (`group`, `p2p`). The store's conversation the line
    links to (`__openclaw.transport.conversationRef` -> `conversations`: kind, native_channel_id) is
    the chat itself, the p2p `oc_` id of a direct chat included. Without it, what the line says of its
    own chat (the Conversation-info block) comes before what the session says: a shared main session
    holds chats of several peers; a direct chat's id is then the sender's open_id."""
    native = conversation.get("native_channel_id")
    kind = {"direct": "p2p", "group": "group", "channel": "group"}.get(conversation.get("kind"))
    if kind and isinstance(native, str) and native.startswith("oc_"):
        return kind, native
    info = fields["chat"]
    own = info.get("chat_id") if isinstance(info.get("chat_id"), str) and ":" in info["chat_id"] else ""
    prefix, own_id = own.split(":", 1) if own else ("", None)
    group_flag = info.get("is_group_chat")
    kind = ({"chat": "group", "user": "direct"}.get(prefix)
            or ({True: "group", False: "direct"}.get(group_flag) if isinstance(group_flag, bool) else None)
            or session.get("chat_type"))
    kind = "group" if kind == "channel" else kind
    same = session.get("chat_type") in (kind, "channel" if kind == "group" else kind)
    session_id = session.get("chat_id") if same else None
    if kind == "direct":
        return "p2p", fields["sender_id"] or (own_id if prefix == "user" else None) or session_id
    subject = str(info.get("group_subject") or "")
    named = subject if subject.startswith("oc_") else None  # the group's id when it has no name
    return kind, (own_id if prefix == "chat" else None) or session_id or named


def _sender(obj, id_key, where):
    """sender_id and sender_type where a shape keeps them side by side (the Open API item's sender,
    the flat dict)."""
    return dict(sender_id=id_field(obj, id_key, where), sender_type=kind_field(obj, "sender_type", where))


def _message_ids(obj, where):
    """The ids a Feishu message object names the same way in the event, the Open API and the flat
    dict: message_id (required), chat_id, chat_type, thread_id, root_id, parent_id."""
    return dict(message_id=id_field(obj, "message_id", where, required=True), chat_id=id_field(obj, "chat_id", where),
                chat_type=kind_field(obj, "chat_type", where), thread_id=id_field(obj, "thread_id", where),
                root_id=id_field(obj, "root_id", where), parent_id=id_field(obj, "parent_id", where))



@dataclasses.dataclass(frozen=True)
class Shape:
    """One accepted input shape: how to recognise it, and how to read it into a Message."""

    source: str  # Message.source of what it parses, and the metrics label of the sender
    matches: object  # callable(dict) -> bool, cheap: only top-level keys
    parse: object  # callable(dict) -> Message, or InvalidMessage / NotAMessage
    more: object = None  # callable(dict) -> [Event]: what else one payload carries (an exported line's history)


# In order: the first shape whose `matches` is true reads the payload. The flat dict comes last,
# since every other shape may carry a message_id key of its own too.
SHAPES = (
    Shape("feishu.v2", lambda p: p.get("schema") == "2.0" or "header" in p, _from_feishu_v2),
    Shape("feishu.v1", lambda p: p.get("type") == "event_callback", _from_feishu_v1),
    Shape("openclaw", lambda p: p.get("type") == "message" and "context" in p, _from_openclaw),
    Shape("openclaw.transcript", lambda p: "openclaw_transcript" in p, _from_openclaw_transcript),
    # An Open API item has a message_id too: it must come before the flat dict, which has no `body`.
    Shape("feishu.history", lambda p: "message_id" in p and "body" in p, _from_open_api),
    # A line of `outbox-relay export` (message/exported.py): the message, then its history.
    Shape("archive", exported.matches, exported.parse, exported.events),
    Shape("api", lambda p: "message_id" in p, _from_flat),
)
SOURCES = tuple(shape.source for shape in SHAPES)


def detect(payload):
    """The Shape that reads this dict, or None. The webhook labels its metrics with it even when
    the event turns out not to be a message."""
    return next((shape for shape in SHAPES if shape.matches(payload)), None)


def normalize_all(payload):
    """normalize(), followed by what else the payload carries: an exported line's history (the webhook
    takes one item a request; `put` takes them all)."""
    item = normalize(payload)
    shape = detect(payload) if isinstance(payload, dict) else None
    return [item] + (shape.more(payload) if shape is not None and shape.more is not None else [])


def parse_lines(data):
    """Bytes or text holding one JSON message, or JSON lines (one per line: `put`'s input) -> Messages.
    InvalidMessage names the line of the first one that is not a message."""
    try:
        # utf-8-sig: a file saved by an editor that writes a byte-order mark is still JSON to us.
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise InvalidMessage(f"input is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise InvalidMessage("no input: give a JSON object or JSON lines")
    try:
        return normalize_all(parse_payload(text))
    except InvalidMessage as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise whole from None
    messages = []
    for n, line in lines:
        try:
            messages.extend(normalize_all(parse_payload(line)))
        except InvalidMessage as e:
            raise InvalidMessage(f"line {n}: {e}") from None
    return messages

