"""The relay against a real PostgreSQL server: `sync` of 10,000, poison rows and `replay`, two
hosts into one table, the embedded SQLite default, one relay per outbox, the CLI tools (`check`,
`schema --sql`, `init-db`, `status`), prompt wake-up, and interruptible backoff.

The fault tests (kill -9, outage, flaky network, connection limit, PgBouncer, SIGTERM) are in
test_relay_faults.py.
"""

import json
import logging
import os
import re
import signal
import sqlite3
import threading
import time

import pytest

from outbox_relay.errors import RelayLocked, TableMissing
from outbox_relay.message import Message
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay, RelayLock
from outbox_relay.targets import open_target

from factories import BASE_MS, flat
from relayutil import heartbeat, outbox_with, pg_query, pg_rows, put_all, relay_cmd, row_stats
from scenarios import Database, poison_rows_then_replay, refused_rows_keep_their_words_out, two_hosts_sync
from serverproc import free_port, wait_until


def test_sync_10000_messages_exactly_once_with_every_field(spawn, tmp_path, pg_url):
    outbox_path = str(tmp_path / "outbox.db")
    with Outbox(outbox_path) as outbox:
        assert put_all(outbox, [flat(i) for i in range(10_000)]) == 10_000
        assert outbox.counts()["parked"] == 9_000        # over max_pending: parked, not lost

    proc = spawn("sync", ["sync", "--json"], outbox=outbox_path, target=pg_url)
    assert proc.wait(120) == 0, proc.output()
    report = json.loads(proc.stdout())
    assert report["delivered"] == 10_000 and report["new"] == 10_000 and report["dead"] == 0

    assert row_stats(pg_url) == (10_000, 10_000)
    rows = pg_query(pg_url, "SELECT message_id, chat_id, sender_id, msg_type, text, content->>'text',"
                            " (extract(epoch FROM created_at) * 1000)::bigint, source, outbox_id,"
                            " raw->>'message_id', received_at <= relayed_at FROM feishu_messages")
    by_id = {r[0]: r for r in rows}
    for i in range(10_000):
        mid = f"om_{i:06d}"
        text = f"message {i} 测试"
        assert by_id[mid][1:] == (f"oc_chat_{i % 7}", f"ou_user_{i % 11}", "text", text, text,
                                  BASE_MS + i, "api", i + 1, mid, True), by_id[mid]

    with Outbox(outbox_path) as outbox:
        assert outbox.counts() == {"pending": 0, "delivered": 1000, "parked": 0, "dead": 0}
        kept = [r["message_id"] for r in outbox.rows("delivered", limit=2000)]
        assert kept == [f"om_{i:06d}" for i in range(9000, 10_000)]     # the newest 1000
        assert outbox.integrity_check() == "ok"


def test_step_moves_one_batch_and_says_what_it_did(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox, keep_delivered=10) as outbox:
        put_all(outbox, [flat(i) for i in range(250)])
        relay = Relay(outbox, target, batch_size=100)
        r = relay.step()
        assert (r.claimed, r.delivered, r.new, r.dead, r.error) == (100, 100, 100, 0, None)
        assert r.pruned == 90                               # keep_delivered=10
        # A crash after the target commit and before the local mark re-sends the batch:
        # ON CONFLICT makes it harmless, and the rows are then marked delivered.
        pending = outbox.claim_oldest(100)
        target.write([(row.id, Message.from_json(row.payload), row.received_at) for row in pending[:60]])
        r = relay.step()
        assert (r.claimed, r.delivered, r.new) == (100, 100, 40)
        totals = relay.drain()
        assert totals["delivered"] == 50 and totals["batches"] == 1
        assert relay.step().claimed == 0
        assert outbox.counts()["pending"] == 0
        beat = outbox.get_meta("relay")
        assert beat["last_success"] and beat["last_error"] is None and beat["delivered"] == 250
    target.close()
    assert row_stats(pg_url) == (250, 250)


def test_poison_rows_are_isolated_dead_and_replayed_after_the_fix(invoke, tmp_path, pg_url):
    outbox_path = str(tmp_path / "outbox.db")
    common = ["--outbox", outbox_path, "--target", pg_url]
    still = poison_rows_then_replay(
        invoke, outbox_path, Database(pg_url, pg_query, row_stats, pg_rows),
        damage=["ALTER TABLE feishu_messages ALTER msg_type TYPE varchar(8)",
                "ALTER TABLE feishu_messages ADD CONSTRAINT no_banned_chat CHECK (chat_id <> 'oc_banned')",
                "ALTER TABLE feishu_messages ADD CONSTRAINT no_blocked_sender CHECK (sender_id <> 'ou_blocked')"],
        poison={100: {"sender_id": "ou_blocked"},                 # fails a CHECK the DBA keeps
                250: {"msg_type": "interactive"},                  # 11 characters > varchar(8)
                400: {"chat_id": "oc_banned"}},                    # fails the CHECK
        errors={"om_000100": ['violates check constraint "no_blocked_sender"', "SQLSTATE 23514"],
                "om_000250": ["value too long for type character varying(8)", "SQLSTATE 22001"],
                "om_000400": ['violates check constraint "no_banned_chat"', "SQLSTATE 23514"]},
        # The DBA fixes two causes: those two arrive, the blocked sender stays dead.
        repair=["ALTER TABLE feishu_messages ALTER msg_type TYPE varchar(64)",
                "ALTER TABLE feishu_messages DROP CONSTRAINT no_banned_chat"])
    assert still == {"om_000100"}
    assert pg_query(pg_url, "SELECT msg_type, chat_id FROM feishu_messages WHERE message_id IN"
                            " ('om_000250', 'om_000400') ORDER BY message_id") == [
        ("interactive", "oc_chat_5"), ("text", "oc_banned")]

    # replay by message_id works too (and says so when an id is not dead)
    result = invoke("replay", *common, "om_000100", "om_000001")
    assert "1 requeued" in result.output
    assert result.exit_code == 1 and "1 of the 2 given ids matched no dead row" in result.output
    with Outbox(outbox_path) as outbox:
        assert outbox.counts()["pending"] == 1


def test_refused_rows_keep_the_servers_reason_but_not_the_messages_words(invoke, tmp_path, pg_url):
    """Issue 24, item 14: PostgreSQL's DETAIL ("Failing row contains (…)") and COPY's CONTEXT line
    quote the row; the dead row's error and the log keep the reason, the column and the constraint."""
    secret = "my password is hunter2"
    refused_rows_keep_their_words_out(
        invoke, str(tmp_path / "outbox.db"), Database(pg_url, pg_query, row_stats, pg_rows),
        damage=["ALTER TABLE feishu_messages ADD CONSTRAINT no_banned CHECK (chat_id <> 'oc_banned')",
                "ALTER TABLE feishu_messages ALTER text TYPE varchar(40)"],
        poison={50: {"chat_id": "oc_banned", "content": json.dumps({"text": secret})},
                120: {"content": json.dumps({"text": f"{secret}, and then some more words"})}},
        words="hunter2",
        reasons={"om_000050": ['violates check constraint "no_banned"', "SQLSTATE 23514"],
                 "om_000120": ["value too long for type character varying(40)", "column text", "SQLSTATE 22001"]})


def test_two_hosts_overlapping_ids_into_one_table(spawn, tmp_path, pg_url):
    """Two gateway hosts got some of the same messages; their relays run at once, against a
    database with no table yet: one row per message_id, both outboxes fully delivered."""
    paths, reports = two_hosts_sync(spawn, tmp_path, pg_url)
    assert [r["delivered"] for r in reports] == [6000, 6000]
    assert sum(r["new"] for r in reports) == 9000          # the overlap was written once
    assert row_stats(pg_url) == (9000, 9000)
    assert set(pg_rows(pg_url)) == {f"om_{i:06d}" for i in range(9000)}
    for path in paths:
        with Outbox(path) as outbox:
            assert outbox.counts()["pending"] == outbox.counts()["parked"] == outbox.counts()["dead"] == 0


def archive_count(path):
    try:
        conn = sqlite3.connect(path, timeout=5)
    except sqlite3.Error:
        return -1
    try:
        return conn.execute("SELECT count(DISTINCT message_id) FROM feishu_messages").fetchone()[0]
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


def test_embedded_default_sync_and_run_write_the_local_sqlite_archive(spawn, tmp_path):
    """No target configured anywhere (empty cwd, no OUTBOX_RELAY_* variables): both `sync`
    and `run --no-http` deliver into data/archive.db and say so."""
    with Outbox(tmp_path / "data" / "outbox.db") as outbox:
        put_all(outbox, [flat(i) for i in range(1500)])
    proc = spawn("sync", ["sync"])
    assert proc.wait(60) == 0, proc.output()
    assert "1500 delivered" in proc.output()
    assert "no target configured" in proc.output() and "data/archive.db" in proc.output()
    archive = str(tmp_path / "data" / "archive.db")
    assert archive_count(archive) == 1500

    run = spawn("run", ["run", "--no-http"])
    try:
        with Outbox(tmp_path / "data" / "outbox.db") as outbox:
            for start in range(1500, 2000, 100):
                put_all(outbox, [flat(i) for i in range(start, start + 100)])
        wait_until(lambda: archive_count(archive) == 2000, timeout=30, what="the archive to hold 2000")
        assert run.alive()
        run.signal(signal.SIGTERM)
        assert run.wait(10) == 0, run.output()
    finally:
        run.stop()
    assert "no target configured" in run.output() and "archive.db" in run.output()
    conn = sqlite3.connect(archive)
    try:
        counts = conn.execute("SELECT count(*), count(DISTINCT message_id) FROM feishu_messages").fetchone()
        assert counts == (2000, 2000)
    finally:
        conn.close()


def test_a_table_dropped_from_the_sqlite_archive_is_made_again(tmp_path):
    """The embedded archive reads its table from the catalog too (issue 24, item 3): the batch that
    finds it dropped waits (TableMissing), and the next one makes it again and arrives."""
    archive = str(tmp_path / "archive.db")
    target = open_target(f"sqlite:///{archive}")
    try:
        with Outbox(tmp_path / "outbox.db") as outbox:
            put_all(outbox, [flat(i) for i in range(10)])
            relay = Relay(outbox, target)
            assert relay.drain()["delivered"] == 10
            conn = sqlite3.connect(archive, isolation_level=None)
            conn.execute("DROP TABLE feishu_messages")
            conn.close()
            put_all(outbox, [flat(i) for i in range(10, 30)])
            with pytest.raises(TableMissing):
                relay.step()
            assert relay.step().delivered == 20
    finally:
        target.close()
    assert archive_count(archive) == 20


def refused_to_relay(spawn, outbox_path, url, why):
    """`run` and `sync` on this outbox exit non-zero at once, saying `why` in one line."""
    for args in (["run", "--no-http"], ["sync"]):
        second = spawn("second", args, outbox=outbox_path, target=url)
        assert second.wait(30) != 0
        out = second.output()
        assert why in out and "Traceback" not in out, out


def test_a_second_relay_on_the_same_outbox_exits_non_zero(spawn, tmp_path, pg_url):
    # spawn kills whatever is still running at teardown.
    outbox_path = outbox_with(tmp_path / "outbox.db", [])
    first = spawn("first", ["run", "--no-http"], outbox=outbox_path, target=pg_url)

    def held():
        try:
            RelayLock(outbox_path).acquire().release()
        except RelayLocked:
            return True
        return False
    wait_until(held, timeout=20, what="the first relay to take the lock")
    refused_to_relay(spawn, outbox_path, pg_url, f"another relay (pid {first.pid}) is already working {outbox_path}")
    assert first.alive()
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0


def test_a_hard_linked_alias_of_the_outbox_cannot_start_a_second_relay(spawn, tmp_path, pg_url):
    """The lock file is named after the outbox's real path, which a second name (a hard link, here in
    another directory) does not share; and SQLite would keep a second WAL beside that name. So a file
    with two names is refused before SQLite opens it, by every command that would write it."""
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(0)])
    first = spawn("first", ["run", "--no-http"], outbox=outbox_path, target=pg_url)
    wait_until(lambda: row_stats(pg_url)[0] == 1, timeout=30, what="the first relay delivering")
    (tmp_path / "elsewhere").mkdir()
    alias = str(tmp_path / "elsewhere" / "alias.db")
    os.link(outbox_path, alias)
    refused_to_relay(spawn, alias, pg_url, f"outbox {os.path.realpath(alias)} has 2 names (hard links)")
    assert not os.path.exists(alias + "-wal") and not os.path.exists(alias + ".lock")
    (tmp_path / "one.json").write_text(json.dumps(flat(1)))
    result = spawn("put", ["put", str(tmp_path / "one.json")], outbox=alias)  # a writer is refused too
    assert result.wait(30) != 0 and "hard links" in result.output()
    assert first.alive() and row_stats(pg_url)[0] == 1
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0


# -- CLI tools -----------------------------------------------------------------------------------


def test_check_prints_version_latency_and_connections(invoke, pg_url):
    result = invoke("check", "--target", pg_url)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"server\s+\d+\.\d+", out)
    assert re.search(r"round trip ms\s+\d+(\.\d+)?", out)
    assert re.search(r"connections in use\s+\d+", out) and re.search(r"server max_connections\s+\d+", out)
    assert "role connection limit" in out and "our pool_size" in out

    info = json.loads(invoke("check", "--target", pg_url, "--json").stdout)
    assert info["latency_ms"] > 0 and info["max_connections"] >= 1 and info["connections_in_use"] >= 1
    assert info["server_version"][0].isdigit() and info["pool_size"] == 2

    port = free_port()
    down = invoke("check", "--target", f"postgresql://u:pw-secret@127.0.0.1:{port}/x")
    assert down.exit_code == 1 and "Error:" in down.output and "pw-secret" not in down.output


def test_schema_sql_prints_the_ddl_and_init_db_applies_it_idempotently(invoke, pg_url, tmp_path):
    ddl = invoke("schema", "--sql", "--target", pg_url).output
    assert 'CREATE TABLE IF NOT EXISTS "feishu_messages"' in ddl
    assert "message_id   varchar(128) PRIMARY KEY" in ddl and "jsonb" in ddl and "gin_trgm_ops" in ddl
    assert "outbox_relay_schema" in ddl
    custom = invoke("schema", "--target", pg_url, "--table", "ops.chat_log").output
    assert 'CREATE TABLE IF NOT EXISTS "ops"."chat_log"' in custom
    lite = invoke("schema", "--sql", "--dialect", "sqlite").output
    assert "jsonb" not in lite and 'CREATE TABLE IF NOT EXISTS "feishu_messages"' in lite

    first = invoke("init-db", "--target", pg_url)
    assert first.exit_code == 0 and "schema version 0 -> 2" in first.output
    assert "trigram index: created" in first.output
    second = invoke("init-db", "--target", pg_url)
    assert second.exit_code == 0 and "schema version 2 -> 2" in second.output
    versions = pg_query(pg_url, "SELECT table_name, version FROM outbox_relay_schema")
    assert versions == [("feishu_messages", 2)]
    archive = tmp_path / "a.db"
    assert "schema version 0 -> 2" in invoke("init-db", "--target", f"sqlite:///{archive}").output


def status_json(invoke, outbox_path, url):
    result = invoke("status", "--outbox", outbox_path, "--target", url, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_shows_the_heartbeat_and_target_reachability(spawn, invoke, tmp_path, private_pg):
    private_pg.execute("CREATE DATABASE relay")
    url = private_pg.url("relay")
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(100)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url)
    wait_until(lambda: row_stats(url)[0] == 100, timeout=30, what="100 rows")
    report = wait_until(lambda: (lambda r: r if r["relay"]["last_success"] else None)(
        status_json(invoke, outbox_path, url)), timeout=10, what="a heartbeat")
    assert report["relay"]["running"] is True and report["relay"]["pid"] == proc.pid
    assert report["relay"]["heartbeat_age_s"] < 10 and report["relay"]["last_error"] is None
    assert report["target"]["reachable"] is True and report["target"]["latency_ms"] >= 0
    human = invoke("status", "--outbox", outbox_path, "--target", url).output
    assert "reachable" in human and "relay" in human

    private_pg.stop(mode="immediate")
    with Outbox(outbox_path) as outbox:
        outbox.put(flat(100))
    report = wait_until(lambda: (lambda r: r if r["relay"]["unavailable_since"] else None)(
        status_json(invoke, outbox_path, url)), timeout=20, what="the relay to report the outage")
    assert report["target"]["reachable"] is False and report["target"]["error"]
    assert report["relay"]["last_error"] and report["relay"]["running"] is True
    assert any("has not reached the target" in w for w in report["warnings"])
    assert proc.alive()

    private_pg.start()
    wait_until(lambda: row_stats(url)[0] == 101, timeout=40, what="the message after the outage")
    report = wait_until(lambda: (lambda r: r if not r["relay"]["unavailable_since"] else None)(
        status_json(invoke, outbox_path, url)), timeout=10, what="the relay to recover")
    assert report["target"]["reachable"] is True and report["warnings"] == []
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0


# -- waking and waiting --------------------------------------------------------------------------


def test_a_put_while_run_idles_arrives_within_about_a_second(spawn, tmp_path, pg_url):
    outbox_path = outbox_with(tmp_path / "outbox.db", [])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=pg_url)
    try:
        with Outbox(outbox_path) as outbox:                # another process, as the webhook would be
            outbox.put(flat(0))
            wait_until(lambda: row_stats(pg_url)[0] == 1, timeout=30, what="the first message")
            latencies = []
            for i in range(1, 4):
                # let the relay go idle (its idle poll grows to its maximum), then put one
                wait_until(lambda: outbox.get_meta("relay", {}).get("last_success"), timeout=10)
                time.sleep(0.7)  # an idle period, not a wait for a condition
                started = time.monotonic()
                outbox.put(flat(i))
                wait_until(lambda want=i + 1: row_stats(pg_url)[0] == want, timeout=10, interval=0.01,
                           what=f"message {i}")
                latencies.append(time.monotonic() - started)
        assert max(latencies) <= 2.0, latencies
        assert proc.alive()
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(10)
        proc.stop()


def test_an_in_process_put_wakes_the_relay_at_once(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    outbox = Outbox(tmp_outbox)
    relay = Relay(outbox, target)
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        wait_until(lambda: outbox.get_meta("relay"), timeout=10, what="the relay's first heartbeat")
        time.sleep(0.7)  # an idle period, not a wait for a condition
        started = time.monotonic()
        outbox.put(flat(1))
        wait_until(lambda: row_stats(pg_url)[0] == 1, timeout=10, interval=0.01, what="the message")
        assert time.monotonic() - started <= 2.0
    finally:
        relay.stop()
        thread.join(10)
        outbox.close()
        target.close()
    assert not thread.is_alive()


class _Delays(logging.Handler):
    """Collects the relay's "retrying in N s" debug lines as they are emitted."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.long_wait = threading.Event()
        self.delays = []

    def emit(self, record):
        if record.getMessage().startswith("retrying in"):
            delay = record.args[0]
            self.delays.append(delay)
            if delay >= 1.0:
                self.long_wait.set()


def test_the_backoff_wait_ends_at_once_on_stop(tmp_outbox):
    port = free_port()                         # nothing listens: connection refused
    target = open_target(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=2)
    outbox = Outbox(tmp_outbox)
    outbox.put(flat(1))
    relay = Relay(outbox, target, backoff_max=30)
    handler = _Delays()
    logger = logging.getLogger("outbox_relay.sync")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        assert handler.long_wait.wait(30), handler.delays
        started = time.monotonic()
        relay.stop()
        thread.join(5)
        stopped_in = time.monotonic() - started
    finally:
        relay.stop()
        thread.join(10)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        outbox.close()
        target.close()
    assert not thread.is_alive()
    assert stopped_in < 0.5, (stopped_in, handler.delays)   # the wait it was in was >= 1 s
    # exponential: the delays grew (capped full jitter, so only roughly)
    assert len(handler.delays) >= 2 and max(handler.delays) >= 1.0
    with Outbox(tmp_outbox) as outbox:
        row = outbox.get(flat(1)["message_id"])
        assert row["state"] == "pending" and row["attempts"] >= 2 and "refused" in row["last_error"]


def test_run_started_while_the_server_is_down_creates_the_table_when_it_comes_up(spawn, tmp_path, private_pg):
    private_pg.execute("CREATE DATABASE relay")
    url = private_pg.url("relay")
    private_pg.stop(mode="fast")
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(300)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url)
    try:
        wait_until(lambda: heartbeat(outbox_path).get("last_error"), timeout=20,
                   what="the relay to meet the stopped server")
        private_pg.start()
        wait_until(lambda: row_stats(url)[0] == 300, timeout=40, what="300 rows after the server came up")
        assert row_stats(url) == (300, 300) and proc.alive()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.stop()


def test_relay_cmd_runs_the_installed_cli():
    import subprocess
    out = subprocess.run(relay_cmd() + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "sync" in out.stdout and "init-db" in out.stdout


def test_big_messages_are_split_across_transactions(tmp_outbox, pg_url):
    """500 messages near the 1 MB limit must not become one COPY that a slow link cannot finish
    within statement_timeout (retried forever): a batch is cut into transactions by size."""
    big = "大" * 100_000                                   # 300 kB of UTF-8, twice in each payload
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        put_all(outbox, [flat(i, text=big) for i in range(40)])
        r = Relay(outbox, target).step()
    target.close()
    assert (r.claimed, r.delivered, r.new) == (40, 40, 40)
    transactions = pg_query(pg_url, "SELECT count(DISTINCT xmin::text) FROM feishu_messages")[0][0]
    assert transactions >= 3
    assert pg_query(pg_url, "SELECT min(length(text)) FROM feishu_messages")[0][0] == 100_000


def test_sync_max_batches_and_a_schema_qualified_table(invoke, tmp_path, pg_url):
    outbox_path = str(tmp_path / "outbox.db")
    pg_query(pg_url, "CREATE SCHEMA ops")
    with Outbox(outbox_path) as outbox:
        put_all(outbox, [flat(i) for i in range(1000)])
    common = ["--outbox", outbox_path, "--target", pg_url, "--table", "ops.chat_log", "--batch-size", "150"]
    result = invoke("sync", *common, "--max-batches", "2", "--json")
    report = json.loads(result.stdout)
    assert (report["batches"], report["delivered"]) == (2, 300)
    assert result.exit_code == 1 and "700 message(s) still waiting" in result.stderr
    assert "--max-batches 2 reached" in result.stderr
    assert pg_query(pg_url, "SELECT count(*) FROM ops.chat_log") == [(300,)]
    report = json.loads(invoke("sync", *common, "--json").stdout)
    assert (report["batches"], report["delivered"]) == (5, 700)
    assert row_stats(pg_url, "ops\".\"chat_log") == (1000, 1000)
    versions = pg_query(pg_url, "SELECT table_name, version FROM outbox_relay_schema")
    assert versions == [("ops.chat_log", 2)]


def test_a_relay_starting_while_status_probes_the_lock_is_not_refused(tmp_outbox):
    """`status`/`health` learn whether a relay runs by taking its lock for an instant; a relay
    starting at that instant must still start (a real second relay is still refused)."""
    from outbox_relay.operate.health import relay_running
    stop, failures = threading.Event(), []

    def monitor():
        while not stop.is_set():
            relay_running(tmp_outbox)
            stop.wait(0.001)

    probe = threading.Thread(target=monitor)
    probe.start()
    try:
        for _ in range(200):
            try:
                RelayLock(tmp_outbox).acquire().release()
            except RelayLocked as e:
                failures.append(e)
    finally:
        stop.set()
        probe.join(10)
    assert failures == []
    with RelayLock(tmp_outbox):
        assert relay_running(tmp_outbox) is True
        started = time.monotonic()
        with pytest.raises(RelayLocked):
            RelayLock(tmp_outbox).acquire()
        assert time.monotonic() - started < 2
    assert relay_running(tmp_outbox) is False
