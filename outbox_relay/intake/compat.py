"""The seed's in-process call, kept working: `FeishuMessageSync().process_inbound_message(data)`.

Users wired the seed's "方案3" into OpenClaw; one import line changes:

    from feishu_sync import FeishuMessageSync           # the seed
    from outbox_relay.compat import FeishuMessageSync   # now

The seed's class (a public copy of it: `__init__(self)` without arguments, `save_message(message_data)`
for the flat dict, `process_inbound_message(inbound_data)` for an `openclaw.inbound_meta.v1` dict)
wrote to RDS itself and fell back to a JSON queue file. This one commits to the outbox and leaves
the rest to the relay. On purpose it differs where the seed lost or invented data:

- it returns the PutResult (truthy) after the commit, and raises InvalidMessage for bad input and
  OutboxError when the outbox cannot commit, instead of printing and returning False: a caller
  that was told "saved" must be right;
- it never invents a message_id (the seed made one from the clock when it was missing: every retry
  of such a message would have been a new row).
"""

import json

from ..message import normalize
from ..message.shapes import FLAT_FIELDS

# The seed's chat types -> Feishu's (what the webhook stores for the same chats).
_CHAT_TYPES = {"direct": "p2p", "private": "p2p", "p2p": "p2p", "group": "group"}


class FeishuMessageSync:
    """Drop-in for the seed's class. `outbox`: a path or an Outbox; by default the one the service
    uses (OUTBOX_RELAY_OUTBOX, outbox-relay.toml in the working directory, else data/outbox.db)."""

    def __init__(self, outbox=None):
        from ..outbox import Outbox
        if isinstance(outbox, Outbox):
            self.outbox, self._owned = outbox, False
            return
        from ..config import Config
        cfg = Config.load()  # the seed took no settings: the service's own say where its outbox is
        self.outbox = Outbox(outbox, **cfg.outbox_kwargs()) if outbox is not None else cfg.open_outbox()
        self._owned = True

    def process_inbound_message(self, inbound_data):
        """Commit one message (any shape the outbox takes, or the seed's two) and return the
        PutResult; a duplicate message_id is a success that stores nothing new."""
        return self.outbox.put(normalize(seed_payload(inbound_data)))

    def save_message(self, message_data):
        """The seed's other entry point (the flat dict): the same commit."""
        return self.process_inbound_message(message_data)

    def close(self):
        if self._owned:
            self.outbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def seed_payload(data):
    """The seed's own dict shapes -> the flat dict the normalizer reads; anything else unchanged
    (it then decides, and raises InvalidMessage for what is not a message)."""
    if not isinstance(data, dict):
        return data
    if data.get("schema") == "openclaw.inbound_meta.v1" or (
            isinstance(data.get("message"), dict) and "message_id" not in data and "header" not in data
            and "event" not in data):
        return _from_inbound_meta(data)
    if "message_id" in data and isinstance(data.get("content"), str) and not _is_json_object(data["content"]):
        return _from_seed_flat(data)
    return data


def _from_inbound_meta(data):
    """{'message': {'id', 'content', 'sender': {'id', 'name'}}, 'chat_type', 'conversation_label'}:
    chat_id is the conversation label, as the seed stored it; the original is kept in raw."""
    msg = data.get("message") or {}
    sender = msg.get("sender") if isinstance(msg.get("sender"), dict) else {}
    flat = {"message_id": msg.get("id"), "sender_id": sender.get("id"), "sender_type": "user",
            "chat_id": data.get("chat_id") or data.get("conversation_label"),
            "chat_type": _CHAT_TYPES.get(data.get("chat_type")), "msg_type": "text",
            "text": msg.get("content") if isinstance(msg.get("content"), str) else None,
            "seed_payload": data}
    return {k: v for k, v in flat.items() if v is not None}


def _from_seed_flat(data):
    """The seed's save_message dict: `content` is the plain text and `content_type` the type. Its other
    keys (sender_name …) are the seed's own: kept in seed_payload, not taken for the flat dict's."""
    flat = {k: v for k, v in data.items() if k in FLAT_FIELDS and k != "content"}
    flat.setdefault("msg_type", data.get("content_type") or "text")
    flat["text"] = data["content"]
    if isinstance(data.get("chat_type"), str):
        flat["chat_type"] = _CHAT_TYPES.get(data["chat_type"])
    flat["seed_payload"] = data
    return {k: v for k, v in flat.items() if v is not None}


def _is_json_object(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
