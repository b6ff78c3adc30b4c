"""Test data: the sample files in tests/samples/, and the flat messages the tests build.

The flat shape is the old in-process call's (message_id, chat_id, sender_id, msg_type, content,
create_time); message.py reads it like every other input shape. Two builders, for two needs:
``flat(i)`` is message i of a numbered series (thousands of them, predictable fields), and
``flat_message(message_id, text, ...)`` is one message with the fields a test names.
"""

import json
import pathlib

from outbox_relay.message import normalize

__all__ = ["SAMPLES", "EVENT_SAMPLES", "BASE_MS", "RECEIVED", "FEISHU_TOKEN", "FEISHU_KEY", "FEISHU_ENCRYPTED",
           "FEISHU_TIMESTAMP", "FEISHU_NONCE", "FEISHU_BODY", "FEISHU_SIGNATURE", "sample", "sample_bytes",
           "flat_message", "flat", "ids", "flats", "rows_of", "feishu_message", "feishu_edit", "feishu_recall",
           "feishu_reaction"]

SAMPLES = pathlib.Path(__file__).parent / "samples"
# Feishu's events about a message (edits, recalls, reactions), each read by tests/message/test_events.py.
EVENT_SAMPLES = ("v2_message_updated.json", "v2_message_recalled.json", "v2_reaction_created.json",
                 "v2_reaction_deleted.json")
BASE_MS = 1_700_000_000_000  # create_time of flat(0), epoch milliseconds
RECEIVED = 1_750_000_000.25  # epoch seconds, a fixed outbox commit time (rows_of)

FEISHU_TOKEN = "rvaYgkND1GOiu5MM0E1rncYC6PLtF7JV"  # header.token of the v2 samples

# The vectors of Feishu's "event subscription" documentation: FEISHU_ENCRYPTED is "hello world"
# encrypted with FEISHU_KEY; FEISHU_SIGNATURE signs FEISHU_BODY at that timestamp and nonce.
FEISHU_KEY = "test key"
FEISHU_ENCRYPTED = "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="
FEISHU_TIMESTAMP, FEISHU_NONCE = "1608725989", "abc123"
FEISHU_BODY = b'{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}'
FEISHU_SIGNATURE = "cc7196ad09cc004519c0b09df52f212c9026c37f2f8383b846bf55394cdbbeee"


def sample(name):
    """tests/samples/<name>, parsed ("v2_text.json", "openapi/api_list_messages.json")."""
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def assert_normalizes_to(name, cls, expected):
    """tests/samples/<name> goes through normalize() to one `cls` whose fields hold `expected`.
    Returns (what it became, the sample it came from)."""
    from outbox_relay.message import normalize

    payload = sample(name)
    got = normalize(payload)
    assert isinstance(got, cls)
    for key, value in expected.items():
        assert getattr(got, key) == value, key
    return got, payload


def sample_bytes(name):
    """tests/samples/<name> as it is on disk: the exact bytes a sender would post."""
    return (SAMPLES / name).read_bytes()


def flat_message(message_id, text="hello", chat_id="oc_test", sender_id="ou_test", at=BASE_MS, msg_type="text"):
    """One flat message; ``at`` is its create_time in epoch milliseconds."""
    return {"message_id": message_id, "chat_id": chat_id, "sender_id": sender_id, "msg_type": msg_type,
            "content": json.dumps({"text": text}, ensure_ascii=False), "create_time": str(at)}


def flat(i, prefix="om", **extra):
    """Message i of a numbered series: id ``{prefix}_{i:06d}``, text "message {i} 测试", chat
    oc_chat_{i % 7}, sender ou_user_{i % 11}, created BASE_MS + i; ``extra`` fields replace or add."""
    payload = flat_message(f"{prefix}_{i:06d}", f"message {i} 测试", f"oc_chat_{i % 7}", f"ou_user_{i % 11}",
                           BASE_MS + i)
    payload.update(extra)
    return payload


def ids(n, start=0, prefix="om"):
    """The message_ids of flat(start, prefix) ... flat(start + n - 1, prefix), as a set."""
    return {f"{prefix}_{i:06d}" for i in range(start, start + n)}


def flats(n, prefix="om", **extra):
    """flat(0) ... flat(n - 1), normalized: the Message objects a target is given."""
    return [normalize(flat(i, prefix, **extra)) for i in range(n)]


def rows_of(messages, first_id=1):
    """Target.write's rows for messages: (outbox id from first_id on, Message, RECEIVED)."""
    return [(first_id + n, m, RECEIVED) for n, m in enumerate(messages)]


# -- Feishu's events, built from the samples ---------------------------------------------------------------


def feishu_message(message_id, text, at, chat_id="oc_events_1", sender="ou_sender_1"):
    """An im.message.receive_v1 event: a text message sent at `at` (epoch ms)."""
    event = sample("v2_text.json")
    event["header"]["event_id"] = "receive-" + message_id
    msg = event["event"]["message"]
    msg.update(message_id=message_id, chat_id=chat_id, create_time=str(at), root_id="", parent_id="", thread_id="",
               content=json.dumps({"text": text}, ensure_ascii=False), mentions=[])
    event["event"]["sender"]["sender_id"]["open_id"] = sender
    return event


def feishu_edit(message_id, event_id, text, at, chat_id="oc_events_1", sender="ou_sender_1"):
    """im.message.updated_v1: the message's words are `text` from `at` (its update_time)."""
    event = sample("v2_message_updated.json")
    event["header"]["event_id"] = event_id
    msg = event["event"]["message"]
    msg.update(message_id=message_id, chat_id=chat_id, update_time=str(at),
               content=json.dumps({"text": text}, ensure_ascii=False), mentions=[])
    event["event"]["sender"]["sender_id"]["open_id"] = sender
    return event


def feishu_recall(message_id, event_id, at, chat_id="oc_events_1", recall_type="message_owner"):
    event = sample("v2_message_recalled.json")
    event["header"]["event_id"] = event_id
    event["event"].update(message_id=message_id, chat_id=chat_id, recall_time=str(at), recall_type=recall_type)
    return event


def feishu_reaction(message_id, event_id, at, emoji="THUMBSUP", user="ou_reactor_1", added=True):
    event = sample("v2_reaction_created.json" if added else "v2_reaction_deleted.json")
    event["header"]["event_id"] = event_id
    event["event"].update(message_id=message_id, action_time=str(at), reaction_type={"emoji_type": emoji})
    event["event"]["user_id"]["open_id"] = user
    return event
