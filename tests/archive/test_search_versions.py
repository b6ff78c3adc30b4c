"""Issue 19, the read side: `search` finds a message by any version of its words (as first archived,
each edit, the words now), shows what the chat shows now and marks edited and recalled ones; `stats`
counts edits, recalls and reactions. On PostgreSQL, MariaDB and the embedded SQLite archive, filled
the way production fills it (Outbox.put_many, then Relay.drain); an archive without the events table
is still searched, with no warning."""

import json

import pytest

from outbox_relay.outbox import Outbox
from outbox_relay.targets import open_target

from cliutil import run_cli
from factories import SAMPLES, feishu_edit, feishu_message, feishu_reaction, feishu_recall
from relayutil import archive_with

pytestmark = pytest.mark.usefixtures("hermetic")

T = 1_790_000_000_000  # when the messages were sent (epoch ms)


def iso(ms):
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


@pytest.fixture
def url(archive_url):
    return archive_url  # conftest: each of the three databases


# Two edits of one message (the middle words are only in the history), a recall, reactions, a plain one.
DELIVERED = [
    feishu_message("om_edited", "First words 最初的话", T),
    feishu_edit("om_edited", "e-1", "Middle words 中间的话", T + 10_000),
    feishu_edit("om_edited", "e-2", "Last words 最后的话", T + 20_000),
    feishu_message("om_recalled", "说错了 words", T + 1_000, chat_id="oc_other"),
    feishu_recall("om_recalled", "x-1", T + 30_000, chat_id="oc_other"),
    feishu_message("om_plain", "plain 普通的话", T + 2_000),
    feishu_reaction("om_plain", "r-1", T + 3_000),
    feishu_reaction("om_plain", "r-2", T + 4_000, added=False),
    feishu_reaction("om_edited", "r-3", T + 5_000, emoji="SMILE"),
]
# Still in the outbox: an edit the relay has not brought over yet.
PENDING = [feishu_edit("om_plain", "e-3", "Pending words 待定的话", T + 40_000)]


@pytest.fixture
def archive(url, tmp_outbox):
    return archive_with(url, tmp_outbox, DELIVERED, PENDING)


def search(archive, keyword, *options, as_json=True):
    result = run_cli("search", keyword, *(["--json"] if as_json else []), *options,
                     "--outbox", archive["outbox"], "--target", archive["url"])
    assert result.exit_code == 0, result.output
    if not as_json:
        return result.stdout
    data = json.loads(result.stdout)
    assert data["target_error"] is None
    return data["results"]


def test_a_message_is_found_by_every_version_of_its_words(archive):
    for keyword in ("最初的话", "first WORDS", "中间的话", "middle", "最后的话", "LAST words"):
        (row,) = search(archive, keyword)
        assert (row["message_id"], row["text"], row["where"]) == ("om_edited", "Last words 最后的话", "target"), keyword
        assert (row["edited_at"], row["recalled_at"]) == (iso(T + 20_000), None)
    # A word of every version, once per message, newest first (the UNION of the versions' branches).
    rows = search(archive, "words")
    assert [(r["message_id"], r["where"]) for r in rows] == [
        ("om_plain", "outbox (pending edit)"), ("om_recalled", "target"), ("om_edited", "target")]
    assert search(archive, "words", "--chat", "oc_other")[0]["message_id"] == "om_recalled"
    assert [r["message_id"] for r in search(archive, "words", "--limit", "1")] == ["om_plain"]
    assert search(archive, "中间的话", "--chat", "oc_other") == []
    assert search(archive, "中间的话", "--since", iso(T + 1)) == []  # created_at is when it was sent
    # Recalled: found by its words (a recall never erases them), marked.
    (row,) = search(archive, "说错了")
    assert (row["message_id"], row["text"], row["recalled_at"], row["edited_at"]) == \
        ("om_recalled", "说错了 words", iso(T + 30_000), None)
    (row,) = search(archive, "普通")
    assert (row["message_id"], row["edited_at"], row["recalled_at"]) == ("om_plain", None, None)
    # An edit still in the outbox is found by its words before the relay delivers it.
    (row,) = search(archive, "待定的话")
    assert (row["message_id"], row["where"], row["edited_at"]) == \
        ("om_plain", "outbox (pending edit)", iso(T + 40_000))


def test_the_human_list_marks_edited_and_recalled_messages(archive):
    lines = search(archive, "words", as_json=False).splitlines()
    edited = next(line for line in lines if "最后的话" in line)
    assert "[edited] Last words 最后的话" in edited and "最初的话" not in edited
    assert "[recalled] 说错了 words" in next(line for line in lines if "说错了" in line)
    assert "[edited] Pending words" in next(line for line in lines if "待定的话" in line)
    plain = search(archive, "普通", as_json=False)
    assert "plain 普通的话" in plain and "[" not in plain


def test_stats_count_edits_recalls_and_reactions(archive):
    result = run_cli("stats", "--json", "--outbox", archive["outbox"], "--target", archive["url"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["history"] == {"edited": 2, "recalled": 1, "reaction_added": 2, "reaction_removed": 1,
                            "messages_edited": 1, "messages_recalled": 1}
    assert s["total"] == 3
    text = run_cli("stats", "--outbox", archive["outbox"], "--target", archive["url"]).stdout
    assert ("history  2 edits (1 messages edited), 1 recalls (1 messages recalled), 2 reactions added,"
            " 1 removed") in text


# -- an archive of the release before events, which this role could not migrate ---------------------

def v1_archive(url):
    """The DDL the release before events printed (tests/samples/target_v1), and one message in it."""
    dialect = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}[url.split(":")[0]]
    target = open_target(url)
    try:
        for statement in (SAMPLES / "target_v1" / f"{dialect}.sql").read_text().split(";\n"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                target.query("\n".join(lines))
        p = target.param
        target.query(f"INSERT INTO feishu_messages (message_id, chat_id, sender_id, msg_type, text, created_at,"
                     f" source, received_at) VALUES ({', '.join([p] * 8)})",
                     ("om_v1", "oc_a", "ou_a", "text", "旧版本的消息", target.created_value(T), "api",
                      target.received_value(T / 1000)))
    finally:
        target.close()


def test_an_archive_without_the_events_table_is_searched_and_counted_quietly(url, tmp_outbox):
    v1_archive(url)
    Outbox(tmp_outbox).close()
    result = run_cli("search", "版本", "--json", "--outbox", tmp_outbox, "--target", url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target_error"] is None
    assert [(r["message_id"], r["edited_at"], r["recalled_at"]) for r in data["results"]] == [("om_v1", None, None)]
    human = run_cli("search", "版本", "--outbox", tmp_outbox, "--target", url)
    assert "旧版本的消息" in human.stdout and "warning" not in human.output.lower()
    result = run_cli("stats", "--json", "--outbox", tmp_outbox, "--target", url)
    s = json.loads(result.stdout)
    assert (s["target_error"], s["total"], s["history"]) == (None, 1, None)
    human = run_cli("stats", "--outbox", tmp_outbox, "--target", url)
    assert human.exit_code == 0 and "history" not in human.stdout and "warning" not in human.output.lower()
