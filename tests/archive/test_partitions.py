"""Issue 22, the partitioned archive on PostgreSQL: a month a partition, DEFAULT for the odd date, and a
message still one row when it comes twice with different created_at values by different ways in, through
kill -9. The issue's 300,000 messages are in `make bench` (bench/partitions.py); here 12,000."""

import datetime as dt
import json
import signal

from factories import feishu_message, sample
from relayutil import assert_exactly_once, outbox_with, pg_query, pg_rows
from scenarios import kill_9_repeatedly

START = dt.datetime(2023, 12, 1, tzinfo=dt.timezone.utc)
SPAN_MS = (dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc) - START) // dt.timedelta(milliseconds=1)
START_MS = (START - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)
LATER_MS = 36 * 3600 * 1000  # the second way in says 36 hours later: often another month


def created(i, n):
    return START_MS + SPAN_MS * i // n


def webhook_copy(i, n):
    return feishu_message(f"om_p{i:07d}", f"消息 {i}", created(i, n), chat_id=f"oc_p{i % 13}")


def hook_copy(i, n):
    """The same message as OpenClaw's hook hands it over: its own timestamp (context.timestamp)."""
    event = sample("openclaw_message_received.json")
    event["context"].update(messageId=f"om_p{i:07d}", content=f"消息 {i}", timestamp=created(i, n) + LATER_MS,
                            conversationId=f"chat:oc_p{i % 13}")
    return event


def months_by_partition(url):
    return pg_query(url, "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY_MM'), tableoid::regclass::text, count(*)"
                         " FROM feishu_messages GROUP BY 1, 2 ORDER BY 1")


def deliver_twice_through_kill_9(spawn, tmp_path, url, n):
    """n messages by one host's webhook (its relay killed -9 again and again), a tenth of them again
    by another host's hook with another created_at, and one dated 1970."""
    assert spawn("init", ["init-db", "--partition", "month"], target=url).wait(60) == 0
    first = outbox_with(tmp_path / "a.db", [webhook_copy(i, n) for i in range(n)]
                        + [feishu_message("om_1970", "an epoch clock", 0)])
    second = outbox_with(tmp_path / "b.db", [hook_copy(i, n) for i in range(0, n, 10)])
    other = spawn("host-b", ["run", "--no-http"], outbox=second, target=url, batch_size=50)
    runs = []

    def tracked(name, args, **settings):
        runs.append(spawn(name, args, **settings))
        return runs[-1]
    kills = kill_9_repeatedly(tracked, first, url, lambda u: len(pg_rows(u)), n)
    assert kills, "no kill landed"
    for proc in runs + [other]:  # the last run may have drained everything before a kill landed
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGKILL), proc.output()
    for name, path in (("final-a", first), ("final-b", second)):
        final = spawn(name, ["sync"], outbox=path, target=url)
        assert final.wait(300) == 0, final.output()
    return kills


def test_a_month_a_partition_and_each_message_once_through_kill_9(spawn, tmp_path, pg_url):
    n = 12_000
    deliver_twice_through_kill_9(spawn, tmp_path, pg_url, n)
    assert_exactly_once(pg_rows(pg_url), {f"om_p{i:07d}" for i in range(n)} | {"om_1970"})
    parts = months_by_partition(pg_url)
    assert ("1970_01", "feishu_messages_default", 1) in parts
    months = [(m, p) for m, p, _ in parts if m != "1970_01"]
    assert all(p == f"feishu_messages_p{m}" for m, p in months), months
    # The 36 months the webhook's copies span; the hook's copy of one of the last messages (36 h later)
    # may reach the table first, from the other host's relay, and be in December 2026.
    sent = {f"{2023 + (11 + k) // 12}_{(11 + k) % 12 + 1:02d}" for k in range(36)}
    assert sent <= {m for m, _ in months} <= sent | {"2026_12"}, months
    # Each message is kept as it first came: the key table and the row agree on created_at.
    assert pg_query(pg_url, "SELECT count(*) FROM feishu_messages m JOIN feishu_messages_keys k USING"
                            " (message_id, created_at)")[0][0] == n + 1


def test_same_message_with_another_created_at_in_one_batch_and_across_batches(make_target, pg_url):
    from outbox_relay.message import normalize
    target = make_target(pg_url, partition="month")
    first = normalize(webhook_copy(5, 10))
    again = normalize(hook_copy(5, 10))
    assert first.created_at != again.created_at
    assert target.write([(1, first, 1.0), (2, again, 1.0)]) == 1
    assert target.write([(3, again, 1.0)]) == 0
    assert pg_query(pg_url, "SELECT count(*) FROM feishu_messages")[0][0] == 1


def test_the_relay_follows_the_table_not_the_setting(make_target, pg_url):
    """A partitioned table is written through its keys whatever `partition` says, and a month whose
    partition a role may not make goes to DEFAULT instead of stopping the relay."""
    from outbox_relay.message import normalize
    from outbox_relay.targets import open_target
    make_target(pg_url, partition="month").close()
    pg_query(pg_url, "CREATE ROLE writer LOGIN; GRANT ALL ON ALL TABLES IN SCHEMA public TO writer;"
                     " REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    target = open_target(pg_url.replace("postgres@", "writer@"), host_name="h")  # partition: none
    try:
        assert target.ensure_schema() is False and target.layout.partitioned
        old = normalize(feishu_message("om_old", "x", START_MS - 400 * 86_400_000))
        assert target.write([(1, old, 1.0), (2, normalize(hook_copy(1, 2)), 1.0)]) == 2
        assert target.write([(3, normalize(webhook_copy(1, 2)), 1.0)]) == 0
    finally:
        target.close()
    where = dict(pg_query(pg_url, "SELECT message_id, tableoid::regclass::text FROM feishu_messages"))
    assert where["om_old"] == "feishu_messages_default"


def test_partition_month_is_postgresql_only(tmp_path, invoke):
    result = invoke("init-db", "--target", f"sqlite:///{tmp_path}/a.db", "--partition", "month")
    assert result.exit_code == 2 and "partition = month is not available on SQLite" in result.output


def test_a_writer_that_does_not_write_the_keys_still_makes_one_row(make_target, pg_url):
    """An older relay, or one that has not yet seen the table become partitioned, COPYs or INSERTs plain
    rows: the table's trigger keeps each message one row all the same."""
    make_target(pg_url, partition="month").close()
    columns = "message_id, msg_type, text, created_at, source, received_at"
    for at in ("2026-01-05", "2026-03-05", "2026-01-05"):
        pg_query(pg_url, f"INSERT INTO feishu_messages ({columns}) VALUES ('om_x', 'text', 'x', %s, 'api', now())",
                 (at,))
    assert pg_query(pg_url, "SELECT count(*), min(created_at)::date::text FROM feishu_messages") == [(1, "2026-01-05")]


def test_init_db_makes_the_months_around_now(invoke, pg_url):
    assert invoke("init-db", "--partition", "month", "--target", pg_url).exit_code == 0
    now = dt.datetime.now(dt.timezone.utc)
    here = now.year * 12 + now.month - 1
    wanted = [f"feishu_messages_p{(here + k) // 12:04d}_{(here + k) % 12 + 1:02d}" for k in range(-1, 4)]
    listed = invoke("partition", "--json", "--target", pg_url)
    assert listed.exit_code == 0, listed.output
    names = [p["partition"] for p in json.loads(listed.stdout)["partitions"]]
    assert names == ["feishu_messages_default"] + wanted


def test_a_partitioned_table_gets_its_search_indexes(make_target, pg_url):
    """CREATE INDEX CONCURRENTLY refuses a partitioned table: init-db builds issue 20's search indexes
    on it the plain way (every partition at once), so search on a partitioned archive uses them too."""
    make_target(pg_url, partition="month")  # init-db, with the search step
    names = {r[0] for r in pg_query(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'feishu_messages'")}
    assert {"feishu_messages_text_grams", "feishu_messages_type_created"} <= names, names
