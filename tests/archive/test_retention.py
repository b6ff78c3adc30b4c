"""Issue 22, retention and legal hold on a partitioned PostgreSQL archive: whole months go by DETACH + DROP
(a row trigger on the table proves no row was deleted one by one), the rows of held chats stay, nothing
younger is touched; holds are audited. (One month of 1,000,000 rows vs a DELETE: `make bench`.)"""

import datetime as dt
import json
import threading

from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target
from outbox_relay.timeconv import parse_duration

from factories import feishu_edit, feishu_message
from relayutil import pg_query
from serverproc import wait_until

NOW = dt.datetime.now(dt.timezone.utc)
DAY_MS = 86_400_000
NOW_MS = int(NOW.timestamp() * 1000)
CHATS = ("oc_a", "oc_b", "oc_c", "oc_held1", "oc_held2")
HELD = ("oc_held1", "oc_held2")


def archive(make_target, url, months=30, per_day=5):
    """A partitioned archive: per_day messages a day over the last `months` months, in five chats, with an
    edit of each chat's first message a day (events of the old months go with them)."""
    target = make_target(url, partition="month")
    payloads = []
    for day in range(months * 30):
        at = NOW_MS - day * DAY_MS - 3_600_000
        for k in range(per_day):
            mid = f"om_{day:04d}_{k}"
            payloads.append(feishu_message(mid, f"第{day}天 {k}", at - k * 1000, chat_id=CHATS[k % len(CHATS)]))
            if k == 0:
                payloads.append(feishu_edit(mid, f"ev_{day}", "改", at + 1000, chat_id=CHATS[0]))
    items = [normalize(p) for p in payloads]
    for start in range(0, len(items), 500):
        target.write([(start + n, item, 1.0) for n, item in enumerate(items[start:start + 500])])
    pg_query(url, "CREATE TABLE deleted_rows (n int); CREATE FUNCTION count_delete() RETURNS trigger LANGUAGE"
                  " plpgsql AS $$ BEGIN INSERT INTO deleted_rows VALUES (1); RETURN OLD; END $$;"
                  " CREATE TRIGGER count_delete AFTER DELETE ON feishu_messages FOR EACH ROW"
                  " EXECUTE FUNCTION count_delete()")
    return target


def stats_both_ways(url, monkeypatch):
    """`stats` from the rollup and by scanning the table: (rollup's, scan's), over the archive's whole span."""
    from outbox_relay.archive.stats import target_stats
    target = open_target(url)
    try:
        options = dict(days=60, top=50, now=NOW.timestamp())
        rolled = target_stats(target, **options)
        with monkeypatch.context() as m:
            m.setattr(type(target), "rollup_ready", lambda self, tx: False)
            scanned = target_stats(target, **options)
    finally:
        target.close()
    assert (rolled.pop("counted_by"), scanned.pop("counted_by")) == ("rollup", "scan")
    return rolled, scanned


def rollup_as_counted_again(url):
    """(the rollup's rows, the rows a count of the table from scratch gives): every dim, the months' own
    counts retention reads included, equal when the rollup is exact."""
    target = open_target(url)
    try:
        def rows(tx):
            return sorted(tx.execute("SELECT dim, name, n FROM feishu_message_counts WHERE n <> 0"))
        with target.transaction() as tx:
            kept = rows(tx)
            for sql in type(target).rollup_fill_statements(target.table):
                tx.execute(sql)
            counted = rows(tx)
            tx.conn.rollback()
    finally:
        target.close()
    assert any(dim.endswith(":chat") for dim, _, _ in kept)
    return kept, counted


def month_partitions(url):
    return sorted(r[0] for r in pg_query(url, "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~"
                                              " '^feishu_messages_p[0-9]{4}_[0-9]{2}'"))


def test_retention_drops_old_months_keeps_held_chats_and_touches_nothing_younger(make_target, pg_url, invoke,
                                                                                 monkeypatch):
    archive(make_target, pg_url)
    rolled, scanned = stats_both_ways(pg_url, monkeypatch)
    assert rolled == scanned
    for chat in HELD:
        assert invoke("hold", "add", chat, "--reason", "case 42", "--target", pg_url).exit_code == 0
    horizon = parse_duration("365d").before(NOW)
    old_months = {f"feishu_messages_p{y:04d}_{m:02d}" for y, m in pg_query(
        pg_url, "SELECT DISTINCT extract(year FROM created_at AT TIME ZONE 'UTC')::int, extract(month FROM"
                " created_at AT TIME ZONE 'UTC')::int FROM feishu_messages WHERE date_trunc('month', created_at AT"
                " TIME ZONE 'UTC') + interval '1 month' <= %s::timestamptz AT TIME ZONE 'UTC'", (horizon,))}
    assert len(old_months) >= 15
    held_before = pg_query(pg_url, "SELECT message_id, text FROM feishu_messages WHERE chat_id = ANY(%s)"
                                   " ORDER BY 1", (list(HELD),))
    young = "SELECT message_id, xmin::text, ctid::text FROM feishu_messages WHERE created_at >= %s ORDER BY 1"
    first_young = dt.datetime(horizon.year, horizon.month, 1, tzinfo=dt.timezone.utc)
    young_before = pg_query(pg_url, young, (first_young,))
    total_before = pg_query(pg_url, "SELECT count(*) FROM feishu_messages")[0][0]

    dry = invoke("retention", "--keep", "365d", "--dry-run", "--target", pg_url)
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and "oc_a: " in dry.output and "replaced by its held rows" in dry.output
    assert month_partitions(pg_url) >= sorted(old_months)
    assert pg_query(pg_url, "SELECT count(*) FROM feishu_messages")[0][0] == total_before

    result = invoke("retention", "--keep", "365d", "--json", "--target", pg_url)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {m["partition"] for m in report["months"]} == old_months
    left = month_partitions(pg_url)
    assert not old_months & set(left), "old partitions still in pg_class"
    assert not pg_query(pg_url, "SELECT relname FROM pg_class WHERE relname LIKE 'feishu\\_messages\\_retired%%'")
    assert {p + "_held" for p in old_months} <= set(left) | {p + "_held" for p in old_months if p not in left}
    assert pg_query(pg_url, "SELECT count(*) FROM deleted_rows")[0][0] == 0, "rows were deleted one by one"
    # The held chats' rows, all of them, still there and readable through the table.
    assert pg_query(pg_url, "SELECT message_id, text FROM feishu_messages WHERE chat_id = ANY(%s) ORDER BY 1",
                    (list(HELD),)) == held_before
    # Nothing younger touched: the same row versions at the same places.
    assert pg_query(pg_url, young, (first_young,)) == young_before
    old_left = pg_query(pg_url, "SELECT DISTINCT chat_id FROM feishu_messages WHERE created_at < %s", (first_young,))
    assert {c for c, in old_left} <= set(HELD)
    # The old messages' history went with them; the held chats' stayed.
    orphans = pg_query(pg_url, "SELECT count(*) FROM feishu_message_events e WHERE NOT EXISTS (SELECT 1 FROM"
                               " feishu_messages m WHERE m.message_id = e.message_id)")[0][0]
    assert orphans == 0
    # stats in constant time (issue 20) still count what is there: the months dropped are taken out of the
    # rollup in the transaction that detaches them (a DETACH fires no DELETE trigger).
    rolled, scanned = stats_both_ways(pg_url, monkeypatch)
    assert rolled == scanned and rolled["total"] < total_before, (rolled, scanned)
    kept, counted = rollup_as_counted_again(pg_url)
    assert kept == counted

    # A second run drops nothing more; releasing a hold lets its rows go at the next run.
    assert all(m["action"] == "kept (only held rows)" for m in json.loads(invoke(
        "retention", "--keep", "365d", "--json", "--target", pg_url).stdout)["months"])
    assert invoke("hold", "remove", "oc_held1", "--reason", "case closed", "--by", "legal@example",
                  "--target", pg_url).exit_code == 0
    assert invoke("retention", "--keep", "365d", "--target", pg_url).exit_code == 0
    assert {c for c, in pg_query(pg_url, "SELECT DISTINCT chat_id FROM feishu_messages WHERE created_at < %s",
                                 (first_young,))} == {"oc_held2"}
    assert pg_query(pg_url, "SELECT count(*) FROM deleted_rows")[0][0] == 0
    rolled, scanned = stats_both_ways(pg_url, monkeypatch)
    assert rolled == scanned
    kept, counted = rollup_as_counted_again(pg_url)
    assert kept == counted


def test_holds_are_audited(invoke, make_target, pg_url):
    make_target(pg_url)
    assert invoke("hold", "add", "oc_1", "--reason", "litigation", "--by", "alice", "--target", pg_url).exit_code == 0
    assert invoke("hold", "add", "oc_2", "--reason", "audit", "--target", pg_url).exit_code == 0
    removed = invoke("hold", "remove", "oc_1", "--reason", "settled", "--by", "bob", "--target", pg_url)
    assert removed.exit_code == 0, removed.output
    again = invoke("hold", "remove", "oc_1", "--reason", "settled", "--target", pg_url)
    assert again.exit_code == 1 and "not under hold" in again.output
    assert invoke("hold", "add", "oc_3", "--reason", " ", "--target", pg_url).exit_code != 0
    listed = json.loads(invoke("hold", "list", "--json", "--target", pg_url).stdout)
    assert [h["chat_id"] for h in listed["holds"]] == ["oc_2"]
    assert [(a["chat_id"], a["action"], a["by"], a["reason"]) for a in listed["audit"]][0] == (
        "oc_1", "add", "alice", "litigation")
    assert ("oc_1", "remove", "bob", "settled") in [(a["chat_id"], a["action"], a["by"], a["reason"])
                                                    for a in listed["audit"]]
    assert "oc_2" in invoke("hold", "list", "--audit", "--target", pg_url).output


def test_retention_refuses_a_plain_table_and_a_bare_m(invoke, make_target, pg_url):
    make_target(pg_url)
    plain = invoke("retention", "--keep", "3y", "--target", pg_url)
    assert plain.exit_code == 1 and "not partitioned: convert it first" in plain.output
    assert len(plain.output.strip().splitlines()) == 1
    bare = invoke("retention", "--keep", "18m", "--target", pg_url)
    assert bare.exit_code == 2 and "'m' is ambiguous" in bare.output


def test_the_relay_applies_retention_when_it_is_set(make_target, pg_url):
    archive(make_target, pg_url, months=16, per_day=1)
    relay_target = open_target(pg_url, host_name="h", retention=parse_duration("1y"))
    try:
        relay_target.ensure_schema()
        relay_target.write([(1, normalize(feishu_message("om_new", "新", NOW_MS)), 1.0)])
    finally:
        relay_target.close()
    oldest = pg_query(pg_url, "SELECT min(created_at) FROM feishu_messages")[0][0]
    assert oldest >= parse_duration("1y").before(NOW) - dt.timedelta(days=31)
    assert pg_query(pg_url, "SELECT count(*) FROM deleted_rows")[0][0] == 0


def test_an_idle_relay_applies_retention_without_waiting_for_a_message(make_target, pg_url, tmp_outbox):
    """No traffic for days must not mean no retention: the relay's idle probe does the table's daily work."""
    archive(make_target, pg_url, months=16, per_day=1)
    relay_target = open_target(pg_url, host_name="h", retention=parse_duration("1y"))
    relay = Relay(Outbox(tmp_outbox), relay_target, probe_interval=0.1)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        horizon = parse_duration("1y").before(NOW) - dt.timedelta(days=31)
        wait_until(lambda: pg_query(pg_url, "SELECT min(created_at) FROM feishu_messages")[0][0] >= horizon,
                   timeout=60, what="retention applied by the idle relay")
    finally:
        relay.stop()
        thread.join(30)
        relay_target.close()
    assert not thread.is_alive()
    assert relay.outbox.counts()["delivered"] == 0  # nothing was relayed: the probe did it
    assert pg_query(pg_url, "SELECT count(*) FROM deleted_rows")[0][0] == 0


def test_retention_and_convert_on_sqlite_say_there_is_no_partitioned_layout(invoke, tmp_path):
    target = f"sqlite:///{tmp_path}/archive.db"
    assert invoke("init-db", "--target", target).exit_code == 0
    for args in (("retention", "--keep", "1y"), ("partition", "--convert")):
        result = invoke(*args, "--target", target)
        assert result.exit_code == 1 and "SQLite archive has no partitioned layout yet" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert invoke("hold", "add", "oc_1", "--reason", "kept on every database", "--target", target).exit_code == 0
