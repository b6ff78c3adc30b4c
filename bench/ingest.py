"""Ingest: Outbox.put / put_many against raw sqlite3, persist-queue and the old JSON-file queue.

Every system starts from an empty store and gets the same messages in the same order.
Rounds alternate between systems so drift of the machine (page cache, other load) hits all alike.
"""

import json
import os
import sqlite3
import time

import payloads
from common import median, ratio_line, remove_sqlite

from outbox_relay.message import normalize
from outbox_relay.outbox import Outbox
from outbox_relay.outbox.queue import _row_values
from outbox_relay.schema.outbox import OUTBOX_MIGRATIONS

INSERT = ("INSERT INTO outbox (message_id, chat_id, sender_id, msg_type, text, created_at,"
          " received_at, updated_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

PQ_SETTINGS = ("SQLiteAckQueue(auto_commit=True, json serializer), WAL + synchronous=FULL set on its"
               " connection")
JSON_CAP = 1000


def raw_connection(path):
    """The baseline: stdlib sqlite3, the outbox's own table and pragmas, nothing else."""
    remove_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for sql in OUTBOX_MIGRATIONS[0]:
        conn.execute(sql)
    return conn


def raw_rows(events):
    """The same column values Outbox.put stores, built before the clock starts; the payload column
    gets json.dumps(event) inside the timed loop (the least any caller must do)."""
    now = time.time()
    return [(ev, _row_values(normalize(ev), now)[:8]) for ev in events]


def _dumps(ev):
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":"))


# -- one message per call ------------------------------------------------------------------

def per_second(items, put):
    """put(item) for every item, timed: -> items a second."""
    start = time.perf_counter()
    for item in items:
        put(item)
    return len(items) / (time.perf_counter() - start)


def ours_put(path, events):
    remove_sqlite(path)
    with Outbox(path, synchronous="full") as box:
        return per_second(events, box.put)


def raw_put(path, rows):
    conn = raw_connection(path)

    def put(row):
        ev, values = row
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, (*values, _dumps(ev)))
        conn.execute("COMMIT")
    try:
        return per_second(rows, put)
    finally:
        conn.close()


def pq_put(path, events):
    import persistqueue
    from persistqueue.serializers import json as pq_json
    q = persistqueue.SQLiteAckQueue(path, auto_commit=True, serializer=pq_json, multithreading=False)
    # persist-queue sets WAL itself; say FULL explicitly rather than rely on the build default.
    q._putter.execute("PRAGMA synchronous = FULL")
    try:
        return per_second(events, q.put)
    finally:
        q.close()


def json_file_put(path, events):
    """The old queue: read the whole file, append, rewrite, fsync; at 1000 entries the file is rotated
    to .1 (replacing the previous .1, whose undrained messages were lost). From empty, 1000 messages
    are one full rotation cycle, so their average is the long-run rate."""
    for p in (path, path + ".1"):
        if os.path.exists(p):
            os.unlink(p)
    start = time.perf_counter()
    for ev in events:
        try:
            with open(path, encoding="utf-8") as f:
                queue = json.load(f)
        except FileNotFoundError:
            queue = []
        queue.append(ev)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(queue, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        if len(queue) >= JSON_CAP:
            os.replace(path, path + ".1")
    return len(events) / (time.perf_counter() - start)


def bench_put(workdir, n, rounds, json_n):
    events = payloads.events("put", n)
    rows = raw_rows(events)
    rates = {"ours": [], "raw": [], "pq": []}
    for r in range(rounds):
        rates["raw"].append(raw_put(os.path.join(workdir, f"raw{r}.db"), rows))
        rates["ours"].append(ours_put(os.path.join(workdir, f"ours{r}.db"), events))
        rates["pq"].append(pq_put(os.path.join(workdir, f"pq{r}"), events))
    json_rate = json_file_put(os.path.join(workdir, "queue.json"), events[:json_n])
    ours = median(rates["ours"])
    runs = f"{n:,} msgs from an empty store, median of {rounds} interleaved rounds"
    return [
        ratio_line("ingest: put, 1/call, sync=FULL vs raw sqlite3", ours, median(rates["raw"]), "msg/s", 0.8,
                   note=f"{runs}; Outbox(synchronous='full') defaults vs stdlib sqlite3 on the same table and"
                        " pragmas: BEGIN IMMEDIATE, INSERT, COMMIT, json.dumps(event) per row"),
        ratio_line("ingest: put, 1/call vs persist-queue", ours, median(rates["pq"]), "msg/s", 1.0,
                   note=f"{runs}; persist-queue {PQ_SETTINGS}"),
        ratio_line("ingest: put, 1/call vs old JSON file", ours, json_rate, "msg/s", 25,
                   note=f"old JSON queue, first {json_n:,} of the same msgs from empty: read all, append,"
                        f" rewrite, fsync per message, rotated at {JSON_CAP} entries"),
    ]


# -- 500 per call -----------------------------------------------------------------------------

def ours_put_many(path, chunks):
    remove_sqlite(path)
    box = Outbox(path, synchronous="full")
    try:
        start = time.perf_counter()
        for chunk in chunks:
            box.put_many(chunk)
        return sum(map(len, chunks)) / (time.perf_counter() - start)
    finally:
        box.close()


def raw_executemany(path, chunks):
    conn = raw_connection(path)
    try:
        start = time.perf_counter()
        for chunk in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, [(*values, _dumps(ev)) for ev, values in chunk])
            conn.execute("COMMIT")
        return sum(map(len, chunks)) / (time.perf_counter() - start)
    finally:
        conn.close()


def bench_put_many(workdir, n, rounds, size=500):
    events = payloads.events("many", n)
    rows = raw_rows(events)
    ev_chunks = [events[i:i + size] for i in range(0, n, size)]
    row_chunks = [rows[i:i + size] for i in range(0, n, size)]
    ours, raw = [], []
    for r in range(rounds):
        raw.append(raw_executemany(os.path.join(workdir, f"rawmany{r}.db"), row_chunks))
        ours.append(ours_put_many(os.path.join(workdir, f"oursmany{r}.db"), ev_chunks))
    return [ratio_line(f"ingest: put_many, {size}/call vs executemany {size}/tx", median(ours), median(raw),
                       "msg/s", 0.7,
                       note=f"{n:,} msgs, median of {rounds}; stdlib sqlite3 executemany on the same table"
                            " and pragmas, json.dumps per row")]
