"""Every accepted input shape -> one `Message`, or `InvalidMessage`. Pure: no I/O.

Shapes (samples in tests/samples/): Feishu event v2 (`im.message.receive_v1`),
Feishu event v1 (`event_callback`), OpenClaw's `message:received` hook event,
an item of the Open API's message list (what `backfill feishu` reads back),
and the flat dict the old in-process call and the legacy JSON queue used.
"""

import dataclasses
import json
import re

from .. import jsonio
from . import openclaw_text
from ..errors import InvalidMessage, NotAMessage
from ..timeconv import iso_to_ms, s_to_ms

# One message's payload, encoded as UTF-8 JSON. Matches the webhook's default
# body limit: anything bigger is not a chat message.
MAX_MESSAGE_BYTES = 1024 * 1024
# Real events nest 5-6 levels (post content: 4 inside the content string).
MAX_DEPTH = 32
MAX_ID_LENGTH = 128
MAX_KIND_LENGTH = 64
MESSAGE_EVENT_V2 = "im.message.receive_v1"
RECALLED_TEXT = "[recalled]"  # the text of a message recalled before it was archived
# created_at (epoch ms, UTC) must be a date the target can hold: years 1-9999.
MIN_CREATED_MS = -62135596800000       # 0001-01-01T00:00:00Z
MAX_CREATED_MS = 253402300799999       # 9999-12-31T23:59:59.999Z



@dataclasses.dataclass(frozen=True)
class Message:
    """One chat message, whatever shape it arrived in. `message_id` is the idempotency key."""

    message_id: str
    source: str
    chat_id: str | None = None
    chat_type: str | None = None
    thread_id: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    sender_id: str | None = None
    sender_type: str | None = None
    msg_type: str = "text"
    content: object = None
    text: str = ""
    mentions: list = dataclasses.field(default_factory=list)
    created_at: int | None = None  # epoch milliseconds, UTC
    raw: object = None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name in data})

    def to_json(self):
        # Not to_dict(): dataclasses.asdict deep-copies `raw` and `content` before json.dumps reads
        # them, which was 70% of the CPU of a put (bench/). Every field holds plain JSON values, so
        # a shallow dict gives the same text.
        return jsonio.dumps({name: getattr(self, name) for name in _FIELD_NAMES})

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def created_or(self, received_at):
        """created_at in epoch ms, or (a sender that gave none) when the outbox received it."""
        return self.created_at if self.created_at is not None else s_to_ms(received_at)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Message))


def parse_payload(data):
    """Bytes or str of JSON -> a dict, or InvalidMessage. Size is checked before parsing."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"payload too large: {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidMessage(f"payload is not valid UTF-8 (byte {e.start})") from None
    elif not isinstance(data, str):
        raise InvalidMessage(f"payload must be JSON text, not {type(data).__name__}")
    elif len(data) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"payload too large: {len(data)} characters, limit {MAX_MESSAGE_BYTES}")
    if not data.strip():
        raise InvalidMessage("payload is empty")
    value = _loads(data, "payload")
    if not isinstance(value, dict):
        raise InvalidMessage(f"payload must be a JSON object, not {_json_type(value)}")
    return value


def normalize(payload):
    """Any accepted shape (a dict, or JSON text) -> Message. Raises InvalidMessage / NotAMessage."""
    if isinstance(payload, Message):
        return payload
    if isinstance(payload, (str, bytes, bytearray, memoryview)):
        payload = parse_payload(payload)
    if not isinstance(payload, dict):
        raise InvalidMessage(f"payload must be a JSON object, not {_json_type(payload)}")
    _check_shape(payload)
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
    header = _get(p, "header", dict, required=True, where="")
    event_type = _get(header, "event_type", str, required=True, where="header.")
    if event_type != MESSAGE_EVENT_V2:
        raise NotAMessage(event_type)
    event = _get(p, "event", dict, required=True, where="")
    msg = _get(event, "message", dict, required=True, where="event.")
    sender = _get(event, "sender", dict, where="event.") or {}
    sender_ids = _get(sender, "sender_id", dict, where="event.sender.") or {}
    msg_type = _kind(msg, "message_type", "event.message.", default="text")
    content = _json_string(msg, "content", "event.message.")
    mentions = _get(msg, "mentions", list, where="event.message.") or []
    created = _get(msg, "create_time", (str, int), where="event.message.")
    if created is None:
        created = _get(header, "create_time", (str, int), where="header.")
    return _build(
        source="feishu.v2",
        **_message_ids(msg, "event.message."),
        sender_id=(_id(sender_ids, "open_id", "event.sender.sender_id.")
                   or _id(sender_ids, "user_id", "event.sender.sender_id.")
                   or _id(sender_ids, "union_id", "event.sender.sender_id.")),
        sender_type=_kind(sender, "sender_type", "event.sender."),
        msg_type=msg_type,
        content=content,
        text=extract_text(msg_type, content, mentions),
        mentions=mentions,
        created_at=parse_timestamp(created, "event.message.create_time"),
        raw=p,
    )


def _strip_at_tags(text):
    """`<at open_id="…">@name</at>` -> `@name`, exactly what the regex `<at\\b[^>]*>(.*?)</at>` would
    replace, in one pass: the regex rescans to the end for every unclosed `<at`, which is quadratic
    (a 160 KB body of "<at>" took 28 s)."""
    out, pos = [], 0
    start = text.find("<at", pos)
    while start >= 0:
        if re.match(r"\w", text[start + 3:start + 4]):  # `<attr`: not an at tag
            start = text.find("<at", start + 3)
            continue
        # No `>` or `</at>` after this point means no later tag can match either.
        open_end = text.find(">", start + 3)
        if open_end < 0:
            break
        close = text.find("</at>", open_end + 1)
        if close < 0:
            break
        out.append(text[pos:start])
        out.append(text[open_end + 1:close])
        pos = close + 5
        start = text.find("<at", pos)
    out.append(text[pos:])
    return "".join(out)


def _from_feishu_v1(p):
    event = _get(p, "event", dict, required=True, where="")
    event_type = _get(event, "type", str, required=True, where="event.")
    if event_type != "message":
        raise NotAMessage(event_type)
    msg_type = _kind(event, "msg_type", "event.", default="text")
    raw_text = _get(event, "text", str, where="event.") or ""
    chat_type = _kind(event, "chat_type", "event.")
    content = {"text": raw_text} if msg_type == "text" else {
        k: v for k, v in event.items() if k in ("image_key", "file_key", "title", "text")}
    text = _strip_at_tags(raw_text) if msg_type == "text" else extract_text(msg_type, content, [])
    ts = _get(p, "ts", (str, int, float), where="")
    return _build(
        source="feishu.v1",
        message_id=_id(event, "open_message_id", "event.", required=True, name="message_id"),
        chat_id=_id(event, "open_chat_id", "event."),
        chat_type="p2p" if chat_type == "private" else chat_type,
        root_id=_id(event, "root_id", "event."),
        parent_id=_id(event, "parent_id", "event."),
        sender_id=_id(event, "open_id", "event.") or _id(event, "user_open_id", "event."),
        sender_type="user",
        msg_type=msg_type,
        content=content,
        text=text,
        mentions=[],
        created_at=_optional_time(ts, "ts"),
        raw=p,
    )


def _from_openclaw(p):
    if p.get("action") != "received":
        raise NotAMessage(f"message:{p.get('action')}")
    ctx = _get(p, "context", dict, required=True, where="")
    meta = _get(ctx, "metadata", dict, where="context.") or {}
    body = _get(ctx, "content", str, where="context.") or ""
    chat_id, chat_type = _openclaw_chat(_get(ctx, "conversationId", str, where="context.") or "",
                                        _get(ctx, "from", str, where="context.") or "")
    # context.timestamp is when OpenClaw processed the message (Date.now()), not Feishu's
    # create_time: the event carries no other time. Usually within a second of it.
    created = ctx.get("timestamp")
    if created is None:
        created = p.get("timestamp")
    return _build(
        source="openclaw",
        message_id=_id(ctx, "messageId", "context.", required=True, name="message_id"),
        chat_id=_check_len(chat_id, "context.conversationId", MAX_ID_LENGTH),
        chat_type=_check_len(chat_type, "context.from", MAX_KIND_LENGTH),
        thread_id=_id(meta, "threadId", "context.metadata."),
        sender_id=_id(meta, "senderId", "context.metadata.") or _openclaw_sender(ctx),
        sender_type="user",
        msg_type="text",
        content={"text": body},
        text=body,
        mentions=[],
        created_at=_optional_time(created, "context.timestamp"),
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
    parts = (_get(ctx, "from", str, where="context.") or "").split(":")
    return _check_len(parts[1], "context.from", MAX_ID_LENGTH) if len(parts) == 2 and parts[1] else None


def _from_open_api(p):
    """An item of the Open API's message list (`GET /open-apis/im/v1/messages`): what `backfill
    feishu` reads back. Same field rules as the v2 event, so a message archived from the event and
    the same message read back give the same row (chat_type aside: the item has none)."""
    body = _get(p, "body", dict, where="") or {}
    sender = _get(p, "sender", dict, where="") or {}
    msg_type = _kind(p, "msg_type", "", default="text")
    mentions = _event_mentions(_get(p, "mentions", list, where="") or [])
    deleted = p.get("deleted") is True
    # A recalled message's body is a notice, not its content, which Feishu no longer gives out:
    # the archive keeps the fact (who, when, where; `raw.deleted`) with empty content.
    content = {} if deleted else _json_string(body, "content", "body.")
    created = _get(p, "create_time", (str, int), where="")
    return _build(
        source="feishu.history",
        **_message_ids(p, ""),
        sender_id=_id(sender, "id", "sender."),
        sender_type=_kind(sender, "sender_type", "sender."),
        msg_type=msg_type,
        content=content,
        text=RECALLED_TEXT if deleted else extract_text(msg_type, content, mentions),
        mentions=mentions,
        created_at=_optional_time(created, "create_time"),
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


def _from_flat(p):
    msg_type = _kind(p, "msg_type", "", default=None) or _kind(p, "message_type", "", default="text")
    if "content" in p and p["content"] is not None:
        if isinstance(p["content"], dict):
            content = p["content"]
        else:
            content = _json_string(p, "content", "")
    else:
        text = _get(p, "text", str, where="")
        content = {"text": text or ""}
    mentions = _get(p, "mentions", list, where="") or []
    text = _get(p, "text", str, where="")
    if text is None:
        text = extract_text(msg_type, content, mentions)
    created = p.get("create_time", p.get("created_at"))
    return _build(
        source="api",
        **_message_ids(p, ""),
        sender_id=_id(p, "sender_id", ""),
        sender_type=_kind(p, "sender_type", ""),
        msg_type=msg_type,
        content=content,
        text=text,
        mentions=mentions,
        created_at=_optional_time(created, "create_time"),
        raw=p,
    )


def _from_openclaw_transcript(p):
    """{"openclaw_transcript": <a transcript line>, "session": {key, channel, chat_type, chat_id,
    topic}, "queued_item": n} (built by backfill/openclaw.py) -> Message. The session's chat wins;
    the line's Conversation-info block fills what the session key does not name."""
    line = _get(p, "openclaw_transcript", dict, required=True, where="")
    session = _get(p, "session", dict, where="") or {}
    msg = _get(line, "message", dict, required=True, where="openclaw_transcript.")
    if line.get("type") != "message" or msg.get("role") != "user":
        raise NotAMessage(f"openclaw.{line.get('type')}.{msg.get('role')}", "not a user line of the transcript")
    try:
        fields = openclaw_text.read_user_line(msg, p.get("queued_item"))
    except ValueError as e:
        raise InvalidMessage(str(e)) from None
    if fields["message_id"] is None:
        raise InvalidMessage("transcript line has no [message_id: …] line and no Conversation-info message_id")
    chat_type, chat_id = _transcript_chat(session, fields)
    topic = session.get("topic") if isinstance(session.get("topic"), str) else None
    created = msg.get("timestamp") if msg.get("timestamp") is not None else line.get("timestamp")
    return _build(
        source="openclaw.transcript",
        message_id=_check_len(fields["message_id"], "message_id", MAX_ID_LENGTH),
        chat_id=_check_len(chat_id, "session.chat_id", MAX_ID_LENGTH),
        chat_type=chat_type,
        thread_id=topic if topic and topic.startswith("omt_") else None,
        root_id=topic if topic and not topic.startswith("omt_") else None,
        parent_id=_check_len(fields["parent_id"], "replyToId", MAX_ID_LENGTH),
        sender_id=_check_len(fields["sender_id"], "senderId", MAX_ID_LENGTH),
        sender_type="user",
        msg_type="text",
        content={"text": fields["text"]},
        text=fields["text"],
        mentions=fields["mentions"],
        created_at=_optional_time(created, "message.timestamp"),
        raw=p,
    )


def _transcript_chat(session, fields):
    """(chat_type, chat_id) in Feishu's words (`group`, `p2p`). What the line says of its own chat
    (the Conversation-info block) comes before what the session says: a shared main session holds
    chats of several peers. A direct chat's id is the sender's open_id: the transcript, like the
    hook event, holds no p2p `oc_` chat id."""
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


def _message_ids(obj, where):
    """The ids a Feishu message object names the same way in the event, the Open API and the flat
    dict: message_id (required), chat_id, chat_type, thread_id, root_id, parent_id."""
    return dict(message_id=_id(obj, "message_id", where, required=True), chat_id=_id(obj, "chat_id", where),
                chat_type=_kind(obj, "chat_type", where), thread_id=_id(obj, "thread_id", where),
                root_id=_id(obj, "root_id", where), parent_id=_id(obj, "parent_id", where))


def _build(**fields):
    return Message(**fields)



@dataclasses.dataclass(frozen=True)
class Shape:
    """One accepted input shape: how to recognise it, and how to read it into a Message."""

    source: str  # Message.source of what it parses, and the metrics label of the sender
    matches: object  # callable(dict) -> bool, cheap: only top-level keys
    parse: object  # callable(dict) -> Message, or InvalidMessage / NotAMessage


# In order: the first shape whose `matches` is true reads the payload. The flat dict comes last,
# since every other shape may carry a message_id key of its own too.
SHAPES = (
    Shape("feishu.v2", lambda p: p.get("schema") == "2.0" or "header" in p, _from_feishu_v2),
    Shape("feishu.v1", lambda p: p.get("type") == "event_callback", _from_feishu_v1),
    Shape("openclaw", lambda p: p.get("type") == "message" and "context" in p, _from_openclaw),
    Shape("openclaw.transcript", lambda p: "openclaw_transcript" in p, _from_openclaw_transcript),
    # An Open API item has a message_id too: it must come before the flat dict, which has no `body`.
    Shape("feishu.history", lambda p: "message_id" in p and "body" in p, _from_open_api),
    Shape("api", lambda p: "message_id" in p, _from_flat),
)
SOURCES = tuple(shape.source for shape in SHAPES)


def detect(payload):
    """The Shape that reads this dict, or None. The webhook labels its metrics with it even when
    the event turns out not to be a message."""
    return next((shape for shape in SHAPES if shape.matches(payload)), None)


# -- text extraction ------------------------------------------------------------

_PLACEHOLDERS = {
    "image": "[image]", "file": "[file]", "audio": "[audio]", "media": "[video]",
    "sticker": "[sticker]", "interactive": "[card]", "share_chat": "[shared chat]",
    "share_user": "[shared contact]", "location": "[location]", "video_chat": "[video call]",
    "merge_forward": "[forwarded messages]", "system": "[system]", "hongbao": "[red packet]",
    "todo": "[todo]", "vote": "[vote]", "calendar": "[calendar]", "share_calendar_event": "[calendar]",
}
_POST_LOCALES = ("zh_cn", "en_us", "ja_jp")


def extract_text(msg_type, content, mentions=()):
    """Plain text for search: text -> text, post -> its runs joined, others -> a placeholder."""
    if msg_type == "text" and isinstance(content, dict):
        text = content.get("text")
        text = text if isinstance(text, str) else ""
        for m in mentions or ():
            if isinstance(m, dict) and isinstance(m.get("key"), str) and isinstance(m.get("name"), str):
                key, name = m["key"], "@" + m["name"]
                # An empty or one-letter key with a long name would multiply the text (gigabytes
                # from a 1 MB payload); real keys are "@_user_N" and names are short.
                if key and len(text) + text.count(key) * (len(name) - len(key)) <= MAX_MESSAGE_BYTES:
                    text = text.replace(key, name)
        return text
    if msg_type == "post" and isinstance(content, dict):
        return _post_text(content)
    if msg_type == "file" and isinstance(content, dict) and isinstance(content.get("file_name"), str):
        return f"[file] {content['file_name']}"
    return _PLACEHOLDERS.get(msg_type, f"[{msg_type}]")


def _post_text(content):
    body = content
    if "content" not in content:
        # A locale wrapper: {"zh_cn": {"title": …, "content": […]}, "en_us": …}
        wrapped = [content[k] for k in _POST_LOCALES if isinstance(content.get(k), dict)]
        wrapped += [v for k, v in content.items() if k not in _POST_LOCALES and isinstance(v, dict)]
        body = wrapped[0] if wrapped else {}
    lines = []
    title = body.get("title")
    if isinstance(title, str) and title:
        lines.append(title)
    paragraphs = body.get("content")
    for para in paragraphs if isinstance(paragraphs, list) else ():
        runs = para if isinstance(para, list) else [para]
        line = "".join(_run_text(r) for r in runs if isinstance(r, dict))
        if line:
            lines.append(line)
    return "\n".join(lines)


def _run_text(run):
    tag = run.get("tag")
    if tag in ("text", "a", "code_block", "md"):
        text = run.get("text")
        return text if isinstance(text, str) else ""
    if tag == "at":
        name = run.get("user_name") or run.get("user_id")
        return "@" + name if isinstance(name, str) else ""
    if tag == "img":
        return "[image]"
    if tag == "media":
        return "[video]"
    if tag == "emotion":
        emoji = run.get("emoji_type")
        return f"[{emoji}]" if isinstance(emoji, str) else ""
    return ""


# -- field helpers -----------------------------------------------------------------


def _optional_time(value, field):
    """created_at of a shape whose time may be absent (the outbox then uses its commit time)."""
    return None if value is None else parse_timestamp(value, field)


def parse_timestamp(value, field):
    """Epoch seconds / ms / µs / ns (number or digit string) -> epoch ms. Feishu sends ms strings;
    16-digit (µs) values appear in its docs, so the unit is inferred from the magnitude."""
    if isinstance(value, bool):
        raise InvalidMessage(f"{field} must be an epoch timestamp, not a boolean")
    if isinstance(value, str):
        value = value.strip()
        if re.fullmatch(r"\d{1,19}", value):
            number = int(value)
        elif re.fullmatch(r"\d{1,12}\.\d{1,9}", value):
            number = float(value)
        elif re.fullmatch(r"\d+", value):
            # Not for fromisoformat below: it reads 20+ digits as a basic-format date (year 1111).
            raise InvalidMessage(f"{field} is out of range: {value[:40]!r}")
        else:
            iso = iso_to_ms(value)
            if iso is None:
                raise InvalidMessage(f"{field} is not a timestamp: {value[:40]!r}")
            # An offset can push a valid date out of years 1-9999 (in UTC): the relay could
            # never write such a row, and it used to stall the whole queue behind it.
            if not MIN_CREATED_MS <= iso <= MAX_CREATED_MS:
                raise InvalidMessage(f"{field} is out of range: {value[:40]!r}")
            return iso
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise InvalidMessage(f"{field} must be an epoch timestamp string or number, not {_json_type(value)}")
    if number != number or number < 0:
        raise InvalidMessage(f"{field} is not a valid timestamp: {value!r}")
    for limit, scale in ((1e11, 1000), (1e14, 1), (1e17, 1e-3), (1e20, 1e-6)):
        if number < limit:
            return int(number * scale)
    raise InvalidMessage(f"{field} is out of range: {str(value)[:40]!r}")


def _get(obj, key, types, *, required=False, where=""):
    value = obj.get(key)
    if value is None or (value == "" and types is not dict):
        if required:
            raise InvalidMessage(f"missing {where}{key}")
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InvalidMessage(f"{where}{key} must be {_article(expected)}, not {_json_type(value)}")
    return value


def _id(obj, key, where, *, required=False, name=None):
    value = _get(obj, key, (str, int), required=required, where=where)
    if value is None:
        return None
    value = str(value)
    if required and not value.strip():
        raise InvalidMessage(f"missing {name or where + key}")
    return _check_len(value, where + key, MAX_ID_LENGTH)


def _kind(obj, key, where, default=None):
    value = _get(obj, key, str, where=where)
    return _check_len(value, where + key, MAX_KIND_LENGTH) if value is not None else default


def _check_len(value, field, limit):
    if value is not None and len(value) > limit:
        raise InvalidMessage(f"{field} is longer than {limit} characters")
    return value


def _json_string(obj, key, where):
    value = obj.get(key)
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise InvalidMessage(f"{where}{key} must be a JSON-encoded string, not {_json_type(value)}")
    decoded = _loads(value, where + key)
    if not isinstance(decoded, dict):
        raise InvalidMessage(f"{where}{key} must encode a JSON object, not {_json_type(decoded)}")
    _check_shape(decoded, where + key)
    return decoded


def _loads(text, what):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except InvalidMessage:
        raise
    except RecursionError:
        raise InvalidMessage(f"{what} is nested too deeply (limit {MAX_DEPTH})") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing 5,000-digit numbers
        raise InvalidMessage(f"{what} is not valid JSON: {str(e)[:120]}") from None


def _reject_constant(name):
    raise InvalidMessage(f"{name} is not valid JSON")


def _check_shape(value, what="payload"):
    """Depth, key and value types, then encodability and size (the encoder's output measured: one
    pass in C instead of a Python walk that summed the sizes; put() spent a fifth of its time here)."""
    try:
        _walk(value, 1)
    except _Refused as e:
        raise InvalidMessage(f"{what} {e}") from None
    try:
        encoded = jsonio.dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(f"{what} contains invalid Unicode (a lone surrogate)") from None
    except ValueError as e:  # ints too long to print
        raise InvalidMessage(f"{what} cannot be encoded: {str(e)[:80]}") from None
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"{what} is too large: {len(encoded)} bytes, limit {MAX_MESSAGE_BYTES}")


class _Refused(Exception):
    """What _walk found wrong, finished into an InvalidMessage by _check_shape."""


_SCALARS = (str, int, bool, type(None))
_INFINITIES = (float("inf"), float("-inf"))


def _walk(value, depth):
    """Into containers only, so a scalar costs one type() call. Recursion is bounded by MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise _Refused(f"is nested too deeply (limit {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise _Refused("has a non-string key")
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        children = (value,)
        depth -= 1  # the value itself, checked below at its own depth
    for v in children:
        t = type(v)
        if t is dict or t is list:
            _walk(v, depth + 1)
        elif t is float:
            if v != v or v in _INFINITIES:
                raise _Refused("contains a non-finite number")
        elif t not in _SCALARS:  # subclasses of the JSON types, or not JSON at all
            if isinstance(v, (dict, list)):
                _walk(v, depth + 1)
            elif isinstance(v, float):
                _walk([float(v)], depth)
            elif not isinstance(v, _SCALARS):
                raise _Refused(f"contains a {t.__name__}, which is not JSON")


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _article(name):
    return {"str": "a string", "dict": "an object", "list": "an array", "int": "a number",
            "str or int": "a string", "str or int or float": "a string or number"}.get(name, name)
