"""Relay: drain a backlog into PostgreSQL vs raw COPY (the ceiling) and vs connect+insert per message.

All three write the same rows into tables of the same definition (the relay's own DDL, with the
trigram index where the relay would create it), each empty at the start, in the same database.
"""

import io
import os
import sqlite3
import threading
import time

import backlog
import psycopg2
from common import limit_line, ratio_line

from outbox_relay.message import Message
from outbox_relay.outbox import Outbox
from outbox_relay.schema import TARGET_COLUMNS
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target
from outbox_relay.targets.postgres import copy_field as _copy_field

APP_NAME = "outbox-relay"


def target_rows(outbox_path, target, limit=None):
    """The exact values the relay will write for these outbox rows, in its COPY column order."""
    conn = sqlite3.connect(outbox_path)
    try:
        sql = "SELECT id, payload, received_at FROM outbox ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [target._values(i, Message.from_json(p), r) for i, p, r in conn.execute(sql)]
    finally:
        conn.close()


def make_table(url, table):
    t = open_target(url, table=table, pool_size=1)
    try:
        report = t.init_db(trigram=True)
    finally:
        t.close()
    return report["trigram"]


def copy_ceiling(url, rows):
    """One COPY of every row, prepared in memory beforehand, into an empty table, one transaction."""
    text = "".join("\t".join(_copy_field(v) for v in row) + "\n" for row in rows).encode()
    conn = psycopg2.connect(url, application_name="bench-copy")
    try:
        with conn.cursor() as cur:
            start = time.perf_counter()
            cur.copy_expert(f"COPY copy_ceiling ({', '.join(TARGET_COLUMNS)}) FROM STDIN", io.BytesIO(text))
            conn.commit()
            return len(rows) / (time.perf_counter() - start)
    finally:
        conn.close()


def old_way(url, rows, table="old_way"):
    """What the old system did per message: connect, INSERT, COMMIT, disconnect. -> msgs/s."""
    cols = ", ".join(TARGET_COLUMNS)
    marks = ", ".join(["%s"] * len(TARGET_COLUMNS))
    sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT (message_id) DO NOTHING"
    start = time.perf_counter()
    for row in rows:
        conn = psycopg2.connect(url, application_name="bench-old-way")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, row)
            conn.commit()
        finally:
            conn.close()
    return len(rows) / (time.perf_counter() - start)


class ConnectionSampler(threading.Thread):
    """Counts the relay's sessions in pg_stat_activity every few milliseconds, on its own connection."""

    def __init__(self, url, interval=0.005):
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.samples = 0
        self.max_seen = 0
        self._halt = threading.Event()
        self._conn = psycopg2.connect(url, application_name="bench-sampler")
        self._conn.autocommit = True

    def run(self):
        with self._conn.cursor() as cur:
            while not self._halt.is_set():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,))
                self.max_seen = max(self.max_seen, cur.fetchone()[0])
                self.samples += 1
                self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        self._conn.close()


def drain(outbox_path, url, pool_size=2, batch_size=500):
    box = Outbox(outbox_path)
    target = open_target(url, pool_size=pool_size)
    sampler = ConnectionSampler(url)
    try:
        target.ensure_schema()
        sampler.start()
        start = time.perf_counter()
        totals = Relay(box, target, batch_size=batch_size).drain()
        seconds = time.perf_counter() - start
    finally:
        sampler.stop()
        target.close()
        box.close()
    return totals, seconds, sampler


def bench_relay(workdir, url, n, old_n, pool_size=2):
    path = os.path.join(workdir, "relay-outbox.db")
    backlog.fill(path, n, "relay")
    rows = target_rows(path, open_target(url))
    trigram = make_table(url, "copy_ceiling")
    make_table(url, "old_way")
    copy_rate = copy_ceiling(url, rows)
    old_rate = old_way(url, rows[:old_n])
    del rows
    totals, seconds, sampler = drain(path, url, pool_size)
    if totals["new"] != n:
        raise RuntimeError(f"relay delivered {totals['new']} new rows, expected {n}: {dict(totals)}")
    ours = n / seconds
    index_note = "indexes incl. trigram" if trigram == "created" else "indexes (no trigram)"
    setup = (f"Relay(batch_size=500).drain() of {n:,} rows (default max_pending=1000: the rest parked and"
             " taken oldest first, parked ones straight from disk), open_target(pool_size=2)")
    return [
        ratio_line(f"relay: drain {n:,} backlog vs raw COPY", ours, copy_rate, "rows/s", 0.7,
                   note=f"{setup}; baseline: one COPY of the same rows, prepared in memory, into an empty"
                        f" table of the same DDL ({index_note})"),
        ratio_line(f"relay: drain {n:,} backlog vs connect+insert per msg", ours, old_rate, "rows/s", 100,
                   note=f"old way: psycopg2.connect, INSERT, COMMIT, close per message, timed over the first"
                        f" {old_n:,} rows, rate extrapolated (for scale: raw COPY itself is"
                        f" {copy_rate / old_rate:,.0f}x the old way here)"),
        limit_line(f"relay: max connections held (pool_size={pool_size})", sampler.max_seen, "conns",
                   pool_size, fmt="{:d}",
                   note=f"{sampler.samples:,} samples of pg_stat_activity (application_name='{APP_NAME}')"
                        " from a separate thread during the drain"),
    ]
