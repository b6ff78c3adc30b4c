"""A later copy of a message fills the gaps of the row an earlier one made, and only those (issue 23),
on PostgreSQL, MariaDB and SQLite: OpenClaw's hook knows no parent, root or thread id and names a
direct chat by the sender's ou_ id; the webhook or a backfill that comes after it gives them, in the
same statement that skips the duplicate. The words, the type and every id the row has stay as first
archived; a re-sent batch changes nothing and counts nothing new."""

import pytest

from outbox_relay.message import normalize

from factories import BASE_MS

pytestmark = pytest.mark.usefixtures("hermetic")

COLUMNS = ("message_id", "chat_id", "chat_type", "parent_id", "root_id", "thread_id", "msg_type", "text", "source")


@pytest.fixture(params=["postgresql", "postgresql-partitioned", "mariadb", "sqlite"])
def target(request, make_target, tmp_path):
    if request.param == "postgresql-partitioned":  # a message is there by the keys table, not a unique index
        return make_target(request.getfixturevalue("pg_url"), partition="month")
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    elif request.param == "mariadb":
        url = request.getfixturevalue("maria_url")
    else:
        url = f"sqlite:///{tmp_path}/archive.db"
    return make_target(url)


def hook(message_id, text, chat="user:ou_lilei", sender="ou_lilei"):
    """OpenClaw's hook event: no parent, root or thread; a direct chat as user:<open_id>."""
    return normalize({"type": "message", "action": "received", "context": {
        "from": f"feishu:{sender}", "content": text, "timestamp": BASE_MS, "channelId": "feishu",
        "conversationId": chat, "messageId": message_id, "metadata": {"senderId": sender}}})


def webhook(message_id, text, chat_id, chat_type, parent="", root="", thread="", sender="ou_lilei"):
    return normalize({"schema": "2.0", "header": {"event_id": "ev_" + message_id, "event_type": "im.message.receive_v1",
                                                  "create_time": str(BASE_MS)},
                      "event": {"sender": {"sender_id": {"open_id": sender}, "sender_type": "user"},
                                "message": {"message_id": message_id, "chat_id": chat_id, "chat_type": chat_type,
                                            "parent_id": parent, "root_id": root, "thread_id": thread,
                                            "create_time": str(BASE_MS), "message_type": "text",
                                            "content": '{"text": "%s"}' % text}}})


def rows(target):
    got = target.query(f"SELECT {', '.join(COLUMNS)} FROM {target.quoted} ORDER BY message_id")
    return {r[0]: dict(zip(COLUMNS, (v or None for v in r))) for r in got}


def write(target, messages, start=1):
    return target.write([(start + i, m, 1_750_000_000.0) for i, m in enumerate(messages)])


def test_a_later_copy_fills_the_gaps_and_nothing_else(target):
    first = [hook("om_p2p", "私聊"), hook("om_reply", "收到", chat="chat:oc_group"),
             webhook("om_full", "原文", "oc_group", "group", parent="om_a", root="om_b", thread="omt_c"),
             webhook("om_p2p_known", "已知", "oc_p2p_known", "p2p")]
    assert write(target, first) == 4
    later = [webhook("om_p2p", "编辑后的字", "oc_p2p_real", "p2p"),
             webhook("om_reply", "另一个版本", "oc_group", "group", parent="om_parent", root="om_root",
                     thread="omt_thread"),
             # Ids the row has are never replaced, by other ids or by none.
             webhook("om_full", "别的", "oc_other", "group", parent="om_x", root="", thread="omt_y"),
             hook("om_p2p_known", "已知"),
             webhook("om_new", "新的", "oc_group", "group")]
    assert write(target, later, start=10) == 1  # only om_new is new: a filled row is not
    got = rows(target)
    assert got["om_p2p"] == {"message_id": "om_p2p", "chat_id": "oc_p2p_real", "chat_type": "p2p", "parent_id": None,
                             "root_id": None, "thread_id": None, "msg_type": "text", "text": "私聊",
                             "source": "openclaw"}
    assert got["om_reply"] == {"message_id": "om_reply", "chat_id": "oc_group", "chat_type": "group",
                               "parent_id": "om_parent", "root_id": "om_root", "thread_id": "omt_thread",
                               "msg_type": "text", "text": "收到", "source": "openclaw"}
    assert got["om_full"] == {"message_id": "om_full", "chat_id": "oc_group", "chat_type": "group", "parent_id": "om_a",
                              "root_id": "om_b", "thread_id": "omt_c", "msg_type": "text", "text": "原文",
                              "source": "feishu.v2"}
    assert got["om_p2p_known"]["chat_id"] == "oc_p2p_known"
    assert len(got) == 5
    # The same batches again (a relay re-sending after a crash): nothing new, nothing changed.
    assert write(target, first) == 0 and write(target, later, start=10) == 0
    assert rows(target) == got


def test_one_copy_at_a_time_fills_too(target):
    """A one-row batch (MySQL's one-row INSERT says no Records/Duplicates line) and a copy that fills
    one gap, then another that fills the next."""
    assert write(target, [hook("om_one", "一", chat="chat:oc_group")]) == 1
    assert write(target, [webhook("om_one", "一", "oc_group", "group", parent="om_p")]) == 0
    assert write(target, [webhook("om_one", "一", "oc_group", "group", parent="om_q", root="om_r")]) == 0
    got = rows(target)["om_one"]
    assert (got["chat_id"], got["parent_id"], got["root_id"]) == ("oc_group", "om_p", "om_r")


def test_a_later_copy_through_the_outbox_and_a_backfill_fills_the_row(target, tmp_path):
    """The outbox keeps delivered rows (keep_delivered) to drop re-deliveries: a later copy that knows
    more is not dropped but fills the stored payload, and a delivered row goes out again; a backfill
    does not skip a message whose row lacks what its copy knows."""
    from outbox_relay.backfill.commit import Committer
    from outbox_relay.outbox import Outbox
    from outbox_relay.sync import Relay

    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        relay = Relay(outbox, target)
        outbox.put_many([hook("om_o1", "私聊"), hook("om_o2", "收到", chat="chat:oc_group")])
        relay.drain()
        result = outbox.put(webhook("om_o1", "私聊", "oc_p2p_real", "p2p"))
        assert result.duplicate and result.state == "pending"  # delivered, and going out again filled
        assert outbox.put(hook("om_o1", "私聊")).state == "pending"  # a copy that adds nothing changes nothing
        relay.drain()
        assert rows(target)["om_o1"]["chat_id"] == "oc_p2p_real"
        # A backfill's copy with a parent the row lacks is sent; one that adds nothing is skipped.
        committer = Committer(outbox, target)
        later = webhook("om_o2", "收到", "oc_group", "group", parent="om_parent")
        assert target.held([later, webhook("om_o1", "私聊", "oc_p2p_real", "p2p")]) == {"om_o1"}
        assert committer.commit([later]) == (0, 1)  # a duplicate in the outbox, whose payload it fills
        relay.drain()
        assert rows(target)["om_o2"]["parent_id"] == "om_parent"
        assert target.held([later]) == {"om_o2"}
        assert rows(target)["om_o2"]["text"] == "收到" and target.count() == 2
