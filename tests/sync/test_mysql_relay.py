"""The relay's guarantees on real MariaDB servers, as test_relay.py and test_relay_faults.py show them
on PostgreSQL: 10,000 messages exactly once with every field; kill -9 of the relay at random moments
of a 20,000 drain; the server killed and restarted behind the same address while puts continue;
poison rows dead with the server's words and replayed after the fix; eight writers and a relay under
MAX_USER_CONNECTIONS 2; two hosts' relays into one table. Each ends by comparing the set of
message_ids in the table with the set that was put."""

import datetime as dt
import json
import os

import pytest

from outbox_relay.errors import RowRejected
from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.targets import open_target
from outbox_relay.timeconv import datetime_to_ms

from cliutil import run_cli
from factories import BASE_MS, RECEIVED, flat, ids
from relayutil import assert_exactly_once, outbox_with, put_all
from scenarios import (
    Database,
    count_on,
    drain_through_kill_9,
    eight_writers_and_a_relay,
    poison_rows_then_replay,
    refused_rows_keep_their_words_out,
    run_through_an_outage,
    table_dropped_under_a_running_relay,
    two_hosts_sync,
)

mh = pytest.importorskip("mariaharness", reason="tests/mariaharness.py needs PyMySQL (the [mysql] extra)")


def count(url):
    return mh.row_stats(url)[0]


def test_sync_10000_messages_exactly_once_with_every_field(spawn, tmp_path, maria_url):
    outbox_path = str(tmp_path / "outbox.db")
    with Outbox(outbox_path) as outbox:
        assert put_all(outbox, [flat(i) for i in range(10_000)]) == 10_000
    proc = spawn("sync", ["sync", "--json"], outbox=outbox_path, target=maria_url)
    assert proc.wait(120) == 0, proc.output()
    report = json.loads(proc.stdout())
    assert report["delivered"] == 10_000 and report["new"] == 10_000 and report["dead"] == 0
    assert mh.row_stats(maria_url) == (10_000, 10_000)
    rows = mh.query(maria_url, "SELECT message_id, chat_id, sender_id, msg_type, text,"
                               " JSON_UNQUOTE(JSON_EXTRACT(content, '$.text')), created_at, source, outbox_id,"
                               " JSON_UNQUOTE(JSON_EXTRACT(raw, '$.message_id')), received_at <= relayed_at"
                               " FROM feishu_messages")
    by_id = {r[0]: r[:6] + (datetime_to_ms(r[6]),) + r[7:] for r in rows}
    for i in range(10_000):
        mid, text = f"om_{i:06d}", f"message {i} 测试"
        assert by_id[mid][1:] == (f"oc_chat_{i % 7}", f"ou_user_{i % 11}", "text", text, text,
                                  BASE_MS + i, "api", i + 1, mid, 1), by_id[mid]
    with Outbox(outbox_path) as outbox:
        assert outbox.counts() == {"pending": 0, "delivered": 1000, "parked": 0, "dead": 0}


def test_kill_9_at_random_moments_during_a_20000_message_drain(spawn, tmp_path, maria_url):
    drain_through_kill_9(spawn, tmp_path, maria_url, count, mh.message_ids)


def test_server_killed_and_restarted_while_puts_continue(spawn, tmp_path, private_maria):
    """The server dies (kill -9) and comes back behind the same address, as after a failover: the
    relay is never restarted, the writers never notice, and every message arrives once."""
    private_maria.create_database("relay")
    url = private_maria.url("relay")
    expected = run_through_an_outage(spawn, tmp_path / "outbox.db", url, count,
                                     stop=private_maria.kill, start=private_maria.start)
    assert_exactly_once(mh.message_ids(url), expected)


@pytest.mark.usefixtures("hermetic")
def test_poison_rows_are_dead_with_the_servers_words_and_replayed_after_the_fix(tmp_path, maria_url):
    still = poison_rows_then_replay(
        run_cli, str(tmp_path / "outbox.db"), Database(maria_url, mh.query, mh.row_stats, mh.message_ids),
        damage=["ALTER TABLE feishu_messages MODIFY msg_type varchar(8) NOT NULL",
                "ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb3 NOT NULL"],
        poison={100: {"msg_type": "interactive"},     # 11 characters > varchar(8): refused, not truncated
                250: {"text": "emoji 😀 here"}},       # a 4-byte character into a utf8mb3 column
        errors={"om_000100": ["Data too long for column 'msg_type'", "MySQL error 1406"],
                "om_000250": ["Incorrect string value", "MySQL error 1366"]},
        repair=["ALTER TABLE feishu_messages MODIFY msg_type varchar(64) NOT NULL",
                "ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"])
    assert still == set()
    assert mh.query(maria_url, "SELECT msg_type, text FROM feishu_messages WHERE message_id IN"
                               " ('om_000100', 'om_000250') ORDER BY message_id") == [
        ("interactive", "[card]"), ("text", "emoji 😀 here")]


@pytest.mark.usefixtures("hermetic")
def test_refused_rows_keep_the_servers_reason_but_not_the_messages_words(tmp_path, maria_url):
    """Issue 24, item 14: MariaDB's "Incorrect string value: '\\xF0\\x9F\\x94\\x91 m...'" quotes the
    message; the dead row's error and the log keep the reason and the column."""
    refused_rows_keep_their_words_out(
        run_cli, str(tmp_path / "outbox.db"), Database(maria_url, mh.query, mh.row_stats, mh.message_ids),
        damage=["ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb3 NOT NULL"],
        poison={80: {"content": json.dumps({"text": "🔑 my password is hunter2"})}},
        words="\\xF0\\x9F\\x94\\x91",                         # the key, as the server quotes it
        reasons={"om_000080": ["Incorrect string value", ".`feishu_messages`.`text` at row 1", "MySQL error 1366"]})


def test_eight_writers_and_a_relay_under_max_user_connections_2(spawn, tmp_path, maria_server, maria_url):
    user = f"relay_{os.getpid()}"
    maria_server.drop_user(user)
    maria_server.create_user(user, "relay-pw", database=mh.database_of(maria_url), max_user_connections=2)
    url = mh.as_user(maria_url, user, "relay-pw")
    sampler = maria_server.connect()
    try:
        expected, samples, log = eight_writers_and_a_relay(
            spawn, tmp_path / "outbox.db", url, count,
            connections=lambda: count_on(sampler, "SELECT count(*) FROM information_schema.processlist"
                                                  " WHERE user = %s", (user,)))
    finally:
        sampler.close()
        maria_server.drop_user(user)
    assert_exactly_once(mh.message_ids(maria_url), expected)  # the same database, read as root
    assert len(samples) > 20 and 1 <= max(samples) <= 2, samples
    assert "Too many" not in log and "target unavailable" not in log and "ERROR" not in log, log


def test_two_hosts_overlapping_ids_into_one_table(spawn, tmp_path, maria_url):
    """Two relays at once, against a database with no table yet, with 3,000 ids in common: one row
    per message_id (a deadlock between their ON DUPLICATE KEY inserts is retried, not fatal)."""
    _, reports = two_hosts_sync(spawn, tmp_path, maria_url)
    assert [r["delivered"] for r in reports] == [6000, 6000]
    assert sum(r["new"] for r in reports) == 9000          # the overlap was written once
    assert_exactly_once(mh.message_ids(maria_url), ids(9000))
    newest = mh.query(maria_url, "SELECT max(relayed_at) FROM feishu_messages")[0][0]
    assert abs((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - newest).total_seconds()) < 120


def test_a_table_dropped_under_the_relay_is_made_again(spawn, invoke, tmp_path, maria_url):
    table_dropped_under_a_running_relay(spawn, invoke, str(tmp_path / "outbox.db"),
                                        Database(maria_url, mh.query, mh.row_stats, mh.message_ids), count)


# -- max_allowed_packet (issue 24, item 1) ------------------------------------------------------------


def _server_with_packet(make_maria, size):
    """A MariaDB server whose max_allowed_packet is `size` -> the URL of an empty database on it."""
    server = make_maria(max_allowed_packet=size)
    server.create_database("relay")
    return server.url("relay")


@pytest.mark.usefixtures("hermetic")
def test_ordinary_messages_fit_a_64_kib_max_allowed_packet(make_maria, tmp_path):
    """The INSERTs of a batch are cut by the server's own max_allowed_packet, measured in bytes: 400
    Chinese characters are 1,200 bytes of UTF-8, three times in a row (text, content, raw). `check`
    says that a message of the largest size accepted would not fit, and which setting to raise."""
    url = _server_with_packet(make_maria, "64K")
    words = "长" * 400
    outbox_path = outbox_with(tmp_path / "outbox.db",
                              [flat(i, content=json.dumps({"text": words}, ensure_ascii=False)) for i in range(1000)])
    result = run_cli("sync", "--outbox", outbox_path, "--target", url, "--timeout", "30", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dead"] == 0
    assert_exactly_once(mh.message_ids(url), ids(1000))
    assert mh.query(url, "SELECT DISTINCT text FROM feishu_messages") == [(words,)]

    check = run_cli("check", "--target", url)
    assert check.exit_code == 1, check.output
    assert "max_allowed_packet" in check.output and "65,536" in check.output, check.output
    assert "raise max_allowed_packet to at least" in check.output, check.output


@pytest.mark.usefixtures("hermetic")
def test_a_row_bigger_than_max_allowed_packet_goes_dead_and_the_stream_goes_on(make_maria, tmp_path):
    """MySQL 5.7's default max_allowed_packet (4 MiB) and a message of 450,000 backslashes: 4.5 MB as
    SQL (each backslash is two in JSON, each of those two in SQL). That row goes dead with the
    server's limit and its size, refused as it is encoded once a connection has told the limit (no
    batch is rolled back to find it); the 299 around it arrive once, in the same drain."""
    url = _server_with_packet(make_maria, "4M")
    monster = {**flat(150), "text": "\\" * 450_000, "content": None}
    outbox_path = outbox_with(tmp_path / "outbox.db", [monster if i == 150 else flat(i) for i in range(300)])
    common = ["--outbox", outbox_path, "--target", url]
    result = run_cli("sync", *common, "--timeout", "30", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["delivered"], report["dead"]) == (299, 1), report
    assert_exactly_once(mh.message_ids(url), ids(300) - {"om_000150"})
    (dead,) = json.loads(run_cli("dead", *common, "--json").stdout)
    assert dead["message_id"] == "om_000150"
    assert "max_allowed_packet" in dead["last_error"] and "4,194,304" in dead["last_error"], dead
    assert "bytes as SQL" in dead["last_error"] and "MySQL error 1153" in dead["last_error"], dead

    check = run_cli("check", "--target", url)
    assert check.exit_code == 1 and "4,194,304" in check.output, check.output

    target = open_target(url)
    try:
        target.ping()
        with pytest.raises(RowRejected, match="max_allowed_packet is 4,194,304"):
            target.encode(1, normalize(monster), RECEIVED)
    finally:
        target.close()
