"""compat.py: the seed's `FeishuMessageSync().process_inbound_message(data)` after one import line.

The acceptance line: the seed's flat message shape goes in through the old call, and the row is in
a real PostgreSQL after `outbox-relay sync`.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from outbox_relay.errors import InvalidMessage
from outbox_relay.intake.compat import FeishuMessageSync
from outbox_relay.outbox import Outbox

from cliutil import clean_env, run_cli
from factories import sample
from relayutil import pg_query

FLAT = sample("flat_message.json")


def stored(path):
    with Outbox(path) as outbox:
        return {r["message_id"]: r for r in outbox.rows("pending", 1000)}


def test_the_seed_call_with_the_flat_shape_reaches_postgresql_after_sync(hermetic, tmp_path, pg_url):
    with FeishuMessageSync(outbox="data/outbox.db") as sync:
        result = sync.process_inbound_message(dict(FLAT))
        assert result and result.message_id == "om_flat_0001" and not result.duplicate
        again = sync.process_inbound_message(dict(FLAT))  # the caller retries: still one message
        assert again and again.duplicate
    out = run_cli("sync", "--target", pg_url, "--json")
    assert out.exit_code == 0, out.output
    rows = pg_query(pg_url, "SELECT chat_id, sender_id, msg_type, text, source,"
                            " (extract(epoch FROM created_at) * 1000)::bigint FROM feishu_messages"
                            " WHERE message_id = %s", ("om_flat_0001",))
    assert rows == [("oc_group_1", "ou_aaa", "text", "测试消息", "api", 1700000002000)]


def test_one_import_line_is_all_that_changes(tmp_path):
    """The seed's own usage, verbatim but for the import: no arguments, the outbox from the
    service's setting (OUTBOX_RELAY_OUTBOX here)."""
    script = tmp_path / "gateway_hook.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        from outbox_relay.compat import FeishuMessageSync   # was: from feishu_sync import FeishuMessageSync

        sync = FeishuMessageSync()
        ok = sync.process_inbound_message(json.loads(sys.argv[1]))
        print("saved" if ok else "failed")
    """))
    env = clean_env(OUTBOX_RELAY_OUTBOX=str(tmp_path / "svc" / "outbox.db"))
    proc = subprocess.run([sys.executable, str(script), json.dumps(FLAT)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "saved"), proc.stderr
    assert list(stored(env["OUTBOX_RELAY_OUTBOX"])) == ["om_flat_0001"]


def test_bad_input_raises_and_stores_nothing(tmp_path):
    path = tmp_path / "outbox.db"
    with FeishuMessageSync(outbox=path) as sync:
        for bad in ({"sender_id": "ou_x", "content": "no id"}, {"message_id": ""}, "not json", None,
                    {"message": {"content": "an inbound_meta dict without an id"}}):
            with pytest.raises(InvalidMessage):
                sync.process_inbound_message(bad)
    assert stored(path) == {}


def test_the_seeds_other_shapes(tmp_path):
    """save_message's dict (plain-text content, content_type) and the openclaw.inbound_meta.v1
    dict the seed's process_inbound_message documented; the original is kept in raw."""
    path = tmp_path / "outbox.db"
    seed_flat = {"message_id": "test_1", "sender_id": "test_user", "sender_name": "测试用户",
                 "chat_type": "direct", "chat_id": "test_chat", "content": "这是一条测试消息",
                 "content_type": "text"}
    meta = {"schema": "openclaw.inbound_meta.v1", "channel": "feishu", "chat_type": "group",
            "conversation_label": "oc_label", "message": {"id": "om_meta", "content": "会议改期",
                                                          "sender": {"id": "ou_m", "name": "Tom"}}}
    with FeishuMessageSync(outbox=path) as sync:
        assert sync.save_message(seed_flat)
        assert sync.process_inbound_message(meta)
    with Outbox(path) as outbox:
        from outbox_relay.message import Message
        a = Message.from_json(outbox.get("test_1")["payload"])
        b = Message.from_json(outbox.get("om_meta")["payload"])
    assert (a.chat_id, a.chat_type, a.sender_id, a.msg_type, a.text) == \
        ("test_chat", "p2p", "test_user", "text", "这是一条测试消息")
    assert a.raw["seed_payload"] == seed_flat
    assert (b.chat_id, b.chat_type, b.sender_id, b.text) == ("oc_label", "group", "ou_m", "会议改期")
    assert b.raw["seed_payload"] == meta


def test_an_open_outbox_can_be_passed_in(tmp_path):
    with Outbox(tmp_path / "o.db") as outbox:
        sync = FeishuMessageSync(outbox=outbox)
        assert sync.process_inbound_message(sample("hook_group.json"))
        sync.close()  # not ours: stays open
        assert outbox.counts()["pending"] == 1


def test_importable_from_the_package_root():
    import outbox_relay
    assert outbox_relay.FeishuMessageSync is FeishuMessageSync
