"""What happens to a message after it is sent, as Feishu tells it: an edit, a recall, a reaction added
or removed. Each is one `Event`, archived like a message (committed to the outbox before the 200,
relayed exactly once into feishu_message_events) and applied to the message's row. Pure: no I/O.

Feishu delivers these late, out of order and more than once, and may deliver one before the message it
is about. Nothing here depends on order: an event carries the time Feishu gives it (`happened_at`), and
the archive's state is a function of the set of events (targets/: the latest edit by update_time wins,
the earliest recall is final, a reaction's latest action counts).

`fact` names what an event says, whoever says it: the webhook's edit of a message at update_time T and
a backfill's "this message was updated at T" are one fact, so the archive keeps one history row of it.
"""

import dataclasses
import hashlib
import json

from .. import jsonio
from ..errors import InvalidMessage
from ..timeconv import s_to_ms
from .fields import (
    MAX_ID_LENGTH,
    MAX_KIND_LENGTH,
    check_token,
    field,
    id_field,
    json_string,
    kind_field,
    parse_timestamp,
)
from .text import extract_text

EDITED, RECALLED, REACTION_ADDED, REACTION_REMOVED = "edited", "recalled", "reaction_added", "reaction_removed"
KINDS = (EDITED, RECALLED, REACTION_ADDED, REACTION_REMOVED)
# Feishu's event types -> the kind each becomes.
EVENT_TYPES = {
    "im.message.updated_v1": EDITED,
    "im.message.recalled_v1": RECALLED,
    "im.message.reaction.created_v1": REACTION_ADDED,
    "im.message.reaction.deleted_v1": REACTION_REMOVED,
}
KEY_PREFIX = "event:"  # an event's key in the outbox, beside messages' message_ids


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened to a message. `event_id` is the idempotency key."""

    event_id: str
    message_id: str
    kind: str
    source: str
    happened_at: int | None = None  # epoch ms by Feishu's clock: update_time, recall_time, action_time
    chat_id: str | None = None
    operator_id: str | None = None  # who: the editor, the reacting user (or app); a recall names no one
    operator_type: str | None = None
    msg_type: str | None = None  # an edit's message type, with its new content and text
    content: object = None
    text: str | None = None
    mentions: list = dataclasses.field(default_factory=list)
    emoji: str | None = None  # a reaction's emoji_type
    recall_type: str | None = None  # message_owner, group_owner, group_manager, enterprise_manager
    raw: object = None

    outbox_kind = "event"

    @property
    def key(self):
        """What the outbox dedupes on: the event, not the message it is about."""
        return KEY_PREFIX + self.event_id

    @property
    def sender_id(self):
        return self.operator_id

    @property
    def outbox_type(self):
        return self.kind

    @property
    def fact(self):
        """What this event says, the same whichever way it came (see the module's docstring)."""
        if self.kind == RECALLED:
            return RECALLED  # a message is recalled once
        if self.kind == EDITED:
            return f"{EDITED}:{self.happened_at}"
        return f"{self.kind}:{self.emoji}:{self.operator_id}:{self.happened_at}"

    def to_json(self):
        return jsonio.dumps({name: getattr(self, name) for name in _FIELD_NAMES})

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name in data})

    def created_or(self, received_at):
        """When it happened (epoch ms), or when the outbox received it where Feishu did not say."""
        return self.happened_at if self.happened_at is not None else s_to_ms(received_at)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Event))


def from_feishu_v2(p, header, event_type):
    """A v2 event of one of EVENT_TYPES -> Event."""
    kind = EVENT_TYPES[event_type]
    event = field(p, "event", dict, required=True, where="")
    ids = dict(event_id=id_field(header, "event_id", "header.", required=True), source="feishu.v2", raw=p)
    if kind == EDITED:
        return _edited(event, ids)
    if kind == RECALLED:
        return Event(kind=RECALLED, message_id=id_field(event, "message_id", "event.", required=True),
                     chat_id=id_field(event, "chat_id", "event."),
                     happened_at=_time(event, "recall_time", "event.", header),
                     recall_type=kind_field(event, "recall_type", "event."), **ids)
    return Event(kind=kind, message_id=id_field(event, "message_id", "event.", required=True),
                 happened_at=_time(event, "action_time", "event.", header),
                 operator_id=_operator(event), operator_type=kind_field(event, "operator_type", "event."),
                 emoji=_emoji(event), **ids)


def _edited(event, ids):
    msg = field(event, "message", dict, required=True, where="event.")
    sender = field(event, "sender", dict, where="event.") or {}
    msg_type = kind_field(msg, "message_type", "event.message.", default="text")
    content = json_string(msg, "content", "event.message.")
    mentions = field(msg, "mentions", list, where="event.message.") or []
    return Event(kind=EDITED, message_id=id_field(msg, "message_id", "event.message.", required=True),
                 chat_id=id_field(msg, "chat_id", "event.message."),
                 happened_at=_time(msg, "update_time", "event.message.", ids["raw"]["header"]),
                 operator_id=_open_id(field(sender, "sender_id", dict, where="event.sender.") or {},
                                      "event.sender.sender_id."),
                 operator_type=kind_field(sender, "sender_type", "event.sender."),
                 msg_type=msg_type, content=content, text=extract_text(msg_type, content, mentions),
                 mentions=mentions, **ids)


def _time(obj, key, where, header):
    """Feishu's time of the event; the envelope's create_time where the event has none."""
    value = field(obj, key, (str, int), where=where)
    if value is None:
        value = field(header, "create_time", (str, int), where="header.")
    return None if value is None else parse_timestamp(value, where + key)


def _open_id(ids, where):
    return id_field(ids, "open_id", where) or id_field(ids, "user_id", where) or id_field(ids, "union_id", where)


def _operator(event):
    """The reacting user's open_id, or the app's id when an app reacted."""
    ids = field(event, "user_id", dict, where="event.") or {}
    return _open_id(ids, "event.user_id.") or id_field(event, "app_id", "event.")


def _emoji(event):
    reaction = event.get("reaction_type")
    value = reaction.get("emoji_type") if isinstance(reaction, dict) else reaction
    if not isinstance(value, str) or not value:
        raise InvalidMessage("event.reaction_type.emoji_type must be a string (the emoji Feishu names, e.g."
                             f" THUMBSUP), not {json.dumps(value)[:40]}")
    return check_token(value, "event.reaction_type.emoji_type", MAX_KIND_LENGTH)


def from_history(message, item):
    """The events an Open API history item states about its message (what `backfill feishu` reads):
    `deleted` is a recall, `updated` an edit at update_time with the item's (current) content. Their
    event ids are derived from the fact, so a second backfill adds nothing; `fact` makes them one with
    the webhook's events of the same fact."""
    events = []
    update_time = item.get("update_time")
    happened = parse_timestamp(update_time, "update_time") if update_time not in (None, "") else None
    common = dict(message_id=message.message_id, chat_id=message.chat_id, source="feishu.history", raw=item)
    if item.get("deleted") is True:
        events.append(Event(event_id=_derived_id(message.message_id, RECALLED), kind=RECALLED,
                            happened_at=happened, **common))
    elif item.get("updated") is True and happened is not None:
        events.append(Event(event_id=_derived_id(message.message_id, f"{EDITED}:{happened}"), kind=EDITED,
                            happened_at=happened, operator_id=message.sender_id,
                            operator_type=message.sender_type, msg_type=message.msg_type,
                            content=message.content, text=message.text, mentions=message.mentions, **common))
    return events


def _derived_id(message_id, fact):
    """history:<message_id>:<fact>, or its digest where that would not fit an id."""
    text = f"history:{message_id}:{fact}"
    return text if len(text) <= MAX_ID_LENGTH else "history:" + hashlib.sha256(text.encode()).hexdigest()


def restore(kind, payload):
    """An outbox row's payload (JSON) -> the Message or Event it holds."""
    from .model import Message
    return Event.from_json(payload) if kind == Event.outbox_kind else Message.from_json(payload)
