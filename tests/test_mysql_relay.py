"""The relay's guarantees on real MariaDB servers, as test_relay.py and test_relay_faults.py show them
on PostgreSQL: 10,000 messages exactly once with every field; kill -9 of the relay at random moments
of a 20,000 drain; the server killed and restarted behind the same address while puts continue;
poison rows dead with the server's words and replayed after the fix; eight writers and a relay under
MAX_USER_CONNECTIONS 2; two hosts' relays into one table. Each ends by comparing the set of
message_ids in the table with the set that was put."""

import datetime as dt
import json
import os
import random
import signal
import threading
import time
import urllib.parse

import pytest

from outbox_relay.outbox import Outbox
from outbox_relay.timeconv import datetime_to_ms

from cliutil import run_cli
from factories import BASE_MS, flat, ids
from relayutil import SEED, Writer, assert_exactly_once, heartbeat, outbox_left, put_all
from serverproc import wait_until

mh = pytest.importorskip("mariaharness", reason="tests/mariaharness.py needs PyMySQL (the [mysql] extra)")


def count(url):
    return mh.row_stats(url)[0]


def as_user(url, user, password):
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()


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
    n = 20_000
    outbox_path = str(tmp_path / "outbox.db")
    with Outbox(outbox_path) as outbox:
        put_all(outbox, [flat(i) for i in range(n)])
    rng = random.Random(SEED)
    kills, seen = [], 0
    for round_ in range(8):
        proc = spawn(f"run-{round_}", ["run", "--no-http"], outbox=outbox_path, target=maria_url, batch_size=50)
        # This incarnation has made progress (so the kill lands mid-drain, not during start-up) ...
        seen = wait_until(lambda before=seen: (lambda c: c if c > before else 0)(count(maria_url)), timeout=30,
                          what=f"progress in round {round_} (seed {SEED})")
        if seen >= n:
            break
        time.sleep(rng.uniform(0, 0.3))  # ... then a random moment: inside a batch, between, marking
        assert proc.alive(), proc.output()
        assert proc.kill9() == -signal.SIGKILL
        kills.append(count(maria_url))
        seen = kills[-1]
        if len(kills) >= 6:
            break
    assert len(kills) >= 5, f"only {len(kills)} kills landed before the drain ended: {kills} (seed {SEED})"
    assert kills[-1] < n, kills
    final = spawn("final", ["sync", "--json"], outbox=outbox_path, target=maria_url, batch_size=500)
    assert final.wait(120) == 0, final.output()
    assert_exactly_once(mh.message_ids(maria_url), ids(n))
    assert outbox_left(outbox_path) == {"pending": 0, "delivered": 1000, "parked": 0, "dead": 0}


def test_server_killed_and_restarted_while_puts_continue(spawn, tmp_path, private_maria):
    """The server dies (kill -9) and comes back behind the same address, as after a failover: the
    relay is never restarted, the writers never notice, and every message arrives once."""
    private_maria.create_database("relay")
    url = private_maria.url("relay")
    outbox_path = str(tmp_path / "outbox.db")
    Outbox(outbox_path).close()
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url, batch_size=100)
    writer = Writer(outbox_path)
    writer.start()
    try:
        wait_until(lambda: count(url) >= 200, timeout=30, what="the relay to deliver before the outage")
        private_maria.kill()
        stopped_at, put_at_stop = time.time(), writer.put
        wait_until(lambda: (heartbeat(outbox_path).get("last_error_at") or 0) > stopped_at, timeout=20,
                   what="the relay to record the outage")
        wait_until(lambda: writer.put >= put_at_stop + 1500, timeout=30, what="1500 puts during the outage")
        assert outbox_left(outbox_path)["parked"] > 0             # over max_pending: parked, kept
        assert proc.alive(), proc.output()
        private_maria.start()
        wait_until(lambda: count(url) > put_at_stop, timeout=60, what="deliveries after the restart")
        expected = writer.stop()
        wait_until(lambda: count(url) >= len(expected), timeout=60, what="every message after the outage")
        assert writer.errors == []
        assert_exactly_once(mh.message_ids(url), expected)
        assert proc.alive(), proc.output()
        wait_until(lambda: heartbeat(outbox_path).get("unavailable_since") is None, timeout=10)
        assert "target unavailable" in proc.output() and "reachable again" in proc.output()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.output()
    finally:
        writer.halt.set()
    left = outbox_left(outbox_path)
    assert left["pending"] == left["parked"] == left["dead"] == 0


@pytest.mark.usefixtures("hermetic")
def test_poison_rows_are_dead_with_the_servers_words_and_replayed_after_the_fix(tmp_path, maria_url):
    outbox_path = str(tmp_path / "outbox.db")
    common = ["--outbox", outbox_path, "--target", maria_url]
    assert run_cli("init-db", *common).exit_code == 0
    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY msg_type varchar(8) NOT NULL")
    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb3 NOT NULL")
    poison = {100: {"msg_type": "interactive"},     # 11 characters > varchar(8): refused, not truncated
              250: {"text": "emoji 😀 here"}}       # a 4-byte character into a utf8mb3 column
    with Outbox(outbox_path) as outbox:
        put_all(outbox, [flat(i, **poison.get(i, {})) for i in range(500)])

    result = run_cli("sync", *common, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["delivered"], report["dead"], report["batches"]) == (498, 2, 1)
    assert mh.row_stats(maria_url) == (498, 498)
    errors = {d["message_id"]: d["last_error"] for d in json.loads(run_cli("dead", *common, "--json").stdout)}
    assert set(errors) == {"om_000100", "om_000250"}
    assert "Data too long for column 'msg_type'" in errors["om_000100"] and "MySQL error 1406" in errors["om_000100"]
    assert "Incorrect string value" in errors["om_000250"] and "MySQL error 1366" in errors["om_000250"]

    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY msg_type varchar(64) NOT NULL")
    mh.query(maria_url, "ALTER TABLE feishu_messages MODIFY text longtext CHARACTER SET utf8mb4"
                        " COLLATE utf8mb4_bin NOT NULL")
    result = run_cli("replay", *common, "--all")
    assert result.exit_code == 0 and "2 requeued" in result.output
    report = json.loads(run_cli("sync", *common, "--json").stdout)
    assert (report["delivered"], report["dead"]) == (2, 0)
    assert_exactly_once(mh.message_ids(maria_url), ids(500))
    assert mh.query(maria_url, "SELECT msg_type, text FROM feishu_messages WHERE message_id IN"
                               " ('om_000100', 'om_000250') ORDER BY message_id") == [
        ("interactive", "[card]"), ("text", "emoji 😀 here")]


def test_eight_writers_and_a_relay_under_max_user_connections_2(spawn, tmp_path, maria_server, maria_url):
    user = f"relay_{os.getpid()}"
    maria_server.drop_user(user)
    maria_server.create_user(user, "relay-pw", database=urllib.parse.urlsplit(maria_url).path.lstrip("/"),
                             max_user_connections=2)
    url = as_user(maria_url, user, "relay-pw")
    outbox_path = str(tmp_path / "outbox.db")
    Outbox(outbox_path).close()
    samples, stop_sampling = [], threading.Event()
    sampler = maria_server.connect()

    def sample():
        with sampler.cursor() as cur:
            while not stop_sampling.is_set():
                cur.execute("SELECT count(*) FROM information_schema.processlist WHERE user = %s", (user,))
                samples.append(cur.fetchone()[0])
                stop_sampling.wait(0.005)

    per_writer, errors = 500, []

    def write(k):
        try:
            with Outbox(outbox_path) as outbox:
                for i in range(per_writer):
                    outbox.put(flat(i, prefix=f"w{k}"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    sampler_thread = threading.Thread(target=sample, daemon=True)
    sampler_thread.start()
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url, pool_size=2, batch_size=100)
    writers = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    try:
        for w in writers:
            w.start()
        for w in writers:
            w.join(120)
        expected = set().union(*(ids(per_writer, prefix=f"w{k}") for k in range(8)))
        wait_until(lambda: count(url) >= len(expected), timeout=60, what="all 4000 messages")
        assert errors == []
        assert_exactly_once(mh.message_ids(url), expected)
        assert heartbeat(outbox_path)["last_error"] is None      # nothing failed, not even once
        assert proc.alive()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        stop_sampling.set()
        sampler_thread.join(5)
        sampler.close()
        maria_server.drop_user(user)
    assert len(samples) > 20 and 1 <= max(samples) <= 2, samples
    log = proc.output()
    assert "Too many" not in log and "target unavailable" not in log and "ERROR" not in log, log


def test_two_hosts_overlapping_ids_into_one_table(spawn, tmp_path, maria_url):
    """Two relays at once, against a database with no table yet, with 3,000 ids in common: one row
    per message_id (a deadlock between their ON DUPLICATE KEY inserts is retried, not fatal)."""
    paths = [str(tmp_path / "host-a.db"), str(tmp_path / "host-b.db")]
    for path, span in zip(paths, (range(0, 6000), range(3000, 9000))):
        with Outbox(path) as outbox:
            put_all(outbox, [flat(i) for i in span])
    procs = [spawn(f"sync-{n}", ["sync", "--json"], outbox=path, target=maria_url, batch_size=size)
             for n, (path, size) in enumerate(zip(paths, (250, 400)))]
    for p in procs:
        assert p.wait(120) == 0, p.output()
    reports = [json.loads(p.stdout()) for p in procs]
    assert [r["delivered"] for r in reports] == [6000, 6000]
    assert sum(r["new"] for r in reports) == 9000          # the overlap was written once
    assert_exactly_once(mh.message_ids(maria_url), ids(9000))
    newest = mh.query(maria_url, "SELECT max(relayed_at) FROM feishu_messages")[0][0]
    assert abs((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - newest).total_seconds()) < 120
