"""message.py: every accepted shape -> Message, everything else -> InvalidMessage (and nothing stored).

The samples are the Feishu / OpenClaw payloads copied into tests/samples/.
"""

import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay import message
from outbox_relay.errors import InvalidMessage, NotAMessage
from outbox_relay.message import (
    MAX_MESSAGE_BYTES,
    Message,
    extract_text,
    normalize,
    parse_payload,
    parse_timestamp,
)
from outbox_relay.message.text import strip_at_tags
from outbox_relay.outbox import Outbox

from factories import EVENT_SAMPLES, SAMPLES, assert_normalizes_to, sample, sample_bytes


def v2_event(message_fields=None, *, sender=None, header=None):
    """A minimal Feishu v2 im.message.receive_v1 event; message fields override the defaults."""
    msg = {"message_id": "om_x", "chat_id": "oc_x", "chat_type": "group", "message_type": "text",
           "create_time": "1700000000000", "content": json.dumps({"text": "hi"})}
    msg.update(message_fields or {})
    return {
        "schema": "2.0",
        "header": {"event_id": "e1", "event_type": "im.message.receive_v1",
                   "create_time": "1700000000001", **(header or {})},
        "event": {"sender": sender if sender is not None else
                  {"sender_id": {"open_id": "ou_x"}, "sender_type": "user"},
                  "message": msg},
    }


# -- the samples -------------------------------------------------------------------------

EXPECTED = {
    "v2_text.json": dict(
        message_id="om_5ce6d572455d361153b7cb51da133945", source="feishu.v2",
        chat_id="oc_5ce6d572455d361153b7xx51da133945", chat_type="group",
        thread_id="omt_d4be107c616", root_id="om_5ce6d572455d361153b7cb5xxfsdfsdfdsf",
        parent_id="om_5ce6d572455d361153b7cb5xxfsdfsdfdsf",
        sender_id="ou_84aad35d084aa403a838cf73ee18467", sender_type="user", msg_type="text",
        content={"text": "@_user_1 hello"}, text="@Tom hello", created_at=1609073151345),
    "v2_post.json": dict(
        message_id="om_post_0001", source="feishu.v2", chat_id="oc_group_1", chat_type="group",
        thread_id=None, root_id=None, parent_id=None, sender_id="ou_aaa", sender_type="user",
        msg_type="post", text="周报\n第一行 超链接@Tom\n[image]\n[SMILE]\nfunc main() {}",
        mentions=[], created_at=1700000000100),
    "v2_image.json": dict(
        message_id="om_image_0001", source="feishu.v2", chat_id="oc_p2p_1", chat_type="p2p",
        thread_id=None, root_id=None, parent_id=None, sender_id="ou_bbb", sender_type="user",
        msg_type="image", content={"image_key": "img_4adb3cc3-8e0d-4a6a-a0a5-0f0d0b1a2c3d"},
        text="[image]", mentions=[], created_at=1700000000900),
    "v1_text.json": dict(
        message_id="om_36686ee62209da697d8775375d0c8e88", source="feishu.v1",
        chat_id="oc_5ce6d572455d361153b7cb51da133945", chat_type="p2p",  # "private" in v1
        thread_id=None, root_id=None, parent_id=None,  # "" in the payload means absent
        sender_id="ou_18eac85d35a26f989317ad4f02e8bbbb", sender_type="user", msg_type="text",
        text="@小助手 消息内容", mentions=[],
        created_at=1550038209428),  # ts "1550038209.428520" is epoch seconds with µs
    "openclaw_message_received.json": dict(
        message_id="om_openclaw_0001", source="openclaw",
        chat_id="oc_5ce6d572455d361153b7xx51da133945", chat_type="group", thread_id=None,
        sender_id="ou_84aad35d084aa403a838cf73ee18467", sender_type="user", msg_type="text",
        content={"text": "明天的会议改到下午三点"}, text="明天的会议改到下午三点", mentions=[],
        created_at=1771318500000),  # context.timestamp wins over the ISO top-level one
    # OpenClaw's Feishu channel as it really fills the event (../shared/openclaw/): the chat from
    # conversationId's prefix; a direct chat has no oc_ id in the event, so chat_id is the ou_ peer.
    "hook_group.json": dict(
        message_id="om_x100b55b3d2e0a8c4b2f6e1d0c9a8b7f6", source="openclaw",
        chat_id="oc_5ce6d572455d361153b7cb51da133945", chat_type="group", thread_id=None,
        sender_id="ou_84aad35d084aa403a838cf73ee18467", sender_type="user", msg_type="text",
        text="明天的会议改到下午三点 @_user_1", mentions=[], created_at=1796006382258),
    "hook_direct.json": dict(
        message_id="om_x100b55b3d2e0a8c4b2f6e1d0c9a8c001", source="openclaw",
        chat_id="ou_0e01c2d3e4f5a6b7c8d9e0f1a2b3c4d5", chat_type="p2p", thread_id=None,
        sender_id="ou_0e01c2d3e4f5a6b7c8d9e0f1a2b3c4d5", sender_type="user", msg_type="text",
        content={"text": "在干嘛呢？"}, text="在干嘛呢？", mentions=[], created_at=1796031790004),
    "flat_message.json": dict(
        message_id="om_flat_0001", source="api", chat_id="oc_group_1", chat_type=None,
        sender_id="ou_aaa", msg_type="text", content={"text": "测试消息"}, text="测试消息",
        mentions=[], created_at=1700000002000),
}


def test_every_sample_is_covered():
    """Every sample is read by a test: the messages here, the events in test_events.py."""
    assert {p.name for p in SAMPLES.glob("*.json")} == set(EXPECTED) | set(EVENT_SAMPLES) | {"url_verification.json"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_normalizes_to_expected_fields(name):
    m, payload = assert_normalizes_to(name, Message, EXPECTED[name])
    assert m.raw == payload
    # The same bytes off the wire give the same Message.
    assert normalize(sample_bytes(name)) == m
    # And a Message survives its JSON form (the outbox stores it that way).
    assert Message.from_json(m.to_json()) == m


def test_v2_text_mentions_are_kept():
    m = normalize(sample("v2_text.json"))
    assert [x["key"] for x in m.mentions] == ["@_user_1"]
    assert m.mentions[0]["name"] == "Tom"
    assert m.mentions[0]["id"]["open_id"] == "ou_84aad35d084aa403a838cf73ee18467"


def test_v2_post_content_is_decoded_from_its_json_string():
    m = normalize(sample("v2_post.json"))
    assert m.content["title"] == "周报"
    assert m.content["content"][0][1] == {"tag": "a", "href": "http://www.feishu.cn", "text": "超链接"}


def test_url_verification_is_not_a_message():
    with pytest.raises(NotAMessage) as exc:
        normalize(sample("url_verification.json"))
    assert exc.value.event_type == "url_verification"
    assert isinstance(exc.value, InvalidMessage)


def test_non_message_v2_event_is_not_a_message():
    payload = v2_event()
    payload["header"]["event_type"] = "im.chat.member.bot.added_v1"
    payload["event"] = {"chat_id": "oc_x", "operator_id": {"open_id": "ou_x"}}
    with pytest.raises(NotAMessage) as exc:
        normalize(payload)
    assert exc.value.event_type == "im.chat.member.bot.added_v1"
    assert "im.chat.member.bot.added_v1" in str(exc.value)
    assert isinstance(exc.value, InvalidMessage)


def test_non_message_v1_event_and_openclaw_action_are_not_messages():
    with pytest.raises(NotAMessage, match="p2p_chat_create"):
        normalize({"type": "event_callback", "event": {"type": "p2p_chat_create"}})
    with pytest.raises(NotAMessage, match="message:sent"):
        normalize({"type": "message", "action": "sent", "context": {"messageId": "x"}})


def _hook_event(conversation, origin="feishu:ou_sender", **meta):
    return {"type": "message", "action": "received",
            "context": {"messageId": "om_h", "content": "hi", "conversationId": conversation,
                        "from": origin, "timestamp": 1796006382258, "metadata": meta}}


@pytest.mark.parametrize("conversation, origin, meta, expected", [
    # the Feishu channel: the prefix says group or direct
    ("chat:oc_g", "feishu:ou_s", {"senderId": "ou_meta"}, ("oc_g", "group", "ou_meta")),
    ("user:ou_peer", "feishu:ou_peer", {}, ("ou_peer", "p2p", "ou_peer")),  # sender from `from`
    # the older guessed shape still reads as before
    ("feishu:oc_old", "feishu:group:oc_old", {}, ("oc_old", "group", None)),
    # other channels and odd values: the part after the first colon, no chat_type guessed
    ("telegram:12345", "telegram:777", {}, ("12345", None, "777")),
    ("user:", "x", {}, (None, None, None)),
    ("chat", "", {}, ("chat", None, None)),
])
def test_openclaw_conversation_prefixes(conversation, origin, meta, expected):
    m = normalize(_hook_event(conversation, origin, **meta))
    assert (m.chat_id, m.chat_type, m.sender_id) == expected


def test_openclaw_direct_and_group_agree_with_feishu_on_chat_type_names():
    # Feishu's webhook says p2p / group: a hook row and a webhook row of one chat read alike.
    assert normalize(sample("hook_direct.json")).chat_type == normalize(sample("v2_image.json")).chat_type
    assert normalize(sample("hook_group.json")).chat_type == normalize(sample("v2_text.json")).chat_type


# -- text: Chinese, emoji, post rich text ----------------------------------------------------

EMOJI = "🎉👍🏽 好的 👨‍👩‍👧 ❤️"


def test_emoji_and_chinese_in_v2_text():
    m = normalize(v2_event({"content": json.dumps({"text": EMOJI})}))
    assert m.text == EMOJI
    # The escaped form on the wire (ensure_ascii, surrogate pairs) decodes to the same text.
    wire = json.dumps(v2_event({"content": json.dumps({"text": EMOJI})}), ensure_ascii=True)
    assert "\\ud83c" in wire
    assert normalize(wire.encode("ascii")).text == EMOJI


def test_emoji_in_flat_openclaw_and_v1():
    assert normalize({"message_id": "m1", "chat_id": "oc_1", "text": "你好 " + EMOJI}).text == "你好 " + EMOJI
    oc = sample("openclaw_message_received.json")
    oc["context"]["content"] = "会议 🗓️ 三点"
    assert normalize(oc).text == "会议 🗓️ 三点"
    v1 = sample("v1_text.json")
    v1["event"]["text"] = '<at open_id="ou_1">@机器人</at> 🚀 发布了'
    assert normalize(v1).text == "@机器人 🚀 发布了"


POST_BODY = {"title": "发布 🚀", "content": [
    [{"tag": "text", "text": "版本 1.2 "}, {"tag": "a", "href": "https://x", "text": "说明"}],
    [{"tag": "at", "user_id": "ou_1", "user_name": "小明"}, {"tag": "text", "text": " 请看 😀"}],
    [{"tag": "img", "image_key": "img_1"}],
    [{"tag": "media", "file_key": "f_1"}],
    [{"tag": "emotion", "emoji_type": "THUMBSUP"}],
    [{"tag": "hr"}],
]}
POST_TEXT = "发布 🚀\n版本 1.2 说明\n@小明 请看 😀\n[image]\n[video]\n[THUMBSUP]"


def test_post_without_locale_wrapper():
    m = normalize(v2_event({"message_type": "post", "content": json.dumps(POST_BODY)}))
    assert m.msg_type == "post"
    assert m.text == POST_TEXT


def test_post_with_zh_cn_locale_wrapper():
    content = {"zh_cn": POST_BODY}
    m = normalize(v2_event({"message_type": "post", "content": json.dumps(content, ensure_ascii=False)}))
    assert m.text == POST_TEXT
    assert m.content == content


def test_post_locale_wrapper_prefers_zh_cn_then_other_locales():
    en = {"title": "Release", "content": [[{"tag": "text", "text": "version 1.2"}]]}
    assert extract_text("post", {"en_us": en, "zh_cn": POST_BODY}) == POST_TEXT
    assert extract_text("post", {"en_us": en}) == "Release\nversion 1.2"
    assert extract_text("post", {"xx_yy": en}) == "Release\nversion 1.2"


def test_post_in_flat_dict_with_content_as_object():
    m = normalize({"message_id": "m1", "chat_id": "oc_1", "msg_type": "post", "content": {"zh_cn": POST_BODY}})
    assert m.text == POST_TEXT


@pytest.mark.parametrize("msg_type,content,text", [
    ("image", {"image_key": "img_1"}, "[image]"),
    ("file", {"file_key": "f", "file_name": "报告.pdf"}, "[file] 报告.pdf"),
    ("audio", {"file_key": "f"}, "[audio]"),
    ("media", {"file_key": "f"}, "[video]"),
    ("sticker", {"file_key": "f"}, "[sticker]"),
    ("interactive", {}, "[card]"),
    ("something_new", {}, "[something_new]"),
])
def test_media_gets_a_placeholder(msg_type, content, text):
    m = normalize(v2_event({"message_type": msg_type, "content": json.dumps(content)}))
    assert m.text == text
    assert m.content == content


def test_text_mentions_are_replaced_by_names():
    m = normalize(v2_event({"content": json.dumps({"text": "@_user_1 @_user_2 看一下"}),
                            "mentions": [{"key": "@_user_1", "name": "小明"},
                                         {"key": "@_user_2", "name": "Ann"}]}))
    assert m.text == "@小明 @Ann 看一下"


def test_hostile_mentions_do_not_multiply_the_text():
    # Regression: an empty (or one-letter) key with a long name used to turn a small payload into
    # gigabytes of text (str.replace inserts the name between every character).
    body = "a" * 3000
    for key in ("", "a"):
        m = normalize(v2_event({"content": json.dumps({"text": body}),
                                "mentions": [{"key": key, "name": "b" * 3000}]}))
        assert len(m.text) <= MAX_MESSAGE_BYTES


# -- timestamps ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,ms", [
    ("1700000000123", 1700000000123),          # Feishu: a string of epoch ms
    (1700000000123, 1700000000123),
    ("1700000000123456", 1700000000123),       # 16 digits: µs, still parses
    (1700000000123456, 1700000000123),
    ("1700000000123456789", 1700000000123),    # 19 digits: ns
    ("1700000000", 1700000000000),             # 10 digits: seconds
    ("1550038209.428520", 1550038209428),      # v1 `ts`
    (1700000000.5, 1700000000500),
    (" 1700000000123 ", 1700000000123),
    ("2026-02-17T08:55:00.000Z", 1771318500000),
    ("2026-02-17T16:55:00+08:00", 1771318500000),
])
def test_parse_timestamp(value, ms):
    assert parse_timestamp(value, "create_time") == ms


def test_16_digit_create_time_in_a_v2_event():
    assert normalize(v2_event({"create_time": "1700000000123456"})).created_at == 1700000000123


def test_header_create_time_is_the_fallback():
    payload = v2_event()
    del payload["event"]["message"]["create_time"]
    assert normalize(payload).created_at == 1700000000001


@pytest.mark.parametrize("value,words", [
    ("yesterday", "not a timestamp"),
    (-5, "not a valid timestamp"),
    ("1" * 25, "out of range"),
    ("2" * 20, "out of range"),
    (10 ** 30, "out of range"),
    (True, "boolean"),
    ([1], "not an array"),
    ({}, "not an object"),
])
def test_bad_timestamps(value, words):
    with pytest.raises(InvalidMessage, match=re.escape(words)):
        parse_timestamp(value, "create_time")


# -- bad inputs: InvalidMessage with a useful message, and nothing stored ----------------------

def _nested(levels):
    root = {"message_id": "m_deep"}
    node = root
    for _ in range(levels):
        node["x"] = {}
        node = node["x"]
    return root


def _v2_with(**fields):
    return v2_event(fields)


BAD = [
    # (id, payload, words the error must contain)
    ("not-json", "{this is not json", "not valid JSON"),
    ("not-json-bytes", b"\x00\x01garbage", "not valid JSON"),
    ("truncated-json", '{"message_id": "m1", "text": "hi', "not valid JSON"),
    ("empty", "", "empty"),
    ("whitespace", "  \n ", "empty"),
    ("array-text", '[{"message_id": "m1"}]', "must be a JSON object, not an array"),
    ("array", [{"message_id": "m1"}], "must be a JSON object, not an array"),
    ("string-text", '"om_1"', "must be a JSON object, not a string"),
    ("number-text", "42", "must be a JSON object, not a number"),
    ("number", 42, "must be a JSON object, not a number"),
    ("null", None, "must be a JSON object, not null"),
    ("missing-message_id-flat", {"chat_id": "oc_1", "text": "hi"}, "no message_id"),
    ("blank-message_id-flat", {"message_id": "", "text": "hi"}, "missing message_id"),
    ("spaces-message_id-flat", {"message_id": "   ", "text": "hi"}, "missing message_id"),
    ("missing-message_id-v2", _v2_with(message_id=None), "missing event.message.message_id"),
    ("spaces-message_id-v2", _v2_with(message_id="  "), "missing event.message.message_id"),
    ("missing-message_id-v1", {"type": "event_callback", "event": {"type": "message", "text": "x"}},
     "missing event.open_message_id"),
    ("missing-message_id-openclaw", {"type": "message", "action": "received", "context": {"content": "x"}},
     "missing context.messageId"),
    ("content-not-json-flat", {"message_id": "m1", "content": "{text: hi}"}, "content is not valid JSON"),
    ("content-not-json-v2", _v2_with(content="{'text': 'hi'}"), "event.message.content is not valid JSON"),
    ("content-json-array", _v2_with(content="[1, 2]"), "content must encode a JSON object, not an array"),
    ("message_id-object", {"message_id": {"id": "m1"}}, "message_id must be a string, not an object"),
    ("message_id-array", {"message_id": ["m1"]}, "message_id must be a string, not an array"),
    ("message_id-bool", {"message_id": True}, "message_id must be a string, not a boolean"),
    ("message_id-float", {"message_id": 1.5}, "message_id must be a string, not a number"),
    ("message_id-v2-object", _v2_with(message_id={"a": 1}), "event.message.message_id must be a string"),
    ("message_id-too-long", {"message_id": "m" * 500}, "message_id is longer than 128"),
    ("content-number", {"message_id": "m1", "content": 5},
     "content must be a JSON-encoded string, not a number"),
    ("content-number-v2", _v2_with(content=5), "event.message.content must be a JSON-encoded string"),
    ("mentions-string", {"message_id": "m1", "mentions": "@all"}, "mentions must be an array, not a string"),
    ("mentions-string-v2", _v2_with(mentions="@all"), "event.message.mentions must be an array"),
    ("chat_id-array", {"message_id": "m1", "chat_id": ["oc"]}, "chat_id must be a string, not an array"),
    ("msg_type-number", {"message_id": "m1", "msg_type": 1}, "msg_type must be a string, not a number"),
    ("text-number", {"message_id": "m1", "text": 1}, "text must be a string, not a number"),
    ("create_time-object", {"message_id": "m1", "create_time": {}}, "create_time must be an epoch"),
    ("create_time-garbage", {"message_id": "m1", "create_time": "soon"}, "create_time is not a timestamp"),
    ("header-string", {"schema": "2.0", "header": "x", "event": {}}, "header must be an object"),
    ("event-missing-v2", {"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}},
     "missing event"),
    ("sender-string", v2_event(sender="ou_x"), "event.sender must be an object, not a string"),
    ("v1-event-string", {"type": "event_callback", "event": "x"}, "event must be an object"),
    ("openclaw-context-list", {"type": "message", "action": "received", "context": []},
     "context must be an object, not an array"),
    ("unknown-event-type", {"type": "card.action.trigger", "token": "x"},
     "unsupported event type 'card.action.trigger'"),
    ("unrecognised", {"hello": "world"}, "unrecognised payload"),
    ("encrypted", {"encrypt": "FIQ0hLkM+..."}, "must be decrypted first"),
    ("nested-100-dict", _nested(100), "nested too deeply"),
    ("nested-100-text", json.dumps(_nested(100)), "nested too deeply"),
    ("nested-100-arrays", '{"message_id": "m1", "x": ' + "[" * 100 + "]" * 100 + "}", "nested too deeply"),
    ("nested-100000-text", '{"message_id": "m1", "x": ' + "[" * 100000 + "]" * 100000 + "}",
     "nested too deeply"),
    ("nested-100-in-content", _v2_with(content=json.dumps({"text": "x", "deep": _nested(100)})),
     "event.message.content is nested too deeply"),
    ("10MB-string-text", json.dumps({"message_id": "m1", "text": "x" * 10_000_000}), "too large"),
    ("10MB-string-bytes", json.dumps({"message_id": "m1", "text": "x" * 10_000_000}).encode(), "too large"),
    ("10MB-string-dict", {"message_id": "m1", "text": "x" * 10_000_000}, "too large"),
    ("10MB-content", _v2_with(content=json.dumps({"text": "字" * 4_000_000}, ensure_ascii=False)),
     "too large"),
    ("NaN-text", '{"message_id": "m1", "score": NaN}', "NaN is not valid JSON"),
    ("Infinity-text", '{"message_id": "m1", "score": -Infinity}', "-Infinity is not valid JSON"),
    ("NaN-dict", {"message_id": "m1", "score": float("nan")}, "non-finite number"),
    ("NaN-create_time", {"message_id": "m1", "create_time": float("nan")}, "non-finite number"),
    ("NaN-in-content", _v2_with(content='{"text": "x", "n": NaN}'), "NaN is not valid JSON"),
    ("lone-surrogate-escaped", '{"message_id": "m1", "text": "\\ud800"}', "lone surrogate"),
    ("lone-surrogate-str", {"message_id": "m1", "text": "bad \udc80"}, "lone surrogate"),
    ("lone-surrogate-in-content", _v2_with(content='{"text": "\\udfff"}'), "lone surrogate"),
    ("invalid-utf8", b'{"message_id": "m1", "text": "\xff\xfe"}', "not valid UTF-8"),
    ("overlong-utf8", b'{"message_id": "m1", "text": "\xc0\xaf"}', "not valid UTF-8"),
    ("utf8-surrogate-bytes", b'{"message_id": "m1", "text": "\xed\xa0\x80"}', "not valid UTF-8"),
    ("huge-integer", '{"message_id": "m1", "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ("non-string-key", {"message_id": "m1", 1: "x"}, "non-string key"),
    ("not-json-value", {"message_id": "m1", "when": object()}, "which is not JSON"),
    ("bytes-value", {"message_id": "m1", "text": b"hi"}, "which is not JSON"),
]


@pytest.mark.parametrize("payload,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_invalid_message_and_stores_nothing(payload, words, tmp_outbox):
    with pytest.raises(InvalidMessage) as exc:
        normalize(payload)
    assert words in str(exc.value)
    assert len(str(exc.value)) < 300  # a sentence, not a dump of the payload
    with Outbox(tmp_outbox) as outbox:
        with pytest.raises(InvalidMessage):
            outbox.put(payload)
        # In a batch with good messages, too: all or nothing.
        with pytest.raises(InvalidMessage, match="^item 1: "):
            outbox.put_many([{"message_id": "good_1", "chat_id": "oc_1"}, payload,
                             {"message_id": "good_2", "chat_id": "oc_1"}])
        assert outbox.counts() == {"pending": 0, "delivered": 0, "parked": 0, "dead": 0}
        assert outbox.get("good_1") is None


def test_nothing_stored_for_not_a_message(tmp_outbox):
    with Outbox(tmp_outbox) as outbox:
        with pytest.raises(NotAMessage):
            outbox.put(sample("url_verification.json"))
        assert sum(outbox.counts().values()) == 0


def test_parse_payload_limits():
    assert parse_payload(b'{"a": 1}') == {"a": 1}
    assert parse_payload(bytearray(b'{"a": 1}')) == {"a": 1}
    assert parse_payload(memoryview(b'{"a": 1}')) == {"a": 1}
    with pytest.raises(InvalidMessage, match="must be JSON text, not int"):
        parse_payload(5)
    just_fits = b'{"x": "' + b"a" * (MAX_MESSAGE_BYTES - 9) + b'"}'
    assert len(just_fits) == MAX_MESSAGE_BYTES
    assert parse_payload(just_fits)["x"].startswith("aaa")
    with pytest.raises(InvalidMessage, match="payload too large: 1048577 bytes"):
        parse_payload(just_fits + b" ")


def test_message_ids_that_are_numbers_become_strings():
    assert normalize({"message_id": 12345, "chat_id": 678}).message_id == "12345"


# -- v1 <at> tags: same result as the old regex, in linear time ---------------------------------

_OLD_AT_TAG = re.compile(r"<at\b[^>]*>(.*?)</at>", re.S)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<at", "<at>", "</at>", ">", "<", "at", " ", "x", "t", "/", "\n",
                                 '<at open_id="ou_1">', "@小明", "<atx>", "é", "_"]), max_size=30)
       .map("".join))
def test_strip_at_tags_matches_the_regex(text):
    assert strip_at_tags(text) == _OLD_AT_TAG.sub(r"\1", text)


@pytest.mark.parametrize("junk", ["<at>", "<at ", "<at x>y</a"])
def test_v1_at_tag_stripping_is_not_quadratic(junk):
    # ~1 MB of unclosed tags; the regex this replaced needed minutes for it.
    text = junk * (MAX_MESSAGE_BYTES // len(junk) - 100)
    payload = {"type": "event_callback",
               "event": {"type": "message", "open_message_id": "om_1", "text": text}}
    assert normalize(payload).text == text


# -- property-based: arbitrary JSON -> Message or InvalidMessage, never anything else ------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.one_of(*[st.text(max_size=20)] * 6, st.text(st.one_of(st.characters(), surrogates), max_size=8))
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(), any_text)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(any_text, children, max_size=5)),
    max_leaves=25)


def maybe(good):
    """Mostly the right kind of value, sometimes anything at all (one_of picks branches evenly)."""
    return st.one_of(*[good] * 12, json_values)


def opt_dict(required, optional):
    return st.fixed_dictionaries({k: maybe(v) for k, v in required.items()},
                                 optional={k: maybe(v) for k, v in optional.items()})


ids = st.one_of(*[st.from_regex(r"\Ao[mcu]_[0-9a-z]{1,12}\Z")] * 6, st.text(min_size=1, max_size=20),
                st.integers(min_value=0), st.just(""), st.just(" "), st.text(min_size=120, max_size=140))
timestamps = st.one_of(*[st.integers(1_000_000_000_000, 2_000_000_000_000).map(str)] * 4,
                       st.integers(), st.floats(), st.from_regex(r"\A\d{1,20}(\.\d{1,10})?\Z"),
                       st.text(max_size=30), st.just("2026-02-17T08:55:00Z"))
run_tags = st.sampled_from(["text", "a", "at", "img", "media", "emotion", "code_block", "x"])
text_run = opt_dict({"tag": run_tags},
                    {"text": any_text, "user_name": any_text, "user_id": any_text, "emoji_type": any_text})
post_body = opt_dict({"content": st.lists(st.one_of(st.lists(text_run, max_size=3), text_run), max_size=3)},
                     {"title": any_text})
contents = st.one_of(
    opt_dict({"text": any_text}, {}),
    post_body,
    st.dictionaries(st.sampled_from(["zh_cn", "en_us", "ja_jp", "other"]), post_body, max_size=2),
    opt_dict({}, {"image_key": any_text, "file_key": any_text, "file_name": any_text}),
)
content_strings = st.one_of(contents.map(json.dumps), contents, any_text)
msg_types = st.sampled_from(["text", "post", "image", "file", "audio", "media", "interactive", "weird"])
mentions = st.lists(opt_dict({"key": any_text, "name": any_text}, {"id": json_values}), max_size=3)

v2_shape = opt_dict(
    {"schema": st.just("2.0"),
     "header": opt_dict({"event_type": st.sampled_from(["im.message.receive_v1",
                                                         "im.chat.member.bot.added_v1"])},
                        {"create_time": timestamps, "event_id": any_text}),
     "event": opt_dict(
         {"message": opt_dict({"message_id": ids},
                              {"chat_id": ids, "chat_type": any_text, "thread_id": ids, "root_id": ids,
                               "parent_id": ids, "message_type": msg_types, "content": content_strings,
                               "mentions": mentions, "create_time": timestamps})},
         {"sender": opt_dict({"sender_id": opt_dict({}, {"open_id": ids, "user_id": ids, "union_id": ids})},
                             {"sender_type": any_text})})},
    {})
v1_shape = opt_dict(
    {"type": st.just("event_callback"),
     "event": opt_dict({"type": st.just("message"), "open_message_id": ids},
                       {"msg_type": msg_types,
                        "text": st.one_of(any_text, st.just('<at open_id="x">@a</at> b')),
                        "open_chat_id": ids, "chat_type": st.sampled_from(["private", "group"]),
                        "open_id": ids, "root_id": ids, "parent_id": ids, "image_key": any_text})},
    {"ts": timestamps, "uuid": any_text})
openclaw_shape = opt_dict(
    {"type": st.just("message"), "action": st.just("received"),
     "context": opt_dict({"messageId": ids},
                         {"content": any_text,
                          "from": st.sampled_from(["feishu:group:oc_1", "feishu:oc_1", "feishu:ou_1", "x"]),
                          "conversationId": st.sampled_from(["feishu:oc_1", "oc_1", "", "chat:oc_1",
                                                             "user:ou_1", "user:", "chat"]),
                          "timestamp": timestamps,
                          "metadata": opt_dict({}, {"senderId": ids, "threadId": ids})})},
    {"timestamp": timestamps})
flat_shape = opt_dict(
    {"message_id": ids},
    {"chat_id": ids, "sender_id": ids, "msg_type": msg_types, "message_type": msg_types,
     "content": content_strings, "text": any_text, "mentions": mentions, "create_time": timestamps,
     "created_at": timestamps, "chat_type": any_text, "thread_id": ids})

open_api_shape = opt_dict(
    {"message_id": ids, "body": opt_dict({}, {"content": content_strings})},
    {"chat_id": ids, "msg_type": msg_types, "create_time": timestamps, "deleted": st.booleans(),
     "updated": st.booleans(), "thread_id": ids, "root_id": ids, "parent_id": ids,
     "sender": opt_dict({}, {"id": ids, "id_type": st.sampled_from(["open_id", "app_id"]),
                             "sender_type": any_text}),
     "mentions": st.lists(opt_dict({"key": any_text, "name": any_text},
                                   {"id": ids, "id_type": any_text}), max_size=3)})


def _check(payload):
    try:
        result = normalize(payload)
    except InvalidMessage as e:
        assert str(e)
        return None
    assert isinstance(result, Message)
    assert isinstance(result.message_id, str) and result.message_id.strip()
    assert isinstance(result.text, str)
    assert result.created_at is None or isinstance(result.created_at, int)
    Message.from_json(result.to_json())  # storable as JSON
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_values(value):
    _check(value)
    try:
        text = json.dumps(value)
    except (ValueError, UnicodeEncodeError):
        return
    _check(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(v2_shape, v1_shape, openclaw_shape, flat_shape, open_api_shape))
def test_input_shapes_with_random_leaves(payload):
    before = copy.deepcopy(payload)
    _check(payload)
    assert payload == before  # normalize never changes its input
    try:
        wire = json.dumps(payload).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return
    _check(wire)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))))
def test_parse_payload_on_arbitrary_bytes(data):
    try:
        value = parse_payload(data)
    except InvalidMessage:
        return
    assert isinstance(value, dict)


@settings(max_examples=200, deadline=None)
@given(st.one_of(timestamps, json_values))
def test_parse_timestamp_never_raises_anything_else(value):
    try:
        result = parse_timestamp(value, "create_time")
    except InvalidMessage:
        return
    assert isinstance(result, int)


# -- the Open API's message item (backfill feishu) ----------------------------------------------------

def open_api_page():
    return sample("openapi/api_list_messages.json")


def test_open_api_items_normalize_like_the_event():
    text, post, recalled = open_api_page()["data"]["items"]
    m = normalize(text)
    assert (m.source, m.message_id, m.chat_id, m.chat_type, m.sender_id, m.sender_type, m.msg_type) == (
        "feishu.history", "om_dc13264520392913993dd051dba21dcf", "oc_5ce6d572455d361153b7cb51da133945", None,
        "ou_84aad35d084aa403a838cf73ee18467", "user", "text")
    assert m.content == {"text": "@_user_1 明天的会议改到下午三点"}
    assert m.text == "@Tom 明天的会议改到下午三点"
    assert m.created_at == 1796006382219 and m.thread_id is None and m.root_id is None
    # The API's flat mention id becomes the event's {id_type: id}: one query finds both.
    assert m.mentions == [{"key": "@_user_1", "id": {"open_id": "ou_155184d1e73cbfb8973e5a9e698e74f2"},
                           "name": "Tom", "tenant_key": "736588c9260f175e"}]
    assert m.raw == text and Message.from_json(m.to_json()) == m
    p = normalize(post)
    assert (p.msg_type, p.text, p.sender_id, p.sender_type) == (
        "post", "周报\n本周进度：数据库迁移完成 ✅", "cli_9f5343c580712001", "app")
    assert p.root_id == p.parent_id == "om_dc13264520392913993dd051dba21dcf"


def test_a_recalled_item_keeps_the_fact_not_the_notice():
    recalled = open_api_page()["data"]["items"][2]
    m = normalize(recalled)
    assert (m.message_id, m.sender_id, m.created_at, m.msg_type) == (
        "om_dc13264520392913993dd051dba21dd1", "ou_84aad35d084aa403a838cf73ee18467", 1796006500000, "text")
    assert m.content == {} and m.text == message.RECALLED_TEXT and m.raw["deleted"] is True


def test_the_open_api_shape_comes_before_the_flat_dict():
    item = open_api_page()["data"]["items"][0]
    assert message.detect(item).source == "feishu.history"
    assert message.detect({"message_id": "om_1", "text": "hi"}).source == "api"
    assert "feishu.history" in message.SOURCES


@pytest.mark.parametrize("change,words", [
    ({"body": "not an object"}, "body must be an object"),
    ({"body": {"content": "not json"}}, "body.content is not valid JSON"),
    ({"sender": {"id": "x" * 200}}, "sender.id is longer than"),
    ({"message_id": ""}, "missing message_id"),
    ({"create_time": "yesterday"}, "create_time is not a timestamp"),
])
def test_bad_open_api_items_are_refused_clearly(change, words, tmp_outbox):
    item = {**open_api_page()["data"]["items"][0], **change}
    with pytest.raises(InvalidMessage, match=words):
        normalize(item)
    with Outbox(tmp_outbox) as outbox:
        with pytest.raises(InvalidMessage):
            outbox.put(item)
        assert outbox.counts()["pending"] == 0


def test_a_flat_dict_with_misspelt_keys_is_refused_naming_them():
    """Issue 24, item 15: {"chatId", "senderId", "txt"} used to be stored with chat, sender and text
    empty. A flat message names its chat, and a key it does not have is an error that names it."""
    with pytest.raises(InvalidMessage) as exc:
        normalize({"message_id": "om_1", "chatId": "oc_1", "senderId": "ou_1", "txt": "hello"})
    text = str(exc.value)
    assert text.startswith("unknown field(s) in a flat message: 'chatId' (did you mean chat_id?), 'senderId'"
                           " (did you mean sender_id?), 'txt' (did you mean text?)"), text
    with pytest.raises(InvalidMessage, match="^missing chat_id: a flat message names its chat$"):
        normalize({"message_id": "om_1", "sender_id": "ou_1", "text": "hello"})
    assert normalize({"message_id": "om_1", "chat_id": "oc_1", "text": "hello"}).chat_id == "oc_1"
