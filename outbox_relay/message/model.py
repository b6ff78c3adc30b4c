"""The `Message`: one chat message, whatever shape it arrived in; and JSON text -> the payloads to read.
Pure: no I/O."""

import dataclasses
import json

from .. import jsonio
from ..errors import InvalidMessage
from ..timeconv import s_to_ms
from .fields import MAX_MESSAGE_BYTES, json_type, loads


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

    outbox_kind = "message"

    @property
    def outbox_type(self):
        return self.msg_type

    @property
    def key(self):
        """What the outbox dedupes on (events: message/events.py)."""
        return self.message_id

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

# What a later copy of a message may give the row an earlier copy made (issue 23; the README's "One
# message, one row"): an id the row lacks, and a direct chat's own oc_ id where the row has only the
# sender's ou_ id (all OpenClaw's hook knows). The target's upsert says the same in SQL
# (targets/base.py gap_fills); this copy decides, before the target, whether a copy is worth sending.
FILLED_IDS = ("parent_id", "root_id", "thread_id")


def gap_fills(row, later):
    """{field: value} that `later` (a Message) gives `row` (a mapping or an object with chat_id,
    chat_type, parent_id, root_id, thread_id) and row lacks; {} when it adds nothing."""
    get = row.get if isinstance(row, dict) else (lambda f: getattr(row, f))
    fills = {f: getattr(later, f) for f in FILLED_IDS if not get(f) and getattr(later, f)}
    chat = later.chat_id or ""
    if get("chat_type") == "p2p" and str(get("chat_id") or "").startswith("ou_") and chat.startswith("oc_"):
        fills["chat_id"] = chat
    return fills


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
    value = loads(data, "payload")
    if not isinstance(value, dict):
        raise InvalidMessage(f"payload must be a JSON object, not {json_type(value)}")
    return value
