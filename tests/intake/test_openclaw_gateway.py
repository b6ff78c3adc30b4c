"""The real OpenClaw gateway (npm openclaw@2026.9.6 + @openclaw/feishu@2026.9.5) in Feishu webhook mode,
with our hook installed as a user installs it: one v2 event of every Feishu message type must fire the
hook exactly once, and the hook event and the transcript must hold what
tests/samples/openclaw_gateway/README.md says they hold.

The gateway starts once for the module (~35 s: `openclaw hooks enable`, then the gateway's own start-up;
the module takes ~75 s in all). On a fresh machine the session fixture openclaw_install first runs
scripts/ensure-openclaw.sh (about a minute, cached in .cache/openclaw/). Without npm or the registry the
tests skip locally and fail in CI.

OUTBOX_RELAY_TEST_CAPTURE=1 writes what was seen into tests/samples/openclaw_gateway/ (the committed
samples); otherwise test_capture writes into its temporary directory, so the capture code still runs.
"""

import json
import os
import pathlib
import ssl
import urllib.request
from dataclasses import dataclass, field

import pytest

import openclawgateway as og
from factories import FEISHU_BODY, FEISHU_KEY, FEISHU_NONCE, FEISHU_SIGNATURE, FEISHU_TIMESTAMP, sample
from serverproc import REPO, wait_until

SAMPLES = pathlib.Path(REPO) / "tests" / "samples" / "openclaw_gateway"
# Posting order; "reply" answers "text", so it comes later.
KINDS = ["text", "text_mention", "post", "post_locale", "image", "file", "audio", "media", "sticker",
         "interactive", "merge_forward", "reply", "p2p", "p2p_image", "group"]
MEDIA_KINDS = {"image": "image", "file": "document", "audio": "audio", "media": "video", "p2p_image": "image"}
DIRECT_KINDS = {"p2p", "p2p_image"}
POST_TEXT = ("周报\n\n**本周进度：**[报告](https://example.com/report)@Tom\n\n数据库迁移完成 SMILE\n"
             "```GO\nfunc main() {}\n```")
# What context.content holds for the types that have words (the media types get OpenClaw's envelope).
HOOK_TEXT = {
    "text": "明天的会议改到下午三点 ✅",
    # The bot's own mention (@_user_2) is removed; another user's becomes a tag.
    "text_mention": f'<at user_id="{og.LILEI}">Li Lei</at> 请看一下周报',
    "post": POST_TEXT,
    "post_locale": POST_TEXT,
    "sticker": '<sticker key="v3_sticker_0001"/>',
    "interactive": "部署通知\n**v2.3** 已上线\n查看",
    "merge_forward": "[Merged and Forwarded Messages]\n- 原来的第一条消息\n- [Image]\n- [File: 纪要.docx]",
    "reply": "收到，下午三点见",  # no quote of the parent here: that is only in the transcript
    "p2p": "你好，私聊消息",
    "group": "另一个群里的消息",
}


@dataclass
class Delivery:
    kind: str
    event: dict
    status: int
    body: str
    hooked: list = field(default_factory=list)  # spool items for this message_id
    processed: bool = False  # the gateway logged "message processed" for it

    @property
    def message(self):
        return self.event["event"]["message"]

    @property
    def message_id(self):
        return self.message["message_id"]


# -- the harness's own parts, without the gateway (milliseconds) ----------------------------------------


def test_post_event_signs_as_feishu_documents():
    assert og.signature(FEISHU_TIMESTAMP, FEISHU_NONCE, FEISHU_KEY, FEISHU_BODY) == FEISHU_SIGNATURE


def test_the_standin_lists_messages_in_the_open_api_shape(tmp_path):
    """GET im/v1/messages answers in api_list_messages.json's shape, paged, so a later backfill test
    can read the same messages back that were posted to the gateway."""
    events = [og.event_builders()[k]() for k in ("text", "image", "p2p")]
    with og.FeishuStandIn(tmp_path) as feishu:
        for event in events:
            for item in og.api_items(event):
                feishu.add_message(item)
        context = ssl.create_default_context(cafile=str(feishu.cert_path))

        def page(token=""):
            url = f"{feishu.url}/open-apis/im/v1/messages?container_id_type=chat&container_id={og.GROUP}&page_size=1"
            with urllib.request.urlopen(url + (f"&page_token={token}" if token else ""), context=context) as res:
                return json.load(res)

        first = page()
        second = page(first["data"]["page_token"])
    expected = sample("openapi/api_list_messages.json")
    assert set(first) == set(expected) and set(first["data"]) == set(expected["data"])
    assert set(first["data"]["items"][0]) == set(expected["data"]["items"][0])
    assert [i["message_id"] for i in first["data"]["items"] + second["data"]["items"]] == [
        e["event"]["message"]["message_id"] for e in events[:2]]  # the p2p one is another chat
    assert second["data"]["has_more"] is False


# -- the gateway ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(openclaw_install, tmp_path_factory):
    work = tmp_path_factory.mktemp("openclaw-gateway")
    spool = work / "spool"
    spool.mkdir()
    # One group with OpenClaw's default for allowlisted groups (requireMention), for the gate test.
    gated = {"channels": {"feishu": {"groups": {og.GATED_GROUP: {"requireMention": True}}}}}
    # A model, so that each turn completes as in a deployment (assistant lines, the reply sent back):
    # without one the run fails after the user line is written, which is a different transcript.
    with og.FeishuStandIn(work / "feishu") as feishu, og.ModelStandIn() as model:
        gw = og.Gateway(openclaw_install, feishu, work / "gateway", spool=spool, model=model, config=gated)
        try:
            gw.start()
        except RuntimeError as exc:  # installed but will not run: a finding, not a skip
            pytest.fail(f"the OpenClaw gateway did not start: {exc}", pytrace=False)
        try:
            yield gw
        finally:
            gw.stop()


def hooked(gw, message_id):
    return [item for item in og.spool_items(gw.spool) if item[2].get("context", {}).get("messageId") == message_id]


def deliver(gw, kind, event, expect_hook=True):
    """Post one event; wait for its hook call and for the end of its dispatch. The next message must
    not arrive during this one's agent turn, or OpenClaw may gather both into one transcript line."""
    for item in og.api_items(event):
        gw.feishu.add_message(item)  # a reply's parent, a merge_forward's parts, the list endpoint
    status, body = gw.post_event(event)
    d = Delivery(kind, event, status, body)
    if expect_hook:
        try:
            d.hooked = wait_until(lambda: hooked(gw, d.message_id), timeout=30, what=f"the hook for {kind}")
        except TimeoutError:
            pass  # reported by the test, beside every other type's outcome
        try:
            d.processed = wait_until(lambda: gw.logged("message processed:", f"messageId={d.message_id}"),
                                     timeout=60, what=f"the dispatch of {kind}")
        except TimeoutError:
            pass
    return d


@pytest.fixture(scope="module")
def delivered(gateway):
    builders = og.event_builders()
    out = {}
    for kind in KINDS:
        event = og.reply_event(out["text"].event) if kind == "reply" else builders[kind]()
        out[kind] = deliver(gateway, kind, event)
    return out


@pytest.mark.slow
def test_every_message_type_fires_the_hook_exactly_once(gateway, delivered):
    items = og.spool_items(gateway.spool)
    problems = []
    for kind, d in delivered.items():
        n = sum(1 for _name, _data, ev in items if ev.get("context", {}).get("messageId") == d.message_id)
        if d.status != 200 or n != 1:
            problems.append(f"{kind} ({d.message_id}): webhook answered {d.status} {d.body[:80]!r}, hook fired {n}x")
    strays = {ev.get("context", {}).get("messageId") for _n, _d, ev in items} - set(gateway.posted)
    assert not problems and not strays, (
        "the hook must fire exactly once per message:\n  " + "\n  ".join(problems)
        + (f"\n  spool files for messages never posted: {sorted(strays)}" if strays else "")
        + f"\n--- gateway log (tail) ---\n{gateway.log_tail(40)}")


@pytest.mark.slow
def test_the_hook_event_holds_what_the_readme_says(gateway, delivered):
    """The facts tests/samples/openclaw_gateway/README.md tabulates, per type."""
    for kind, d in delivered.items():
        assert d.hooked, f"{kind}: no hook call"
        event, m = d.hooked[0][2], d.message
        ctx, meta = event["context"], event["context"]["metadata"]
        sender = d.event["event"]["sender"]["sender_id"]["open_id"]
        where = f"{kind}: {json.dumps(ctx, ensure_ascii=False)[:600]}"
        assert ctx["messageId"] == m["message_id"], where
        assert ctx["from"] == f"feishu:{sender}" and meta["senderId"] == sender, where
        assert ctx["timestamp"] == int(m["create_time"]), where  # Feishu's create_time, not arrival
        if kind in DIRECT_KINDS:
            assert ctx["conversationId"] == f"user:{sender}" == meta["to"], where
            assert m["chat_id"] not in json.dumps(event), f"{kind}: the p2p chat id is in the hook event"
            assert event["sessionKey"] == "agent:main:main", where  # OpenClaw's default dmScope "main"
        else:
            assert ctx["conversationId"] == f"chat:{m['chat_id']}" == meta["to"], where
        assert "message_type" not in json.dumps(event) and "msg_type" not in json.dumps(event), where
        assert "parent_id" not in json.dumps(event) and "replyToId" not in json.dumps(event), where
        kinds = [x["kind"] for x in ctx.get("media", [])]
        if kind in MEDIA_KINDS:
            assert kinds == [MEDIA_KINDS[kind]], where
            # No words: the hook's content falls back to OpenClaw's envelope line.
            assert ctx["content"].startswith("[Feishu ") and f"[message_id: {m['message_id']}]" in ctx["content"], where
        elif kind.startswith("post"):
            assert kinds == ["image"] and ctx["content"] == HOOK_TEXT[kind], where  # the post's inline image
        else:
            assert kinds == [] and ctx["content"] == HOOK_TEXT[kind], where


@pytest.mark.slow
def test_the_transcript_line_holds_what_the_readme_says(gateway, delivered):
    for kind, d in delivered.items():
        lines = gateway.transcript_lines(d.message_id)
        assert len(lines) == 1, f"{kind}: {len(lines)} transcript lines name {d.message_id}"
        msg = lines[0].event["message"]
        transport = msg["__openclaw"]["transport"]
        assert transport["messageId"] == d.message_id and msg["timestamp"] == int(d.message["create_time"]), msg
        assert f"[message_id: {d.message_id}]" in msg["content"], msg
        if kind == "reply":
            assert transport["replyToId"] == d.message["parent_id"], msg
            assert '[Replying to: "明天的会议改到下午三点 ✅"]' in msg["content"], msg
        kinds = [x["kind"] for x in msg["__openclaw"].get("media", [])]
        expected = [MEDIA_KINDS[kind]] if kind in MEDIA_KINDS else ["image"] if kind.startswith("post") else []
        assert kinds == expected, msg
    # The direct chat's oc_ id is kept only in the store: conversations.native_channel_id.
    p2p = delivered["p2p"]
    ref = gateway.transcript_lines(p2p.message_id)[0].event["message"]["__openclaw"]["transport"]["conversationRef"]
    rows = [c for c in gateway.table("conversations") if c["conversation_id"] == ref]
    assert [(r["kind"], r["native_channel_id"]) for r in rows] == [("direct", p2p.message["chat_id"])], rows


@pytest.mark.slow
def test_redeliveries_do_not_fire_the_hook_again(gateway, delivered):
    """Feishu retries (same event), a re-send under a new event_id, and a text that matches an earlier
    one in sender, chat, create_time and content under another message_id: OpenClaw drops all three
    before dispatch, so the hook does not fire. The first is refused by the durable ingress queue (keyed
    by event_id) without a log line; the other two by the plugin's dedupe, whose key for a text is
    (sender, chat, create_time, sha256(content)), not the message_id."""
    original = delivered["text"].event
    again = json.loads(json.dumps(original))
    again["header"]["event_id"] = "e" * 32
    twin = json.loads(json.dumps(original))
    twin["header"]["event_id"] = "f" * 32
    twin["event"]["message"]["message_id"] = og.message_id_of("text twin")
    for event in (original, again, twin):
        status, body = gateway.post_event(event)
        assert status == 200, body
    mid, twin_id = original["event"]["message"]["message_id"], twin["event"]["message"]["message_id"]
    # One chat is one ingress lane, handled in order: once the twin's drop is logged, the two before it
    # are settled too.
    for message_id in (mid, twin_id):
        line = f"dropping duplicate event for message {message_id}"
        wait_until(lambda line=line: gateway.logged(line), timeout=30, what=f"'{line}' in the log")
    assert len(hooked(gateway, mid)) == 1 and hooked(gateway, twin_id) == [], gateway.log_tail(20)


@pytest.mark.slow
def test_group_requiring_mention_drops_unmentioned_messages_before_the_hook(gateway, delivered):
    """requireMention (OpenClaw's default for allowlisted groups): a message that does not @ the bot
    returns before dispatch, so message:received never fires for it; one that does, fires."""
    quiet = og.receive_event("text", {"text": "没有@机器人的消息"}, chat_id=og.GATED_GROUP,
                             message_id=og.message_id_of("gated quiet"))
    loud = og.receive_event("text", {"text": "@_user_1 请总结"}, chat_id=og.GATED_GROUP,
                            mentions=[("@_user_1", og.BOT_OPEN_ID, og.BOT_NAME)],
                            message_id=og.message_id_of("gated mentioned"))
    deliver(gateway, "gated quiet", quiet, expect_hook=False)
    wait_until(lambda: gateway.logged(f"message in group {og.GATED_GROUP} did not mention bot"), timeout=30,
               what="the 'did not mention bot' log line")
    d = deliver(gateway, "gated mentioned", loud)
    assert [item[2]["context"]["content"] for item in d.hooked] == ["请总结"], gateway.log_tail(20)
    assert hooked(gateway, quiet["event"]["message"]["message_id"]) == []


@pytest.mark.slow
def test_capture(gateway, delivered, tmp_path):
    """Per type: the posted event, the hook's spool file, the transcript line (all byte for byte);
    the direct chat's store rows; the API calls the gateway made. Into tmp_path, or into
    tests/samples/openclaw_gateway/ with OUTBOX_RELAY_TEST_CAPTURE=1."""
    out = SAMPLES if os.environ.get("OUTBOX_RELAY_TEST_CAPTURE") == "1" else tmp_path / "openclaw_gateway"
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for kind, d in delivered.items():
        (out / f"event_{kind}.json").write_bytes(og.event_bytes(d.event) + b"\n")
        if d.hooked:
            (out / f"hook_{kind}.json").write_bytes(d.hooked[0][1] + b"\n")
        lines = gateway.transcript_lines(d.message_id)
        if lines:
            (out / f"transcript_{kind}.json").write_text(lines[0].text + "\n", encoding="utf-8")
        if not (d.hooked and lines):
            missing.append(kind)
    # What the model was sent for a few turns (the system prompt, ~30 kB of OpenClaw's own, left out):
    # the metadata blocks live there, not in the transcript.
    for kind in ("text", "reply", "p2p"):
        needle = f"[message_id: {delivered[kind].message_id}]"
        sent = [r for r in gateway.model.requests if needle in json.dumps(r["messages"][-2:], ensure_ascii=False)]
        if sent:
            turn = [m for m in sent[0]["messages"] if m["role"] != "system"]
            (out / f"prompt_{kind}.json").write_text(json.dumps(turn, ensure_ascii=False, indent=1) + "\n",
                                                     encoding="utf-8")
        else:
            missing.append(f"prompt_{kind}")
    direct = {w["session_id"] for w in gateway.table("session_windows") if w["chat_type"] == "direct"}
    (out / "transcript_session_direct.jsonl").write_text(
        "".join(row.text + "\n" for row in gateway.transcript_rows() if row.session_id in direct), encoding="utf-8")
    (out / "store_direct.json").write_text(json.dumps(direct_store_rows(gateway), ensure_ascii=False, indent=1)
                                           + "\n", encoding="utf-8")
    (out / "standin_requests.json").write_text(
        "\n".join(json.dumps([r.method, r.path, r.query], ensure_ascii=False) for r in gateway.feishu.requests)
        + "\n", encoding="utf-8")
    assert not missing, f"no hook call or no transcript line for: {missing}\n{gateway.log_tail(40)}"


def direct_store_rows(gw):
    """The direct chat's rows: its session window, the session's conversation links and conversations,
    and its session node (whose delivery.origin also names the p2p chat)."""
    windows = [w for w in gw.table("session_windows") if w["chat_type"] == "direct"]
    sessions = {w["session_id"] for w in windows}
    links = [r for r in gw.table("session_conversations") if r["session_id"] in sessions]
    ids = {r["conversation_id"] for r in links}
    return {"session_windows": windows, "session_conversations": links,
            "conversations": [c for c in gw.table("conversations") if c["conversation_id"] in ids],
            "session_nodes": [n for n in gw.table("session_nodes") if n["current_session_id"] in sessions]}
