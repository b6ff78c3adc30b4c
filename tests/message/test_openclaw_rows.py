"""One message, one row (issue 23), on what the real gateway gave: per Feishu message type, the v2
event the webhook takes, the hook's spool file and the transcript line OpenClaw wrote for it, all
captured from openclaw@2026.9.6 + @openclaw/feishu@2026.9.5 (tests/samples/openclaw_gateway/), read
by the one normalizer. Each way's row must be the webhook's, or differ only as tests/wayin.py (and the
README's table) says. The same comparison on the rows the real gateway puts into PostgreSQL is
tests/intake/test_openclaw_gateway.py."""

import json

import pytest

from outbox_relay.message import normalize
from outbox_relay.message.openclaw_text import as_feishu, cut_media_notes, is_envelope, saved_file_name

import wayin
from factories import sample

BOT = "ou_b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"  # the stand-in bot of the capture
KINDS = ["text", "text_mention", "post", "post_locale", "image", "file", "audio", "media", "sticker",
         "interactive", "merge_forward", "reply", "p2p", "p2p_image", "group"]


def captured(kind):
    return (sample(f"openclaw_gateway/event_{kind}.json"), sample(f"openclaw_gateway/hook_{kind}.json"),
            sample(f"openclaw_gateway/transcript_{kind}.json"))


def transcript_payload(line, event):
    """What backfill openclaw hands the normalizer for this line: a group's session (its key names
    the chat), or for the direct chat the shared main session and the conversation the line links
    to, from the captured store."""
    store = sample("openclaw_gateway/store_direct.json")
    ref = line["message"]["__openclaw"]["transport"]["conversationRef"]
    conversations = {c["conversation_id"]: {"kind": c["kind"], "native_channel_id": c["native_channel_id"]}
                     for c in store["conversations"]}
    if ref in conversations:
        return {"openclaw_transcript": line, "conversation": conversations[ref],
                "session": {"key": "agent:main:main", "channel": "feishu", "chat_type": "direct"}}
    chat = event["event"]["message"]["chat_id"]
    return {"openclaw_transcript": line, "session": {"key": f"agent:main:feishu:group:{chat}", "channel": "feishu",
                                                     "chat_type": "group", "chat_id": chat}}


@pytest.mark.parametrize("kind", KINDS)
def test_hook_and_transcript_rows_are_the_webhooks_or_a_documented_difference(kind):
    event, hook, line = captured(kind)
    webhook = wayin.row_of(normalize(event))
    rows = {"hook": normalize(hook), "backfill openclaw": normalize(transcript_payload(line, event))}
    for way, message in rows.items():
        assert wayin.differences(kind, way, wayin.row_of(message), webhook, BOT) == [], (kind, way)


@pytest.mark.parametrize("kind", ["image", "file", "audio", "media", "p2p_image"])
def test_a_media_message_is_its_type_never_the_envelope_or_the_notes(kind):
    """The hook's content is OpenClaw's envelope line and the transcript's text its notes to the model
    (`[Image attachment not analyzed: …]`, a `<file …>` block with a local path, the `[Audio]` layout):
    the row has the webhook's type and placeholder, read from OpenClaw's media facts."""
    event, hook, line = captured(kind)
    webhook = normalize(event)
    for message in (normalize(hook), normalize(transcript_payload(line, event))):
        assert (message.msg_type, message.text) == (webhook.msg_type, webhook.text)
        for junk in ("[Feishu", "[message_id", "attachment", "<file", "Tom:", "Li Lei:", "/tmp/"):
            assert junk not in message.text and junk not in json.dumps(message.content, ensure_ascii=False)


def test_the_envelope_is_known_by_the_messages_own_id():
    hook = sample("openclaw_gateway/hook_image.json")["context"]
    assert is_envelope(hook["content"], hook["messageId"])
    assert not is_envelope(hook["content"], "om_another")
    # Words that look like an envelope but name no id of this message stay words.
    assert not is_envelope("[Feishu oc_x:ou_y Fri 2026-12-04 16:33:18 UTC] [message_id: om_z]\nTom: hi", "om_q")


def test_mentions_become_the_webhooks_words_and_the_bot_is_gone():
    hook = normalize(sample("openclaw_gateway/hook_text_mention.json"))
    assert hook.text == "@Li Lei 请看一下周报"
    assert hook.mentions == [{"id": {"open_id": "ou_55aa0c7e1b2d3f4a5b6c7d8e9f0a1b2c"}, "name": "Li Lei"}]


def test_the_file_name_is_read_back_as_openclaw_saved_it():
    assert saved_file_name("/s/media/inbound/季度报告---2e2392b3-3901-4e26-835a-e361881326f5.pdf") == "季度报告.pdf"
    staged = "/w/media/inbound/openclaw-staged-1/input-demo---6a09dd83-3305-40ca-b67c-bce13bde95bc.mp4"
    assert saved_file_name(staged) == "demo.mp4"
    assert saved_file_name("/s/media/inbound/38bcde4f-31d1-444a-94d6-46e26700470f") is None  # no name given
    assert as_feishu("", [{"kind": "document"}]) == {"msg_type": "file", "content": {}, "text": "[file]",
                                                     "mentions": []}


def test_media_notes_are_cut_in_every_layout_media_understanding_writes():
    body = "[message_id: om_1]\nTom: 看图"
    assert cut_media_notes(body + "\n\n[Image attachment not analyzed: no image-understanding model]") == body
    assert cut_media_notes(body + '\n\n<file name="a.pdf" mime="application/pdf">\ntext\n</file>') == body
    assert cut_media_notes(f"[Image]\nUser text:\n{body}\nDescription:\nA cat.") == body
    two = f"User text:\n{body}\n\n[Image 1/2]\nDescription:\nA\n\n[Image 2/2]\nDescription:\nB"
    assert cut_media_notes(two) == body
    assert cut_media_notes(body) == body


def test_a_transcribed_voice_note_is_audio_not_its_transcript():
    """commandFacingContent is Feishu's speech_to_text when it has one: the hook's content is then the
    transcript, and the media fact (kind audio, transcribed) still says what the message is."""
    assert as_feishu("明天见", [{"kind": "audio", "transcribed": True}])["msg_type"] == "audio"
    assert as_feishu("明天见", [{"kind": "audio", "transcribed": True}])["text"] == "[audio]"
