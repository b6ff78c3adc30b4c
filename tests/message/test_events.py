"""message/events.py: Feishu's events about a message (an edit, a recall, a reaction added or removed)
-> one Event each, the same fact whichever way it came; bad ones a clear InvalidMessage."""

import copy

import pytest

from outbox_relay.errors import InvalidMessage
from outbox_relay.message import Event, normalize, restore
from outbox_relay.message.events import from_history

from factories import EVENT_SAMPLES, assert_normalizes_to, sample

MESSAGE = "om_5ce6d572455d361153b7cb51da133945"
EXPECTED_EVENTS = {
    "v2_message_updated.json": dict(
        event_id="a1c0f7e2d3b4a5968778695a4b3c2d1e", message_id=MESSAGE, kind="edited", source="feishu.v2",
        happened_at=1796006482101, chat_id="oc_5ce6d572455d361153b7xx51da133945",
        operator_id="ou_84aad35d084aa403a838cf73ee18467", operator_type="user", msg_type="text",
        content={"text": "@_user_1 hello, fixed typo"}, text="@Tom hello, fixed typo", emoji=None,
        recall_type=None, fact="edited:1796006482101"),
    "v2_message_recalled.json": dict(
        event_id="b2d1e8f3a4c5b6079889706b5c4d3e2f", message_id=MESSAGE, kind="recalled", source="feishu.v2",
        happened_at=1796006582101, chat_id="oc_5ce6d572455d361153b7xx51da133945", operator_id=None,
        recall_type="message_owner", text=None, fact="recalled"),
    "v2_reaction_created.json": dict(
        event_id="c3e2f9a4b5d6c7180990817c6d5e4f3a", message_id=MESSAGE, kind="reaction_added",
        happened_at=1796006432101, chat_id=None, operator_id="ou_2b3c4d5e6f708192a3b4c5d6e7f80912",
        operator_type="user", emoji="THUMBSUP",
        fact="reaction_added:THUMBSUP:ou_2b3c4d5e6f708192a3b4c5d6e7f80912:1796006432101"),
    "v2_reaction_deleted.json": dict(
        event_id="d4f3a0b5c6e7d8291aa1928d7e6f5a4b", message_id=MESSAGE, kind="reaction_removed",
        happened_at=1796006442101, operator_id="ou_2b3c4d5e6f708192a3b4c5d6e7f80912", emoji="THUMBSUP"),
}


def test_the_event_samples_are_the_ones_read_here():
    assert set(EXPECTED_EVENTS) == set(EVENT_SAMPLES)


@pytest.mark.parametrize("name", sorted(EXPECTED_EVENTS))
def test_each_feishu_event_is_one_event(name):
    event, payload = assert_normalizes_to(name, Event, EXPECTED_EVENTS[name])
    assert event.key == "event:" + event.event_id and event.raw == payload
    assert restore("event", event.to_json()) == event  # the outbox's payload round trip


def test_bad_events_are_clear_errors_and_odd_ones_are_kept():
    recalled = sample("v2_message_recalled.json")
    del recalled["event"]["message_id"]
    with pytest.raises(InvalidMessage, match="^missing event.message_id$"):
        normalize(recalled)
    reaction = sample("v2_reaction_created.json")
    for bad in ({"emoji_type": 5}, {"emoji_type": ""}, {}, ["THUMBSUP"]):
        reaction["event"]["reaction_type"] = bad
        with pytest.raises(InvalidMessage, match="^event.reaction_type.emoji_type must be a string"):
            normalize(reaction)
    reaction["event"]["reaction_type"] = "THUMBSUP"  # the type as a bare string: Feishu's word, kept
    assert normalize(reaction).emoji == "THUMBSUP"
    updated = sample("v2_message_updated.json")
    del updated["header"]["event_id"]
    with pytest.raises(InvalidMessage, match="^missing header.event_id$"):
        normalize(updated)
    # A recall of a message nobody has seen, with no chat: kept, it is still a fact about that message.
    orphan = sample("v2_message_recalled.json")
    del orphan["event"]["chat_id"]
    orphan["event"]["message_id"] = "om_never_seen"
    event = normalize(orphan)
    assert (event.kind, event.message_id, event.chat_id) == ("recalled", "om_never_seen", None)
    # Without its own time, an event takes the envelope's.
    late = sample("v2_reaction_deleted.json")
    del late["event"]["action_time"]
    assert normalize(late).happened_at == 1796006442258


def test_a_backfill_states_the_same_facts_as_the_webhook():
    """backfill feishu reads `deleted` and `updated` flags: they become the same facts (one history
    row each in the archive), with event ids of their own that a second backfill derives again."""
    edited = normalize(sample("v2_message_updated.json"))
    item = {"message_id": MESSAGE, "msg_type": "text", "create_time": "1796006382258",
            "update_time": "1796006482101", "updated": True, "deleted": False,
            "chat_id": "oc_5ce6d572455d361153b7xx51da133945",
            "sender": {"id": "ou_84aad35d084aa403a838cf73ee18467", "id_type": "open_id", "sender_type": "user"},
            "body": {"content": '{"text":"@_user_1 hello, fixed typo"}'},
            "mentions": [{"key": "@_user_1", "id": "ou_84aad35d084aa403a838cf73ee18467", "id_type": "open_id",
                          "name": "Tom"}]}
    message = normalize(item)
    (derived,) = from_history(message, item)
    assert (derived.kind, derived.fact, derived.text, derived.source) == ("edited", edited.fact, edited.text,
                                                                          "feishu.history")
    assert derived.event_id == f"history:{MESSAGE}:edited:1796006482101"
    assert from_history(message, copy.deepcopy(item)) == [derived]  # derived again, the same
    recalled = dict(item, deleted=True, updated=False, update_time="1796006582101")
    (recall,) = from_history(normalize(recalled), recalled)
    assert (recall.kind, recall.fact, recall.happened_at) == ("recalled", "recalled", 1796006582101)
    assert from_history(normalize(dict(item, updated=False)), dict(item, updated=False)) == []
