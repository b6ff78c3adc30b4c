"""Issue 5, operations: `status`, `health`, `test`, `import-json`, against a real PostgreSQL server.

Faults are made real: a row the target refuses (a CHECK constraint), a relay
lock held by another "relay", a server stopped with `stop(mode="immediate")`.
A few commands run as real subprocesses (the exit code a monitor sees); the
rest through CliRunner.
"""

import hashlib
import json
import os
import sqlite3
import time

import pytest

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay, RelayLock
from outbox_relay.targets import open_target

from cliutil import run_cli, run_exe
from relayutil import pg_query
from serverproc import wait_until

pytestmark = pytest.mark.usefixtures("hermetic")


def msg(i, text="消息"):
    return {"message_id": f"m{i}", "chat_id": "oc_ops", "sender_id": "ou_ops", "msg_type": "text",
            "text": f"{text} {i}", "create_time": str(1_700_000_000_000 + i)}


def init_target(url, poison=False):
    target = open_target(url)
    target.init_db()
    target.close()
    if poison:  # the target refuses exactly the rows whose text is POISON: they become dead, for real
        pg_query(url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_poison CHECK (text <> 'POISON')")


def deliver(url, outbox_path, payloads):
    outbox = Outbox(outbox_path)
    target = open_target(url)
    try:
        outbox.put_many(payloads)
        return Relay(outbox, target).drain()
    finally:
        outbox.close()
        target.close()


def target_count(url, where="true", params=()):
    return pg_query(url, f"SELECT count(*) FROM feishu_messages WHERE {where}", params)[0][0]


def one_line(text):
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- health -------------------------------------------------------------------------------------

def test_health_0_when_server_up_and_everything_delivered(pg_url, tmp_outbox):
    init_target(pg_url)
    deliver(pg_url, tmp_outbox, [msg(i) for i in range(10)])
    result = run_exe("health", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.returncode == 0, result
    line = one_line(result.stdout)
    assert line.startswith("OK: 0 pending, 10 delivered (kept), target ") and line.endswith(" ms")
    assert result.stderr == ""


def test_health_1_when_dead_rows_and_undelivered_without_a_relay(pg_url, tmp_outbox):
    init_target(pg_url, poison=True)
    totals = deliver(pg_url, tmp_outbox, [msg(1), {**msg(2), "text": "POISON"}, msg(3)])
    assert (totals["delivered"], totals["dead"]) == (2, 1)
    with Outbox(tmp_outbox) as outbox:
        outbox.put(msg(4))  # waiting, and nobody relays it
    result = run_cli("health", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 1, result.output
    line = one_line(result.stdout)
    assert line.startswith("DEGRADED: 1 dead row(s): the target refused them")
    assert "no relay is running and messages are waiting" in line


def test_health_1_when_a_running_relay_is_behind(pg_url, tmp_outbox):
    """A relay holds the lock but the oldest message has waited for 10 minutes."""
    init_target(pg_url)
    with Outbox(tmp_outbox) as outbox:
        outbox.put(msg(1))
    with sqlite3.connect(tmp_outbox) as db:  # committed 10 minutes ago
        db.execute("UPDATE outbox SET received_at = received_at - 600")
    with RelayLock(tmp_outbox):
        result = run_cli("health", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 1, result.output
    line = one_line(result.stdout)
    assert line.startswith("DEGRADED: the relay is behind: the oldest undelivered message is 6"), line


def test_health_2_when_the_server_is_stopped_then_0_again(private_pg, tmp_outbox):
    url = private_pg.url()
    init_target(url)
    deliver(url, tmp_outbox, [msg(i) for i in range(3)])
    private_pg.stop(mode="immediate")
    started = time.monotonic()
    result = run_exe("health", "--outbox", tmp_outbox, "--target", url, "--connect-timeout", 3)
    assert result.returncode == 2, result
    line = one_line(result.stdout)
    assert line.startswith("DOWN: target unreachable: ")
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10
    private_pg.start()
    result = run_exe("health", "--outbox", tmp_outbox, "--target", url)
    assert result.returncode == 0, result
    assert one_line(result.stdout).startswith("OK: 0 pending, 3 delivered")


# -- test (end to end) ----------------------------------------------------------------------------

def test_test_command_delivers_and_reports_latency(pg_url, tmp_outbox):
    init_target(pg_url)
    result = run_cli("test", "--timeout", 20, "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    line = one_line(result.stdout)
    assert line.startswith("OK: test message outbox-relay-test-") and line.endswith(" ms; test row removed")
    # It arrived (the line says so, with the latency) and was removed so it does not count in stats.
    assert target_count(pg_url, "message_id LIKE 'outbox-relay-test-%%'") == 0


def test_test_command_keeps_the_row_when_the_role_may_not_delete(pg_url, pg_server, tmp_outbox):
    init_target(pg_url)
    dbname = pg_url.rsplit("/", 1)[1]
    pg_server.execute("DROP ROLE IF EXISTS no_delete")
    pg_server.execute("CREATE ROLE no_delete LOGIN")
    try:
        pg_server.execute("GRANT SELECT, INSERT, UPDATE ON feishu_messages, feishu_message_events TO no_delete;"
                          " GRANT SELECT ON outbox_relay_schema TO no_delete;"
                          " GRANT TEMPORARY ON DATABASE " + dbname + " TO no_delete", dbname=dbname)
        url = pg_url.replace("postgres@", "no_delete@", 1)
        result = run_cli("test", "--timeout", 20, "--outbox", tmp_outbox, "--target", url)
        assert result.exit_code == 0, result.output
        assert one_line(result.stdout).endswith("test row kept (no DELETE privilege), chat_id outbox-relay-test")
        assert target_count(pg_url, "message_id LIKE 'outbox-relay-test-%%'") == 1
    finally:
        pg_server.execute("DROP OWNED BY no_delete", dbname=dbname)
        pg_server.execute("DROP ROLE no_delete")


def test_test_command_on_a_fresh_database_creates_the_table_like_sync(pg_url, tmp_outbox):
    """`test` relays by itself when no relay runs, so it prepares the table as `run` and `sync` do."""
    result = run_cli("test", "--timeout", 20, "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    assert one_line(result.stdout).startswith("OK: test message ")
    assert target_count(pg_url) == 0  # created, delivered, then removed again


def test_test_command_watches_a_running_relay(pg_url, tmp_outbox):
    """With a relay running (lock held), `test` only watches the target; no relay here -> it times out."""
    init_target(pg_url)
    with RelayLock(tmp_outbox):
        started = time.monotonic()
        result = run_cli("test", "--timeout", 1, "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 1
    assert 1 <= time.monotonic() - started < 5
    assert one_line(result.stdout).startswith("FAILED: test message not in the target after 1 s "
                                              "(the running relay has not delivered it")


def test_test_command_fails_after_its_timeout_with_the_server_down(private_pg, tmp_outbox):
    url = private_pg.url()
    init_target(url)
    private_pg.stop(mode="immediate")
    started = time.monotonic()
    result = run_exe("test", "--timeout", 2, "--outbox", tmp_outbox, "--target", url, "--connect-timeout", 2)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result
    line = one_line(result.stdout)
    assert line.startswith("FAILED: test message not in the target after 2 s: ")
    assert "it stays in the outbox" in line
    assert "Traceback" not in result.stderr
    assert 2 <= elapsed < 10
    # The message is not lost: it is delivered once the server is back.
    private_pg.start()
    with Outbox(tmp_outbox) as outbox:
        assert outbox.counts()["pending"] == 1
    result = run_exe("test", "--timeout", 20, "--outbox", tmp_outbox, "--target", url)
    assert result.returncode == 0, result
    # The first test message arrived with the second (which was then removed): one row.
    assert target_count(url) == 1


# -- status -----------------------------------------------------------------------------------------

def test_status_warns_about_parked_and_dead_rows(pg_url, tmp_outbox):
    init_target(pg_url, poison=True)
    deliver(pg_url, tmp_outbox, [msg(1), {**msg(2), "text": "POISON"}])
    with Outbox(tmp_outbox, max_pending=2) as outbox:
        outbox.put_many([msg(i) for i in range(10, 15)])  # 2 pending, 3 parked
    result = run_cli("status", "--json", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outbox"]["counts"] == {"pending": 2, "delivered": 1, "parked": 3, "dead": 1}
    assert report["target"]["reachable"] is True
    assert report["relay"]["running"] is False
    warnings = report["warnings"]
    assert any(w.startswith("1 dead row(s)") for w in warnings)
    assert any(w.startswith("3 parked row(s) over max_pending") for w in warnings)
    assert any(w.startswith("no relay is running") for w in warnings)
    result = run_cli("status", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [w for w in lines if w.startswith("warning: ")] == [f"warning: {w}" for w in warnings]


def test_status_masks_the_target_password(pg_url, tmp_outbox):
    url = pg_url.replace("postgres@", "postgres:hunter2-secret@", 1)  # trust auth: accepted, unused
    Outbox(tmp_outbox).close()
    result = run_cli("status", "--outbox", tmp_outbox, "--target", url)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "postgres:***@" in result.stdout
    result = run_cli("status", "--json", "--outbox", tmp_outbox, "--target",
                     url.replace("127.0.0.1", "nohost.invalid"))
    assert "hunter2" not in result.output
    assert json.loads(result.stdout)["target"]["reachable"] is False


# -- import-json -----------------------------------------------------------------------------------------

def test_import_json_good_and_bad_entries_idempotent_file_untouched(pg_url, tmp_path, tmp_outbox):
    bad = {7: {"chat_id": "oc_x", "text": "no message_id"},
           500: 42,
           1002: {**msg(99999), "create_time": "yesterday"}}
    entries, good = [], 0
    for index in range(1003):
        if index in bad:
            entries.append(bad[index])
        else:
            entries.append(msg(good, "旧队列的消息"))
            good += 1
    assert good == 1000
    path = tmp_path / "feishu_messages_queue.json"
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns, os.stat(path).st_size)

    result = run_cli("import-json", path, "--json", "--outbox", tmp_outbox)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["total"], report["imported"], report["duplicates"]) == (1003, 1000, 0)
    assert [e["index"] for e in report["errors"]] == [7, 500, 1002]
    assert "message_id" in report["errors"][0]["error"]
    assert "create_time" in report["errors"][2]["error"]

    # Again, human output: 0 new, the same 3 reported by index on stderr.
    result = run_cli("import-json", path, "--outbox", tmp_outbox)
    assert result.exit_code == 0, result.output
    assert result.stdout == "0 imported, 1000 already present, 3 bad (of 1003)\n"
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == \
        ["  entry 7", "  entry 500", "  entry 1002"]
    with Outbox(tmp_outbox) as outbox:
        assert outbox.counts()["pending"] == 1000

    # Relayed: 1,000 rows; importing once more and relaying again adds none.
    init_target(pg_url)
    result = run_cli("sync", "--outbox", tmp_outbox, "--target", pg_url)
    assert result.exit_code == 0, result.output
    assert target_count(pg_url) == 1000
    result = run_cli("import-json", path, "--json", "--outbox", tmp_outbox)
    assert json.loads(result.stdout)["imported"] == 0
    run_cli("sync", "--outbox", tmp_outbox, "--target", pg_url)
    assert target_count(pg_url) == 1000
    assert target_count(pg_url, "text LIKE %s", ("旧队列的消息%",)) == 1000

    after = (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns, os.stat(path).st_size)
    assert after == before


def test_import_json_unreadable_files_are_one_line_errors(tmp_path, tmp_outbox):
    cases = {"not-json.json": b"[{", "object.json": b'{"a": 1}', "latin1.json": '["\xe9"]'.encode("latin-1")}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        result = run_cli("import-json", path, "--outbox", tmp_outbox)
        assert result.exit_code == 1, (name, result.output)
        assert one_line(result.stderr).startswith("Error: "), name
        assert "Traceback" not in result.output


def test_health_follows_the_relays_outage_clock(private_pg, tmp_outbox):
    """With a relay running, a target outage is "degraded" until unhealthy_after, then "down",
    and it is noticed while the relay idles (no message has to wait on it); back to OK after."""
    import threading

    from outbox_relay.sync import RelayLock

    url = private_pg.url()
    init_target(url)
    deliver(url, tmp_outbox, [msg(i) for i in range(3)])
    outbox, target = Outbox(tmp_outbox), open_target(url, connect_timeout=2)
    relay = Relay(outbox, target, probe_interval=0.2)
    with RelayLock(tmp_outbox):
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        try:
            private_pg.stop(mode="immediate")
            # Seen by an idle probe: nothing was pending.
            wait_until(lambda: relay.beat.unavailable_since is not None, 20, what="the idle relay noticing the outage")
            result = run_exe("health", "--outbox", tmp_outbox, "--target", url, "--connect-timeout", 2)
            assert result.returncode == 1, result
            assert one_line(result.stdout).startswith("DEGRADED: ")
            wait_until(lambda: time.time() - relay.beat.unavailable_since > 1.5, 10, what="1.5 s of outage")
            result = run_exe("health", "--outbox", tmp_outbox, "--target", url, "--connect-timeout", 2,
                             "--unhealthy-after", 1)
            assert result.returncode == 2, result
            assert one_line(result.stdout).startswith("DOWN: the relay has not reached the target for ")
            private_pg.start()
            wait_until(lambda: relay.beat.unavailable_since is None, 20, what="the idle relay noticing the recovery")
            result = run_exe("health", "--outbox", tmp_outbox, "--target", url)
            assert result.returncode == 0, result
        finally:
            relay.stop()
            thread.join(10)
            outbox.close()
            target.close()
