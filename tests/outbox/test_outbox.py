"""outbox.py on real SQLite files: durability, concurrency (threads and processes), overflow, states."""

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import traceback

import pytest

from outbox_relay.errors import InvalidMessage, OutboxError, OutboxFull, OutboxUnavailable
from outbox_relay.message import Message, normalize
from outbox_relay.outbox import Outbox
from outbox_relay.schema.outbox import OUTBOX_VERSION

EMPTY = {"pending": 0, "delivered": 0, "parked": 0, "dead": 0}


def msg(i, **extra):
    return {"message_id": f"om_{i:06d}", "chat_id": "oc_1", "sender_id": "ou_1", "text": f"消息 {i}",
            "create_time": str(1700000000000 + i), **extra}


@pytest.fixture
def outbox(tmp_outbox):
    with Outbox(tmp_outbox) as o:
        yield o


def message_ids(o, state):
    return [r["message_id"] for r in o.rows(state, limit=100000)]


# -- put: committed, new vs duplicate -----------------------------------------------------------

def test_put_returns_after_commit_and_says_new(outbox, tmp_outbox):
    result = outbox.put(msg(1))
    assert result.message_id == "om_000001"
    assert result.duplicate is False
    assert result.state == "pending"
    assert isinstance(result.id, int)
    # Committed: a separate connection (another process would see the same) reads it.
    with sqlite3.connect(tmp_outbox) as other:
        row = other.execute("SELECT message_id, state, text, created_at, payload FROM outbox").fetchone()
    assert row[:4] == ("om_000001", "pending", "消息 1", 1700000000001)
    assert Message.from_json(row[4]) == normalize(msg(1))


def test_same_message_twice_is_one_row(outbox):
    first = outbox.put(msg(1))
    second = outbox.put(msg(1, text="a retry may differ in the body"))
    assert first.duplicate is False
    assert second.duplicate is True
    assert second.id == first.id and second.state == "pending"
    assert outbox.counts() == {**EMPTY, "pending": 1}
    assert json.loads(outbox.get("om_000001")["payload"])["text"] == "消息 1"  # the first one wins


def test_duplicate_of_a_delivered_row_reports_its_state(outbox):
    first = outbox.put(msg(1))
    outbox.finish_batch([first.id])
    again = outbox.put(msg(1))
    assert again.duplicate and again.state == "delivered"
    assert outbox.counts() == {**EMPTY, "delivered": 1}


def test_put_accepts_a_message_and_json_text(outbox):
    assert not outbox.put(normalize(msg(1))).duplicate
    assert not outbox.put(json.dumps(msg(2))).duplicate
    assert not outbox.put(json.dumps(msg(3)).encode()).duplicate
    assert outbox.counts()["pending"] == 3


def test_put_many_is_one_transaction_and_dedupes_within_the_batch(outbox):
    results = outbox.put_many([msg(1), msg(2), msg(1), msg(3)])
    assert [r.duplicate for r in results] == [False, False, True, False]
    assert results[2].id == results[0].id
    assert outbox.counts()["pending"] == 3
    with pytest.raises(InvalidMessage, match="item 2: "):
        outbox.put_many([msg(4), msg(5), {"no": "id"}])
    assert outbox.get("om_000004") is None
    assert outbox.put_many([]) == []


def test_put_many_takes_a_generator(outbox):
    assert len(outbox.put_many(msg(i) for i in range(3))) == 3
    with pytest.raises(InvalidMessage, match="item 1: "):  # regression: TypeError from len(generator)
        outbox.put_many(x for x in [msg(10), {"bad": 1}])
    assert outbox.counts()["pending"] == 3


def test_many_threads_share_one_outbox(outbox):
    errors = []

    def writer(t):
        try:
            for i in range(100):
                outbox.put(msg(t * 1000 + i))
                outbox.put(msg(i))  # the same 100 ids from every thread
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert outbox.counts()["pending"] == 8 * 100 + 100
    assert outbox.integrity_check() == "ok"


def test_listener_is_called_after_commit_and_cannot_break_put(outbox):
    calls = []
    outbox.add_listener(lambda: calls.append(outbox.counts()["pending"]))
    outbox.add_listener(lambda: 1 / 0)
    assert outbox.put(msg(1)).duplicate is False
    assert calls == [1]
    outbox.put(msg(1))  # a duplicate adds nothing: no wake-up
    assert calls == [1]


# -- many processes at once ---------------------------------------------------------------------

def _writer_process(path, start, count, barrier, ids_file=None):
    """Child: `count` puts as fast as it can; exit code 0 only if every one returned normally."""
    try:
        outbox = Outbox(path, max_pending=100_000)
        barrier.wait(timeout=60)
        results = [outbox.put(msg(i)) for i in range(start, start + count)]
        if ids_file:
            with open(ids_file, "w") as f:
                json.dump([[r.message_id, r.duplicate] for r in results], f)
        outbox.close()
    except BaseException:  # noqa: BLE001 - the parent must hear about anything at all
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def _run_writers(args_list):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args_list))
    procs = [ctx.Process(target=_writer_process, args=(*args[:3], barrier, *args[3:])) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in procs]


def test_four_processes_2500_puts_each(tmp_outbox):
    Outbox(tmp_outbox).close()  # the file exists before the race: they race on put, not on creation
    codes = _run_writers([(tmp_outbox, n * 2500, 2500) for n in range(4)])
    assert codes == [0, 0, 0, 0]  # no "database is locked" (or anything else) reached a caller
    with Outbox(tmp_outbox, max_pending=100_000) as o:
        assert o.counts() == {**EMPTY, "pending": 10_000}
        assert o.integrity_check() == "ok"
        ids = o._read("SELECT message_id FROM outbox")
    assert {r[0] for r in ids} == {f"om_{i:06d}" for i in range(10_000)}


def test_four_processes_create_the_outbox_at_the_same_time(tmp_outbox):
    codes = _run_writers([(tmp_outbox, n * 50, 50) for n in range(4)])
    assert codes == [0, 0, 0, 0]
    with Outbox(tmp_outbox) as o:
        assert o.counts()["pending"] == 200
        assert o.schema_version() == OUTBOX_VERSION
        assert o.integrity_check() == "ok"


def test_same_ids_from_two_processes_at_once(tmp_path):
    path = str(tmp_path / "outbox.db")
    Outbox(path).close()
    files = [str(tmp_path / f"ids{n}.json") for n in range(2)]
    codes = _run_writers([(path, 0, 1000, f) for f in files])
    assert codes == [0, 0]
    a, b = (dict(json.load(open(f))) for f in files)
    assert len(a) == len(b) == 1000
    for message_id in a:
        assert a[message_id] != b[message_id], message_id  # exactly one of the two says "new"
    with Outbox(path) as o:
        assert o.counts()["pending"] == 1000
        assert o.integrity_check() == "ok"


# -- kill -9 in the middle of a stream of puts ------------------------------------------------

KILLED_WRITER = """
import sys
from outbox_relay.outbox import Outbox
outbox = Outbox(sys.argv[1], max_pending=1_000_000, synchronous=sys.argv[3])
i = int(sys.argv[2])
while True:
    mid = f"om_kill_{i:07d}"
    outbox.put({"message_id": mid, "chat_id": "oc_1", "text": "x" * (i % 2000), "create_time": "1700000000000"})
    print(mid, flush=True)
    i += 1
"""


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_sigkill_mid_stream_loses_no_returned_put(tmp_outbox, synchronous):
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    printed = []
    for round_ in range(3):  # kill the same outbox three times, at random points
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, tmp_outbox, str(round_ * 1_000_000), synchronous],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kill_after = rnd.randrange(1, 400)
        got = []
        for line in child.stdout:
            got.append(line.strip())
            if len(got) >= kill_after:
                break
        child.send_signal(signal.SIGKILL)  # in the middle of the next put
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read()
        # Lines that were already in the pipe came after a returned put too.
        got.extend(line.strip() for line in child.stdout)
        child.stdout.close()
        child.stderr.close()
        assert len(got) >= kill_after, f"seed {seed}"
        printed.extend(got)
        with Outbox(tmp_outbox, synchronous=synchronous) as o:
            assert o.integrity_check() == "ok", f"seed {seed}"
            missing = [m for m in printed if o.get(m) is None]
            assert missing == [], f"seed {seed}"
            total = sum(o.counts().values())
            # At most the put in flight may have committed without being printed.
            assert len(printed) <= total <= len(printed) + round_ + 1, f"seed {seed}"


# -- overflow -----------------------------------------------------------------------------------

def test_overflow_parks_the_oldest_and_deletes_nothing(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=1000) as o:
        for i in range(1500):
            o.put(msg(i))
        assert o.counts() == {**EMPTY, "pending": 1000, "parked": 500}
        assert sum(o.counts().values()) == 1500  # zero deleted
        assert message_ids(o, "parked") == [f"om_{i:06d}" for i in range(500)]  # the oldest
        assert message_ids(o, "pending") == [f"om_{i:06d}" for i in range(500, 1500)]
        assert o.oldest_pending_age() is not None  # parked rows count as undelivered

        # The relay takes the oldest undelivered rows first, the parked ones included, straight to
        # the target: they leave the outbox oldest first, as the design card says.
        claimed = o.claim_oldest(300)
        assert [r.message_id for r in claimed] == [f"om_{i:06d}" for i in range(300)]
        assert o.finish_batch([r.id for r in claimed])[0] == 300
        assert o.counts() == {**EMPTY, "pending": 1000, "parked": 200, "delivered": 300}
        assert message_ids(o, "parked") == [f"om_{i:06d}" for i in range(300, 500)]
        assert o.claim_oldest(1)[0].message_id == "om_000300"


def test_put_many_over_the_limit_reports_which_rows_it_parked(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=5) as o:
        results = o.put_many([msg(i) for i in range(8)])
        assert [r.state for r in results] == ["parked"] * 3 + ["pending"] * 5
        assert [r.state for r in results] == [o.get(r.message_id)["state"] for r in results]
        assert o.put(msg(8)).state == "pending"
        assert o.counts() == {**EMPTY, "pending": 5, "parked": 4}


def test_overflow_reject_raises_outbox_full(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=1000, overflow="reject") as o:
        for i in range(1000):
            o.put(msg(i))
        with pytest.raises(OutboxFull) as exc:
            o.put(msg(1000))
        text = str(exc.value)
        assert "full" in text and "1000" in text and "reject" in text and "retry" in text
        assert isinstance(exc.value, OutboxError)
        assert o.counts() == {**EMPTY, "pending": 1000}
        assert o.get("om_001000") is None
        assert message_ids(o, "pending") == [f"om_{i:06d}" for i in range(1000)]  # the first 1,000 intact
        # A sender retrying a message that is already in is answered, not refused.
        assert o.put(msg(999)).duplicate is True
        # Room again once some are delivered.
        o.finish_batch([r.id for r in o.claim_oldest(1)])
        assert o.put(msg(1000)).duplicate is False
        with pytest.raises(OutboxFull):
            o.put(msg(1001))


def test_put_many_under_reject_is_all_or_nothing(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=10, overflow="reject") as o:
        o.put_many([msg(i) for i in range(8)])
        with pytest.raises(OutboxFull):
            o.put_many([msg(i) for i in range(8, 12)])  # 2 would fit, 4 do not
        assert o.counts() == {**EMPTY, "pending": 8}
        assert o.get("om_000008") is None
        # Duplicates take no room: 8 old + 2 new fits exactly.
        results = o.put_many([msg(i) for i in range(10)])
        assert sum(not r.duplicate for r in results) == 2
        assert o.counts()["pending"] == 10


def test_bad_settings_are_refused(tmp_outbox):
    for kwargs in ({"overflow": "drop"}, {"synchronous": "off"}, {"max_pending": 0}, {"keep_delivered": -1}):
        with pytest.raises(ValueError):
            Outbox(tmp_outbox, **kwargs)


# -- schema, pragmas --------------------------------------------------------------------------------

def test_schema_version_is_recorded(outbox, tmp_outbox):
    assert outbox.schema_version() == OUTBOX_VERSION >= 1
    with sqlite3.connect(tmp_outbox) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == OUTBOX_VERSION


def test_a_newer_schema_is_refused_clearly(tmp_outbox):
    Outbox(tmp_outbox).close()
    with sqlite3.connect(tmp_outbox) as other:
        other.execute(f"PRAGMA user_version = {OUTBOX_VERSION + 1}")
    with pytest.raises(OutboxError) as exc:
        Outbox(tmp_outbox)
    assert f"version {OUTBOX_VERSION + 1}" in str(exc.value)
    assert "upgrade outbox-relay" in str(exc.value)
    with sqlite3.connect(tmp_outbox) as other:  # left as it was
        assert other.execute("PRAGMA user_version").fetchone()[0] == OUTBOX_VERSION + 1


def test_reopening_keeps_rows_and_version(tmp_outbox):
    with Outbox(tmp_outbox) as o:
        o.put(msg(1))
    with Outbox(tmp_outbox) as o:
        assert o.counts()["pending"] == 1
        assert o.schema_version() == OUTBOX_VERSION


def test_not_a_database_is_an_outbox_error(tmp_outbox):
    with open(tmp_outbox, "wb") as f:
        f.write(b"this is not a sqlite file at all" * 100)
    with pytest.raises(OutboxError, match="not a database"):
        Outbox(tmp_outbox)


def test_unwritable_directory_is_outbox_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxUnavailable, match="cannot create the outbox directory"):
        Outbox(str(blocker / "sub" / "outbox.db"))


def test_wal_full_sync_and_busy_timeout_by_default(outbox):
    conn = outbox.file.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_synchronous_normal_is_configurable(tmp_outbox):
    with Outbox(tmp_outbox, synchronous="normal", busy_timeout=5) as o:
        conn = o.file.conn()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_each_thread_gets_its_own_connection_with_the_pragmas(outbox):
    seen = []
    t = threading.Thread(target=lambda: seen.append(
        (outbox.file.conn(), outbox.file.conn().execute("PRAGMA synchronous").fetchone()[0])))
    t.start()
    t.join()
    assert seen[0][0] is not outbox.file.conn()
    assert seen[0][1] == 2


def test_closed_outbox_says_so(tmp_outbox):
    o = Outbox(tmp_outbox)
    o.close()
    with pytest.raises(OutboxError, match="closed"):
        o.put(msg(1))


# -- relay side: claim, finish, prune, replay -----------------------------------------------------------

def test_claim_is_oldest_pending_first(outbox):
    ids = [r.id for r in outbox.put_many([msg(i) for i in range(10)])]
    outbox.finish_batch(ids[:2])
    outbox.mark_dead(ids[2], "bad row")
    rows = outbox.claim_oldest(3)
    assert [r.message_id for r in rows] == ["om_000003", "om_000004", "om_000005"]
    assert rows[0].attempts == 0 and rows[0].received_at > 0
    assert Message.from_json(rows[0].payload).message_id == "om_000003"
    assert len(outbox.claim_oldest(100)) == 7
    assert outbox.claim_oldest(3) == rows  # claiming changes nothing: one relay per outbox


def test_finish_batch_and_record_error(outbox):
    ids = [r.id for r in outbox.put_many([msg(i) for i in range(3)])]
    outbox.record_error(ids[:2], "connection refused")
    row = outbox.get("om_000000")
    assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"] == "connection refused"
    assert outbox.finish_batch(ids)[0] == 3
    row = outbox.get("om_000000")
    assert row["state"] == "delivered" and row["attempts"] == 2 and row["last_error"] is None
    assert row["delivered_at"] >= row["received_at"]
    assert outbox.finish_batch(ids)[0] == 0  # already delivered
    assert outbox.finish_batch([])[0] == 0
    assert outbox.delivered_since(0) == 3
    assert outbox.has_pending() is False
    assert outbox.oldest_pending_age() is None


def test_mark_dead_keeps_the_error(outbox):
    r = outbox.put(msg(1))
    outbox.mark_dead(r.id, "value too long for type character varying(128)")
    row = outbox.get("om_000001")
    assert row["state"] == "dead" and row["attempts"] == 1
    assert row["last_error"] == "value too long for type character varying(128)"
    assert outbox.claim_oldest(10) == []
    assert outbox.rows("dead")[0]["message_id"] == "om_000001"


def test_prune_keeps_the_newest_delivered(tmp_outbox):
    with Outbox(tmp_outbox, keep_delivered=3) as o:
        ids = [r.id for r in o.put_many([msg(i) for i in range(12)])]
        assert o.finish_batch(ids[:10]) == (10, 7)  # a finished batch prunes down to keep_delivered
        o.mark_dead(ids[10], "x")
        assert message_ids(o, "delivered") == ["om_000007", "om_000008", "om_000009"]
        assert o.counts() == {**EMPTY, "delivered": 3, "dead": 1, "pending": 1}  # others untouched
        assert o.prune() == 0
        assert o.prune(keep=1) == 2
        assert message_ids(o, "delivered") == ["om_000009"]
        assert o.prune(keep=0) == 1
        assert o.counts() == {**EMPTY, "dead": 1, "pending": 1}
        assert o.integrity_check() == "ok"


def test_replay_by_id_message_id_and_all(outbox):
    ids = [r.id for r in outbox.put_many([msg(i) for i in range(5)])]
    for i in ids:
        outbox.mark_dead(i, "rejected")
    assert len(outbox.replay([ids[0]])) == 1                       # by outbox id
    assert len(outbox.replay(["om_000001"])) == 1                  # by message_id
    assert len(outbox.replay([str(ids[2]), "om_000003"])) == 2     # both kinds, as the CLI passes them
    assert len(outbox.replay(["om_000001"])) == 0                  # already pending
    assert len(outbox.replay(["no_such_id"])) == 0
    assert outbox.counts() == {**EMPTY, "pending": 4, "dead": 1}
    outbox.mark_dead(ids[0], "again")
    assert len(outbox.replay()) == 2                               # all dead
    assert outbox.counts() == {**EMPTY, "pending": 5}
    assert [r.message_id for r in outbox.claim_oldest(10)] == [f"om_{i:06d}" for i in range(5)]
    with pytest.raises(ValueError):
        outbox.replay(states=("delivered",))


def test_replay_parked(tmp_outbox):
    with Outbox(tmp_outbox, max_pending=2) as o:
        o.put_many([msg(i) for i in range(4)])
        assert o.counts() == {**EMPTY, "pending": 2, "parked": 2}
        o.finish_batch([r.id for r in o.claim_oldest(4) if o.get(r.message_id)["state"] == "pending"])
        assert len(o.replay(states=("parked",))) == 2
        assert o.counts() == {**EMPTY, "pending": 2, "delivered": 2}


def test_meta_roundtrip(outbox):
    assert outbox.get_meta("relay.heartbeat") is None
    outbox.set_meta("relay.heartbeat", {"beat_at": 1.5, "pid": 7})
    outbox.set_meta("relay.heartbeat", {"beat_at": 2.5, "pid": 7})
    assert outbox.get_meta("relay.heartbeat") == {"beat_at": 2.5, "pid": 7}


def test_search_undelivered_text(outbox):
    outbox.put_many([msg(1, text="明天开会"), msg(2, text="100% 完成"), msg(3, text="开会取消")])
    found = [m.message_id for _, m in outbox.search("开会")]
    assert found == ["om_000003", "om_000001"]  # newest first
    assert [m.message_id for _, m in outbox.search("%")] == ["om_000002"]  # literal, not a wildcard


def test_counts_kept_by_triggers_match_the_rows_through_every_move(tmp_outbox):
    """Counting is O(1) since schema v2 (triggers keep outbox_counts); they must never drift from
    the rows, whatever moves them: put, park, claim + finish, dead, replay, refill, prune."""
    def real(box):
        actual = dict.fromkeys(("pending", "delivered", "parked", "dead"), 0)
        actual.update(box._read("SELECT state, count(*) FROM outbox GROUP BY state"))
        return actual

    with Outbox(tmp_outbox, max_pending=50, keep_delivered=20) as box:
        box.put_many([msg(i) for i in range(120)])
        assert box.counts() == real(box) == {"pending": 50, "delivered": 0, "parked": 70, "dead": 0}
        rows = box.claim_oldest(40)
        box.finish_batch([r.id for r in rows[:30]])
        box.mark_dead(rows[30].id, "refused")
        assert box.counts() == real(box)
        assert len(box.replay(states=("dead",))) == 1 and box.prune(keep=5) >= 0
        assert box.counts() == real(box)


def test_an_outbox_of_schema_1_is_migrated_with_its_counts(tmp_outbox):
    import sqlite3

    from outbox_relay.schema.outbox import OUTBOX_MIGRATIONS
    conn = sqlite3.connect(tmp_outbox, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for sql in OUTBOX_MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 1")
    for i, state in enumerate(["pending"] * 3 + ["parked"] * 2 + ["dead"]):
        conn.execute("INSERT INTO outbox (message_id, state, created_at, received_at, updated_at, payload)"
                     " VALUES (?, ?, 0, 0, 0, ?)", (f"om_{i}", state, json.dumps({"message_id": f"om_{i}",
                                                                                   "source": "api"})))
    conn.close()
    with Outbox(tmp_outbox) as box:
        assert box.schema_version() == OUTBOX_VERSION
        assert box.counts() == {"pending": 3, "delivered": 0, "parked": 2, "dead": 1}
