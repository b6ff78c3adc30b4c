"""Load and faults that the PostgreSQL and the MariaDB tests both put on their target, written once:
each test says which server, how to count its rows and how to stop it; the scenario is the same.

    in_threads(fn, args)            fn(a) for each a, in threads of their own, all at once
    Sampler(read)                   read() every 5 ms until stop(), e.g. the connections held
    write_through_one_pool(...)     eight threads writing through one Target's pool
    kill_9_repeatedly(...)          `run` killed -9 at random moments of a drain
    run_through_an_outage(...)      the server stopped and started while puts continue
    eight_writers_and_a_relay(...)  eight writers and a `run` relay under a connection limit
    two_hosts_sync(...)             two hosts' outboxes, overlapping, synced into one table at once
    poison_rows_then_replay(...)    rows the table refuses go dead with the server's words; fixed, replayed
    pool_through_a_server_crash(...) a pooled connection from before a crash is discarded, not reused
    every_order_of_five_events(...) a message and five events about it, in each of the 5! orders
    bad_events_beside_good_ones(...) events that cannot be archived: a 400 each; the good ones all arrive
    table_dropped_under_a_running_relay(...) DROP TABLE under `run`: made again; check fails, init-db makes it
    refused_rows_keep_their_words_out(...) dead rows' errors and the log: the reason, not the message's words
    Database(url, query, row_stats, message_ids)   how a scenario reads one server's table
"""

import collections
import itertools
import json
import random
import signal
import threading
import time

import pytest

from outbox_relay.archive.history import message_history
from outbox_relay.errors import TargetUnavailable
from outbox_relay.outbox import Outbox
from outbox_relay.targets import open_target

from factories import feishu_edit, feishu_message, feishu_reaction, feishu_recall, flat, flats, ids, rows_of
from relayutil import SEED, Writer, assert_exactly_once, heartbeat, outbox_counts, outbox_with, put_all
from serverproc import wait_until
from serviceutil import metric, post, running_service, scrape

__all__ = ["in_threads", "Sampler", "count_on", "write_through_one_pool", "kill_9_repeatedly",
           "run_through_an_outage", "eight_writers_and_a_relay", "two_hosts_sync", "poison_rows_then_replay",
           "pool_through_a_server_crash", "table_dropped_under_a_running_relay",
           "refused_rows_keep_their_words_out", "every_order_of_five_events", "bad_events_beside_good_ones",
           "Database"]

# One server's table as a scenario reads it: query(url, sql) -> rows; row_stats(url) -> (rows, distinct
# message_ids); message_ids(url) -> every message_id in the table.
Database = collections.namedtuple("Database", "url query row_stats message_ids")


def in_threads(fn, args, timeout=60):
    """fn(a) for each a in args, each in a thread of its own, all at once; -> (results, errors):
    what the calls returned and what they raised, each in the order they finished."""
    results, errors = [], []

    def call(a):
        try:
            results.append(fn(a))
        except Exception as e:  # noqa: BLE001 - returned, and asserted by the test
            errors.append(e)

    threads = [threading.Thread(target=call, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results, errors


class Sampler(threading.Thread):
    """read() every 5 ms, from start() until stop(), which returns the values read."""

    def __init__(self, read):
        super().__init__(daemon=True)
        self.read = read
        self.values = []
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.values.append(self.read())
            self._done.wait(0.005)

    def stop(self):
        self._done.set()
        self.join(5)
        return self.values


def count_on(conn, sql, params=None):
    """The count sql returns, on an open connection (a sampler's: no connection of its own each time)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


# -- the target layer ------------------------------------------------------------------------------


def write_through_one_pool(target, connections):
    """Eight threads write 10 batches of 50 each through target (and count after each), while
    connections() -- the connections target holds on its server -- is sampled.
    -> (what the writers raised, the samples)"""

    def writer(k):
        for b in range(10):
            target.write(rows_of(flats(50, prefix=f"w{k}_{b}"), first_id=k * 1000 + b * 50))
            target.count()

    sampler = Sampler(connections)
    sampler.start()
    try:
        _, errors = in_threads(writer, range(8))
    finally:
        samples = sampler.stop()
    return errors, samples


# -- the relay ---------------------------------------------------------------------------------------


def kill_9_repeatedly(spawn, outbox_path, url, count, n):
    """`run` (batch_size=50) on an outbox of n messages, killed -9 at a random moment (SEED) once it
    has made progress, again and again: at most 6 kills in 8 rounds, fewer if the drain ends first.
    -> count(url) at each kill."""
    rng = random.Random(SEED)
    kills, seen = [], 0
    for round_ in range(8):
        proc = spawn(f"run-{round_}", ["run", "--no-http"], outbox=outbox_path, target=url, batch_size=50)
        # This incarnation has made progress (so the kill lands mid-drain, not during start-up) ...
        seen = wait_until(lambda before=seen: (lambda c: c if c > before else 0)(count(url)), timeout=30,
                          what=f"progress in round {round_} (seed {SEED})")
        if seen >= n:
            break
        time.sleep(rng.uniform(0, 0.12))  # ... then a random moment: inside a batch, between, marking
        assert proc.alive(), proc.output()
        assert proc.kill9() == -signal.SIGKILL
        kills.append(count(url))
        seen = kills[-1]
        if len(kills) >= 6:
            break
    return kills


def drain_through_kill_9(spawn, tmp_path, url, count, stored_ids, n=20_000):
    """n messages drained into url by a `run` killed -9 again and again (kill_9_repeatedly), then a
    `sync` to the end: every message exactly once (stored_ids(url): the message_ids in the table),
    and an outbox file that SQLite finds intact after all those kills."""
    outbox_path = outbox_with(tmp_path / "outbox.db", [flat(i) for i in range(n)])
    kills = kill_9_repeatedly(spawn, outbox_path, url, count, n)
    assert len(kills) >= 5, f"only {len(kills)} kills landed before the drain ended: {kills} (seed {SEED})"
    assert kills[-1] < n, kills
    final = spawn("final", ["sync", "--json"], outbox=outbox_path, target=url, batch_size=500)
    assert final.wait(120) == 0, final.output()
    assert_exactly_once(stored_ids(url), ids(n))
    assert outbox_counts(outbox_path) == {"pending": 0, "delivered": 1000, "parked": 0, "dead": 0}
    with Outbox(outbox_path) as outbox:
        assert outbox.integrity_check() == "ok"


def run_through_an_outage(spawn, outbox_path, url, count, stop, start):
    """A relay `run`s into url while a Writer puts, and the server is stopped (stop()) and started
    again (start()) behind the same address. Checked on the way: the relay records the outage and
    never exits, the writer is not slowed down (1500 puts while the server is down), the overflow is
    parked, not lost; after it every message arrives, the relay's log says the target was
    unavailable and reachable again, SIGTERM stops it with 0 and the outbox is left empty.
    -> the ids put (for the test's exactly-once check)."""
    outbox_path = outbox_with(outbox_path, [])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url, batch_size=100)
    writer = Writer(outbox_path)
    writer.start()
    try:
        wait_until(lambda: count(url) >= 200, timeout=30, what="the relay to deliver before the outage")
        stop()
        stopped_at, put_at_stop = time.time(), writer.put
        wait_until(lambda: (heartbeat(outbox_path).get("last_error_at") or 0) > stopped_at, timeout=20,
                   what="the relay to record the outage")
        wait_until(lambda: writer.put >= put_at_stop + 1500, timeout=30, what="1500 puts during the outage")
        assert outbox_counts(outbox_path)["parked"] > 0             # over max_pending: parked, kept
        assert proc.alive(), proc.output()
        start()
        wait_until(lambda: count(url) > put_at_stop, timeout=60, what="deliveries after the restart")
        expected = writer.stop()
        wait_until(lambda: count(url) >= len(expected), timeout=60, what="every message after the outage")
        assert writer.errors == []
        assert proc.alive(), proc.output()                     # it never crashed or exited
        wait_until(lambda: heartbeat(outbox_path).get("unavailable_since") is None, timeout=10)
        assert "target unavailable" in proc.output() and "reachable again" in proc.output()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.output()
    finally:
        writer.halt.set()
    left = outbox_counts(outbox_path)
    assert left["pending"] == left["parked"] == left["dead"] == 0
    return expected


def eight_writers_and_a_relay(spawn, outbox_path, url, count, connections):
    """Eight threads put 500 messages each while a relay (`run`, pool_size=2, batch_size=100)
    delivers them into url, and connections() -- the relay's connections on the server -- is
    sampled. Checked: every message arrives, nothing failed, not even once (the writers, the
    relay's heartbeat), SIGTERM stops the relay with 0. -> (the ids put, the samples, the relay's log)"""
    outbox_path = outbox_with(outbox_path, [])

    def write(k):
        with Outbox(outbox_path) as outbox:
            for i in range(500):
                outbox.put(flat(i, prefix=f"w{k}"))

    sampler = Sampler(connections)
    sampler.start()
    try:
        proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=url, pool_size=2, batch_size=100)
        _, errors = in_threads(write, range(8), timeout=120)
        expected = set().union(*(ids(500, prefix=f"w{k}") for k in range(8)))
        wait_until(lambda: count(url) >= len(expected), timeout=60, what="all 4000 messages")
        assert errors == []
        info = heartbeat(outbox_path)
        assert info["last_error"] is None, info                # nothing failed, not even once
        assert proc.alive()
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        samples = sampler.stop()
    return expected, samples, proc.output()


def two_hosts_sync(spawn, tmp_path, url):
    """Two hosts' outboxes -- messages 0-5999 and 3000-8999 -- `sync`ed into url at the same time
    (batch sizes 250 and 400). -> (the two outbox paths, the two `sync --json` reports)"""
    paths = [str(tmp_path / "host-a.db"), str(tmp_path / "host-b.db")]
    for path, span in zip(paths, (range(0, 6000), range(3000, 9000))):
        with Outbox(path) as outbox:
            put_all(outbox, [flat(i) for i in span])
    procs = [spawn(f"sync-{n}", ["sync", "--json"], outbox=path, target=url, batch_size=size)
             for n, (path, size) in enumerate(zip(paths, (250, 400)))]
    for p in procs:
        assert p.wait(120) == 0, p.output()
    return paths, [json.loads(p.stdout()) for p in procs]


def poison_rows_then_replay(invoke, outbox_path, db, *, damage, poison, errors, repair):
    """`init-db`, then the table changed by `damage` (SQL) so that the `poison` rows (index -> fields of
    flat(i)) are refused; 500 messages synced: exactly the poison rows go dead, each with the server's
    own words (`errors`: message_id -> substrings of its error), the other rows arrive once and the
    batch is still one batch. `repair` (SQL) fixes some causes; `replay --all` and a sync deliver what
    the table takes now, exactly once. -> the message_ids still dead."""
    common = ["--outbox", outbox_path, "--target", db.url]
    assert invoke("init-db", *common).exit_code == 0
    for sql in damage:
        db.query(db.url, sql)
    with Outbox(outbox_path) as outbox:
        put_all(outbox, [flat(i, **poison.get(i, {})) for i in range(500)])

    result = invoke("sync", *common, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["delivered"], report["dead"], report["batches"]) == (500 - len(poison), len(poison), 1)
    assert db.row_stats(db.url) == (500 - len(poison),) * 2
    assert not {f"om_{i:06d}" for i in poison} & set(db.message_ids(db.url))
    dead = {d["message_id"]: d["last_error"] for d in json.loads(invoke("dead", *common, "--json").stdout)}
    assert set(dead) == set(errors) == {f"om_{i:06d}" for i in poison}
    for message_id, words in errors.items():
        assert all(w in dead[message_id] for w in words), (message_id, dead[message_id])
    human = invoke("dead", *common).output
    assert all(message_id in human for message_id in dead)

    for sql in repair:
        db.query(db.url, sql)
    result = invoke("replay", *common, "--all")
    assert result.exit_code == 0 and f"{len(poison)} requeued" in result.output
    report = json.loads(invoke("sync", *common, "--json").stdout)
    still = {d["message_id"] for d in json.loads(invoke("dead", *common, "--json").stdout)}
    assert (report["delivered"], report["dead"]) == (len(poison) - len(still), len(still))
    assert_exactly_once(db.message_ids(db.url), ids(500) - still)
    return still


def pool_through_a_server_crash(url, crash, start):
    """A target whose server crashes (`crash`) with a connection in its pool: writes and pings are
    TargetUnavailable (transient) while it is down; after `start` (same address, as after a
    failover) the dead pooled connection is discarded and the batch is written. -> the error the
    write met while the server was down."""
    target = open_target(url, connect_timeout=3)
    try:
        target.init_db()
        assert target.write(rows_of(flats(10))) == 10          # leaves a pooled connection behind
        crash()
        with pytest.raises(TargetUnavailable) as err:
            target.write(rows_of(flats(20)))
        assert err.value.transient
        with pytest.raises(TargetUnavailable):                 # refused: no server at all now
            target.ping()
        start()
        assert target.write(rows_of(flats(20))) == 10          # the other 10 were there already
        assert target.count() == 20
        return err.value
    finally:
        target.close()



def table_dropped_under_a_running_relay(spawn, invoke, outbox_path, db, count):
    """`run` delivers 100 messages into db.url; a DBA drops the table under it (outbox_relay_schema
    still says version 1): the relay makes the table again, and the 200 messages put after it arrive,
    each once. With the relay stopped and the table dropped again, `check` names the missing table
    and exits 1, and `init-db` makes it again (version 0 -> 1). count(url): the table's rows, 0 while
    it does not exist."""
    common = ["--outbox", outbox_path, "--target", db.url]
    assert invoke("init-db", *common).exit_code == 0
    outbox_with(outbox_path, [flat(i) for i in range(100)])
    proc = spawn("run", ["run", "--no-http"], outbox=outbox_path, target=db.url)
    wait_until(lambda: count(db.url) == 100, timeout=30, what="the first 100 messages")
    db.query(db.url, "DROP TABLE feishu_messages")
    with Outbox(outbox_path) as outbox:
        put_all(outbox, [flat(i) for i in range(100, 300)])
    wait_until(lambda: count(db.url) == 200, timeout=30, what="the messages put after the table was dropped")
    assert_exactly_once(db.message_ids(db.url), ids(200, start=100))
    assert "was dropped: made again" in proc.output(), proc.output()
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proc.output()

    db.query(db.url, "DROP TABLE feishu_messages")
    check = invoke("check", *common)
    assert check.exit_code == 1, check.output
    assert "table feishu_messages does not exist" in check.output and "Traceback" not in check.output
    init = invoke("init-db", *common)
    assert init.exit_code == 0 and "schema version 0 -> 2" in init.output, init.output
    assert invoke("check", *common).exit_code == 0
    assert count(db.url) == 0


def refused_rows_keep_their_words_out(invoke, outbox_path, db, *, damage, poison, words, reasons):
    """`init-db`, the table changed by `damage` (SQL) so that it refuses the `poison` rows (index ->
    fields of flat(i)); 200 messages synced. What the server's error quotes of those rows (`words`,
    which each of them holds) is in neither the dead rows' errors nor the log, which keep the
    server's reason (`reasons`: message_id -> substrings) and name the message_id. Requeued and synced
    again with --error-detail on, the errors and the log hold the whole text, `words` too."""
    common = ["--outbox", outbox_path, "--target", db.url]
    assert invoke("init-db", *common).exit_code == 0
    for sql in damage:
        db.query(db.url, sql)
    outbox_with(outbox_path, [flat(i, **poison.get(i, {})) for i in range(200)])
    for detail, shown in (("off", False), ("on", True)):
        result = invoke("sync", *common, "--error-detail", detail, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["dead"] == len(poison), result.output
        dead = {d["message_id"]: d["last_error"] for d in json.loads(invoke("dead", *common, "--json").stdout)}
        assert set(dead) == set(reasons)
        for message_id, error in dead.items():
            assert all(r in error for r in reasons[message_id]), (message_id, error)
            assert (words in error) is shown, (detail, message_id, error)
            assert f"message {message_id} rejected by the target" in result.output, result.output
        assert (words in result.output) is shown, (detail, result.output)
        assert invoke("replay", *common, "--all").exit_code == 0
    assert db.row_stats(db.url)[0] == 200 - len(poison)


# -- events about a message, in every order (issue 19) ------------------------------------------------------

FIVE_EVENTS_BASE = 1_790_000_000_000  # epoch ms: the message is sent then, its events follow


def five_events(message_id):
    """A message and five events about it, each with Feishu's time: two edits, a reaction added then
    removed, and a recall. -> (the message, [the five events])."""
    at = FIVE_EVENTS_BASE
    return feishu_message(message_id, "as first sent", at), [
        feishu_edit(message_id, f"{message_id}-e1", "the first edit", at + 10_000),
        feishu_edit(message_id, f"{message_id}-e2", "the second edit", at + 20_000),
        feishu_reaction(message_id, f"{message_id}-r1", at + 5_000, added=True),
        feishu_reaction(message_id, f"{message_id}-r2", at + 15_000, added=False),
        feishu_recall(message_id, f"{message_id}-x", at + 30_000),
    ]


def every_order_of_five_events(tmp_path, url):
    """Through a running service into `url`: for each of the 5! orders of the five events, once with
    the message first and once with it last, every event POSTed twice. Every message ends the same:
    the second edit's words, recalled, no reaction, five history rows, its first words kept."""
    plans = []
    for n, order in enumerate(itertools.permutations(range(5))):
        for message_last in (False, True):
            message_id = f"om_order_{n:03d}_{int(message_last)}"
            message, events = five_events(message_id)
            sequence = [events[i] for i in order]
            plans.append((message_id, sequence + [message] if message_last else [message] + sequence))
    with running_service(tmp_path, target=url) as s:
        for _, sequence in plans:
            for payload in sequence:
                for _ in (1, 2):  # Feishu delivers more than once
                    r = post(s.url, json.dumps(payload).encode())
                    assert r.status == 200, r.json()
        wait_until(lambda: not s.service.outbox.has_pending(), timeout=60, what="the relay to deliver it all")
    target = open_target(url)
    try:
        finals = set()
        for message_id, _ in plans:
            h = message_history(target, None, message_id)
            now, first = h["now"], h["first"]
            finals.add((now["text"], now["edited_at"], now["recalled_at"], now["recall_type"], first["text"],
                        tuple(e["kind"] for e in h["events"]), json.dumps(h["reactions"])))
    finally:
        target.close()
    assert finals == {("the second edit", "2026-09-21T14:13:40.000+00:00", "2026-09-21T14:13:50.000+00:00",
                       "message_owner", "as first sent",
                       ("reaction_added", "edited", "reaction_removed", "edited", "recalled"), "{}")}, finals
    return [message_id for message_id, _ in plans]


def bad_events_beside_good_ones(tmp_path, url):
    """Through a running service into `url`: events Feishu's shapes allow but that cannot be archived as
    they are, each between good ones. Each bad one gets a 400 with a JSON reason naming its field
    (never a 500) and stores nothing; a recall of a message the archive has never seen, with no chat
    id, is an event like any other and is stored. Every good one arrives."""
    message_id = "om_bad_events_1"
    no_message_id = feishu_edit(message_id, "bad-1", "words", FIVE_EVENTS_BASE + 1)
    del no_message_id["event"]["message"]["message_id"]
    blank_message_id = feishu_recall("", "bad-2", FIVE_EVENTS_BASE + 2)
    emoji_number = feishu_reaction(message_id, "bad-3", FIVE_EVENTS_BASE + 3)
    emoji_number["event"]["reaction_type"] = {"emoji_type": 5}
    emoji_list = feishu_reaction(message_id, "bad-4", FIVE_EVENTS_BASE + 4)
    emoji_list["event"]["reaction_type"] = ["THUMBSUP"]
    no_event = feishu_recall(message_id, "bad-5", FIVE_EVENTS_BASE + 5)
    no_event["event"] = None
    bad = [(no_message_id, "event.message.message_id"), (blank_message_id, "event.message_id"),
           (emoji_number, "emoji_type"), (emoji_list, "emoji_type"), (no_event, "event")]
    unknown_recall = feishu_recall("om_never_seen_1", "good-recall", FIVE_EVENTS_BASE + 6)
    del unknown_recall["event"]["chat_id"]
    good = [feishu_message(message_id, "as first sent", FIVE_EVENTS_BASE),
            feishu_reaction(message_id, "good-reaction", FIVE_EVENTS_BASE + 7, emoji="SMILE"),
            unknown_recall, feishu_edit(message_id, "good-edit", "edited", FIVE_EVENTS_BASE + 8)]
    with running_service(tmp_path, target=url) as s:
        for (payload, named), good_one in itertools.zip_longest(bad, good):
            r = post(s.url, json.dumps(payload).encode())
            assert r.status == 400 and named in r.json()["error"], (named, r)
            if good_one is not None:
                r = post(s.url, json.dumps(good_one).encode())
                assert r.status == 200, r
        wait_until(lambda: not s.service.outbox.has_pending(), timeout=30, what="the relay to deliver it all")
        assert s.service.outbox.counts()["dead"] == 0
        samples = scrape(s.url)
    # /metrics counts the events the webhook took by kind; the refused ones are not events.
    taken = {kind: metric(samples, "outbox_relay_events_received_total", kind=kind, outcome="stored")
             for kind in ("edited", "recalled", "reaction_added", "reaction_removed")}
    assert taken == {"edited": 1, "recalled": 1, "reaction_added": 1, "reaction_removed": 0}, taken
    target = open_target(url)
    try:
        seen = message_history(target, None, message_id)
        never = message_history(target, None, "om_never_seen_1")
    finally:
        target.close()
    assert seen["now"]["text"] == "edited" and seen["reactions"] == {"SMILE": ["ou_reactor_1"]}, seen
    assert [e["event_id"] for e in seen["events"]] == ["good-reaction", "good-edit"], seen["events"]
    assert never["message"] is None and [(e["kind"], e["event_id"]) for e in never["events"]] == [
        ("recalled", "good-recall")], never
