"""The relay under real faults: kill -9 mid-drain, the server stopped while messages keep
coming, a network that cuts connections mid-transaction, a server near its connection limit,
PgBouncer in transaction mode, SIGTERM, a table too slow for a whole batch within
statement_timeout, and the table dropped under the relay. Every test ends by comparing the set of message_ids
in PostgreSQL with the set that was put: each exactly once."""

import json
import signal
import threading
import time
import urllib.parse

import pytest

from outbox_relay.errors import StatementTimeout
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from factories import flat, ids
from relayutil import (
    SEED,
    assert_exactly_once,
    heartbeat,
    outbox_counts,
    outbox_with,
    pending_rows,
    pg_count,
    pg_query,
    pg_rows,
    put_all,
    row_stats,
    undelivered_ids,
)
from scenarios import (
    Database,
    count_on,
    drain_through_kill_9,
    eight_writers_and_a_relay,
    run_through_an_outage,
    table_dropped_under_a_running_relay,
)
from serverproc import free_port, wait_until

# -- kill -9 -------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_during_a_20000_message_drain(spawn, tmp_path, pg_url):
    drain_through_kill_9(spawn, tmp_path, pg_url, pg_count, pg_rows)


# -- outage ------------------------------------------------------------------------------------------


def test_outage_server_stopped_while_messages_keep_coming(spawn, tmp_path, private_pg):
    private_pg.execute("CREATE DATABASE relay")
    url = private_pg.url("relay")
    expected = run_through_an_outage(spawn, tmp_path / "outbox.db", url, pg_count,
                                     stop=lambda: private_pg.stop(mode="immediate"), start=private_pg.start)
    assert_exactly_once(pg_rows(url), expected)


# -- flaky network ---------------------------------------------------------------------------------


def test_flaky_network_cutting_connections_mid_transaction(make_tcp_proxy, pg_url, tmp_outbox):
    n = 6000
    setup = open_target(pg_url)
    setup.init_db(trigram=False)
    setup.close()
    parts = urllib.parse.urlsplit(pg_url)
    proxy = make_tcp_proxy(parts.hostname, parts.port)
    rollbacks_before = pg_query(pg_url, "SELECT xact_rollback FROM pg_stat_database"
                                        " WHERE datname = current_database()")[0][0]
    outbox = Outbox(tmp_outbox)
    put_all(outbox, [flat(i) for i in range(n)])
    target = open_target(proxy.url_for(pg_url), connect_timeout=5)
    # Small batches and frequent cuts: the drain must take long enough for the chaos to hit it
    # (at 100 a batch it finished before five cuts once the relay got faster).
    relay = Relay(outbox, target, batch_size=25, backoff_max=0.5)
    thread = threading.Thread(target=relay.drain)
    proxy.start_chaos(0.03, seed=SEED)
    thread.start()
    try:
        thread.join(120)
        assert not thread.is_alive(), f"drain did not finish under chaos (seed {SEED})"
    finally:
        proxy.stop_chaos()
        relay.stop()
        thread.join(10)
        target.close()
        outbox.close()
    assert proxy.cuts >= 5 and relay.beat.errors >= 3, (proxy.cuts, relay.beat)
    assert_exactly_once(pg_rows(pg_url), ids(n))
    left = outbox_counts(tmp_outbox)
    assert left["pending"] == left["parked"] == left["dead"] == 0
    # Some cuts hit an open transaction: the server rolled it back (and the rows came again later).
    wait_until(lambda: pg_query(pg_url, "SELECT xact_rollback FROM pg_stat_database"
                                        " WHERE datname = current_database()")[0][0] > rollbacks_before,
               timeout=10, what="server-side rollbacks of cut transactions")


# -- connection limit ----------------------------------------------------------------------------------


def test_connection_limit_near_max_connections_with_eight_writers(spawn, tmp_path, private_pg):
    private_pg.restart(max_connections=12)        # 3 reserved for superusers: 9 for everyone else
    private_pg.execute("CREATE DATABASE relay")
    private_pg.create_role("relay", connection_limit=2)
    private_pg.create_role("filler")
    private_pg.execute("GRANT ALL ON SCHEMA public TO relay", dbname="relay")
    fillers = [private_pg.connect("relay", user="filler") for _ in range(6)]
    sampler = private_pg.connect("relay")
    url = private_pg.url("relay", user="relay")
    try:
        expected, samples, log = eight_writers_and_a_relay(
            spawn, tmp_path / "outbox.db", url, pg_count,
            connections=lambda: count_on(sampler, "SELECT count(*) FROM pg_stat_activity"
                                                  " WHERE application_name = 'outbox-relay'"))
    finally:
        for c in fillers + [sampler]:
            c.close()
    assert_exactly_once(pg_rows(url), expected)
    assert len(samples) > 20 and 1 <= max(samples) <= 2, samples
    assert "too many" not in log and "target unavailable" not in log and "ERROR" not in log, log


# -- PgBouncer -------------------------------------------------------------------------------------------


def test_pgbouncer_transaction_mode_drain(spawn, tmp_path, private_pg, make_pgbouncer):
    """Two relays through one PgBouncer whose pool has a single server connection: their
    transactions take turns on it, so nothing may be left behind between transactions."""
    private_pg.execute("CREATE DATABASE relay")
    bouncer = make_pgbouncer(private_pg, pool_mode="transaction", default_pool_size=1)
    assert ("pool_mode", "transaction") in {(r[0], r[1]) for r in bouncer.admin("SHOW CONFIG")}
    url = bouncer.url("relay")
    procs, expected = [], set()
    for host in ("a", "b"):
        path = str(tmp_path / f"host-{host}.db")
        with Outbox(path) as outbox:
            put_all(outbox, [flat(i, prefix=host) for i in range(4000)])
        expected |= ids(4000, prefix=host)
        procs.append(spawn(f"sync-{host}", ["sync", "--json"], outbox=path, target=url, batch_size=200))
    for p in procs:
        assert p.wait(120) == 0, p.output()
        report = json.loads(p.stdout())
        assert (report["delivered"], report["new"], report["dead"]) == (4000, 4000, 0)
        assert "WARNING" not in p.output() and "ERROR" not in p.output(), p.output()
    assert_exactly_once(pg_rows(private_pg.url("relay")), expected)
    check = spawn("check", ["check", "--json"], target=url)
    assert check.wait(30) == 0, check.output()
    assert json.loads(check.stdout())["schema_version"] == 2


# -- SIGTERM --------------------------------------------------------------------------------------------


def test_sigterm_during_a_drain_exits_0_within_5_s_and_loses_nothing(spawn, tmp_path, pg_url):
    n = 10_000
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(n)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=pg_url, batch_size=100)
    wait_until(lambda: pg_count(pg_url) >= 1000, timeout=30, what="the drain to be under way")
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == 0, proc.output()
    assert time.monotonic() - started <= 5
    delivered = set(pg_rows(pg_url))
    assert len(delivered) < n, "the drain ended before the signal: nothing was tested"
    # Graceful: the batch in flight was finished and marked; nothing in the target is still
    # waiting in the outbox, and nothing is in neither.
    waiting = undelivered_ids(outbox_path)
    assert not delivered & waiting
    assert delivered | waiting == ids(n)

    final = spawn("final", ["sync"], outbox=outbox_path, target=pg_url)
    assert final.wait(120) == 0, final.output()
    assert_exactly_once(pg_rows(pg_url), ids(n))


def test_a_second_signal_exits_at_once_and_is_still_safe(spawn, tmp_path, pg_url):
    n = 10_000
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(n)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=pg_url, batch_size=100)
    wait_until(lambda: pg_count(pg_url) >= 1000, timeout=30, what="the drain to be under way")
    proc.signal(signal.SIGTERM)
    proc.signal(signal.SIGINT)
    assert proc.wait(5) in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM)
    final = spawn("final", ["sync"], outbox=outbox_path, target=pg_url)
    assert final.wait(120) == 0, final.output()
    assert_exactly_once(pg_rows(pg_url), ids(n))


def test_sigterm_while_the_target_is_down_exits_0_at_once(spawn, tmp_path):
    """The relay is waiting out an unreachable target (backoff): a stop ends the wait."""
    port = free_port()                         # nothing listens there
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(10)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path,
                 target=f"postgresql://postgres@127.0.0.1:{port}/x")
    wait_until(lambda: (heartbeat(outbox_path).get("last_error") or "").count("refused"), timeout=20,
               what="the relay to meet the unreachable target")
    wait_until(lambda: min(r["attempts"] for r in pending_rows(outbox_path)) >= 3, timeout=20,
               what="a few retries (the backoff has grown)")
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == 0, proc.output()
    assert time.monotonic() - started < 2
    assert outbox_counts(outbox_path)["pending"] == 10


def test_pgbouncer_with_the_server_restarted_behind_it(tmp_outbox, private_pg, make_pgbouncer):
    """PgBouncer stays up while the server behind it crashes. PgBouncer either fails the
    relay's queries (transient errors) or holds them in its queue (query_wait_timeout) until
    the server is back; either way everything arrives once."""
    private_pg.execute("CREATE DATABASE relay")
    bouncer = make_pgbouncer(private_pg, pool_mode="transaction")
    url = bouncer.url("relay")
    outbox = Outbox(tmp_outbox)
    target = open_target(url, connect_timeout=5)
    relay = Relay(outbox, target, batch_size=100, backoff_max=0.5)
    put_all(outbox, [flat(i) for i in range(1000)])
    assert relay.drain()["delivered"] == 1000
    private_pg.stop(mode="immediate")
    put_all(outbox, [flat(i) for i in range(1000, 2000)])
    thread = threading.Thread(target=relay.drain)
    thread.start()
    try:
        wait_until(lambda: relay.beat.errors >= 1 or clients_waiting(bouncer, "relay") >= 1,
                   timeout=30, what="the relay to fail or queue in PgBouncer")
        private_pg.start()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        relay.stop()
        thread.join(10)
        target.close()
        outbox.close()
    assert_exactly_once(pg_rows(private_pg.url("relay")), ids(2000))


def clients_waiting(bouncer, dbname):
    conn = bouncer.connect(dbname="pgbouncer", user="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW POOLS")
            names = [d[0] for d in cur.description]
            return sum(dict(zip(names, row))["cl_waiting"] for row in cur.fetchall()
                       if dict(zip(names, row))["database"] == dbname)
    finally:
        conn.close()


# -- a batch over statement_timeout (issue 24, item 2) -------------------------------------------------

SLOW_ROWS = ["CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
             " $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$",
             "CREATE TRIGGER slow BEFORE INSERT ON feishu_messages FOR EACH ROW EXECUTE FUNCTION slow_row()"]


def slow_table(url):
    """The target table, made slow: a trigger that sleeps 5 ms a row (a batch of 500: 2.5 s)."""
    setup = open_target(url)
    setup.init_db(trigram=False)
    setup.close()
    for sql in SLOW_ROWS:
        pg_query(url, sql)


def test_a_batch_over_statement_timeout_is_cut_until_it_passes(spawn, invoke, tmp_path, pg_url):
    """statement_timeout 1 s and a table that takes 5 ms a row: a batch of 500 can never pass, and
    was retried unchanged forever. The relay cuts it (250, then 125 rows) and every message arrives
    once; `status` says why batches are small while they are."""
    slow_table(pg_url)
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(1500)])
    proc = spawn("sync", ["sync", "--json", "--timeout", "60"], outbox=outbox_path, target=pg_url,
                 statement_timeout=1)
    common = ["--outbox", outbox_path, "--target", pg_url]

    def cut():
        relay = json.loads(invoke("status", *common, "--json").stdout)["relay"]
        return relay if relay["batch_cut"] else None

    relay = wait_until(cut, timeout=30, what="status to say the batches were cut")
    assert relay["batch_rows"] in (250, 125), relay
    assert relay["batch_cut"] in ("batches cut to 250 rows: a batch of 500 passed statement_timeout (1 s)",
                                  "batches cut to 125 rows: a batch of 250 passed statement_timeout (1 s)"), relay
    assert relay["batch_cut"] in invoke("status", *common).output
    assert proc.wait(90) == 0, proc.output()
    assert json.loads(proc.stdout())["delivered"] == 1500
    assert_exactly_once(pg_rows(pg_url), ids(1500))
    assert "passed statement_timeout" in proc.output()
    assert "target unavailable" not in proc.output(), proc.output()   # slow, not down
    relay = json.loads(invoke("status", *common, "--json").stdout)["relay"]
    assert relay["batch_rows"] == 125 and "canceling statement due to statement timeout" in relay["last_error"]


def test_cut_batches_grow_back_once_the_table_is_fast_again(tmp_outbox, pg_url):
    """One relay, step by step: cut twice by the slow table; then, the trigger dropped, grown back to
    batch_size (doubled after a batch that, scaled to twice the rows, would take under half of
    statement_timeout)."""
    slow_table(pg_url)
    target = open_target(pg_url, statement_timeout=1)
    try:
        with Outbox(tmp_outbox, max_pending=100_000) as outbox:
            put_all(outbox, [flat(i) for i in range(4000)])
            relay = Relay(outbox, target, batch_size=500)
            for rows in (250, 125):
                with pytest.raises(StatementTimeout):
                    relay.step()
                assert relay.beat.batch_rows == rows
            assert relay.step().delivered == 125
            assert relay.beat.batch_rows == 125                # 0.6 s for 125: doubled, it would not pass
            pg_query(pg_url, "DROP TRIGGER slow ON feishu_messages")
            # Each batch is claimed while the one before it is written: a size shows one batch late.
            sizes = [relay.step().delivered for _ in range(4)]
            assert sizes == [125, 125, 250, 500] and relay.beat.batch_rows is None and relay.beat.batch_cut is None
            assert heartbeat(tmp_outbox)["batch_rows"] is None
            relay.drain()
    finally:
        target.close()
    assert_exactly_once(pg_rows(pg_url), ids(4000))


# -- the table dropped (issue 24, item 3) ----------------------------------------------------------------


def test_a_table_dropped_under_the_relay_is_made_again(spawn, invoke, tmp_path, pg_url):
    table_dropped_under_a_running_relay(spawn, invoke, str(tmp_path / "outbox.db"),
                                        Database(pg_url, pg_query, row_stats, pg_rows), pg_count)
