"""Relay into MariaDB: drain a backlog vs LOAD DATA LOCAL INFILE of the same rows (the ceiling).

Both write the same rows into tables of the same definition (the relay's own DDL), each empty at the
start, in the same database of a throwaway mariadbd (tests/mariaharness.py, as the tests start it).

`python bench/mysql_relay.py` alone also measures the two ways the relay could write a batch
(INSERT … ON DUPLICATE KEY vs LOAD DATA into a staging table), which chose targets/mysql.py's.
"""

import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse

import backlog
from common import harness, ratio_line

from outbox_relay.message import Message
from outbox_relay.schema import TARGET_COLUMNS
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target


def start_maria():
    """A throwaway MariaDB server."""
    mariaharness = harness("mariaharness")
    mariaharness.sweep_stale_dirs()
    return mariaharness.MariaServer.create()


def fresh_database(server, name):
    server.drop_database(name)
    server.create_database(name)
    return server.url(name)


def connect(url, **kwargs):
    import pymysql
    parts = urllib.parse.urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:],
                           charset="utf8mb4", local_infile=True, **kwargs)


def target_rows(outbox_path, target):
    """The exact values the relay will write for these outbox rows, in its column order."""
    conn = sqlite3.connect(outbox_path)
    try:
        return [target._values(i, Message.from_json(p), r)
                for i, p, r in conn.execute("SELECT id, payload, received_at FROM outbox ORDER BY id")]
    finally:
        conn.close()


def make_table(url, table):
    t = open_target(url, table=table, pool_size=1)
    try:
        t.init_db()
    finally:
        t.close()


def infile_field(value):
    """LOAD DATA's default text format: tab-separated, backslash escapes, \\N for NULL."""
    if value is None:
        return "\\N"
    text = str(value)
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\0", "\\0"))


def write_infile(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join("\t".join(infile_field(v) for v in row) + "\n" for row in rows))


def load_data(cur, path, table):
    cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4 ({', '.join(TARGET_COLUMNS)})",
                (path,))


def load_data_ceiling(url, rows, workdir):
    """One LOAD DATA LOCAL INFILE of every row, the file written beforehand, into an empty table,
    one transaction."""
    path = os.path.join(workdir, "load-ceiling.tsv")
    write_infile(rows, path)
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            start = time.perf_counter()
            load_data(cur, path, "load_ceiling")
            conn.commit()
            return len(rows) / (time.perf_counter() - start)
    finally:
        conn.close()
        os.remove(path)


def drain(outbox_path, url, pool_size=2, batch_size=500):
    from outbox_relay.outbox import Outbox
    box = Outbox(outbox_path)
    target = open_target(url, pool_size=pool_size)
    try:
        target.ensure_schema()
        start = time.perf_counter()
        totals = Relay(box, target, batch_size=batch_size).drain()
        return totals, time.perf_counter() - start
    finally:
        target.close()
        box.close()


def bench_mysql_relay(workdir, url, n):
    path = os.path.join(workdir, "mysql-relay-outbox.db")
    backlog.fill(path, n, "mysql-relay")
    t = open_target(url)
    rows = target_rows(path, t)
    t.close()
    make_table(url, "load_ceiling")
    load_rate = load_data_ceiling(url, rows, workdir)
    del rows
    totals, seconds = drain(path, url)
    if totals["new"] != n:
        raise RuntimeError(f"relay delivered {totals['new']} new rows, expected {n}: {dict(totals)}")
    return [ratio_line(f"relay: drain {n:,} into MariaDB vs LOAD DATA", n / seconds, load_rate, "rows/s", 0.5,
                       note="Relay(batch_size=500).drain() into MariaDB (tests/mariaharness.py settings:"
                            " innodb_flush_log_at_trx_commit=2), open_target(pool_size=2); baseline: one"
                            " LOAD DATA LOCAL INFILE of the same rows, the file written beforehand, into an"
                            " empty table of the same DDL, one transaction")]


# -- the write path, every way (run by hand: python bench/mysql_relay.py) ---------------------------

GUARD = "IF(CAST({t}.message_id AS BINARY) = CAST(VALUES(message_id) AS BINARY), {t}.message_id, NULL)"


def batch_by_target(conn, table, batch):
    """What the relay does: targets/mysql.py's insert_batch (multi-row INSERTs of its own literals)."""
    from outbox_relay.targets.base import Tx
    return TARGET.insert_batch(Tx(conn), batch)


def batch_by_executemany(conn, table, batch):
    """The same statement through PyMySQL's executemany (its own escaping)."""
    cols, marks = ", ".join(TARGET_COLUMNS), ", ".join(["%s"] * len(TARGET_COLUMNS))
    with conn.cursor() as cur:
        return cur.executemany(f"INSERT INTO `{table}` ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE"
                               f" message_id = {GUARD.format(t=f'`{table}`')}", batch)


def batch_by_load_data(conn, table, batch, path, strict):
    """LOAD DATA LOCAL into a temporary staging table, then INSERT … SELECT … ON DUPLICATE KEY.
    LOAD DATA LOCAL cannot refuse a row (errors become warnings), so only a staging table whose
    columns hold anything (strict=True: LONGTEXT) keeps a bad value for the INSERT to refuse; the
    table's own types (strict=False) would truncate it silently."""
    write_infile(batch, path)
    cols, t = ", ".join(TARGET_COLUMNS), f"`{table}`"
    with conn.cursor() as cur:
        if strict:
            cur.execute("CREATE TEMPORARY TABLE stage (" + ", ".join(f"{c} longtext" for c in TARGET_COLUMNS) + ")")
        else:
            cur.execute(f"CREATE TEMPORARY TABLE stage LIKE {t}")
        load_data(cur, path, "stage")
        cur.execute(f"INSERT INTO {t} ({cols}) SELECT {cols} FROM stage ON DUPLICATE KEY UPDATE"
                    f" {t}.message_id = {GUARD.format(t=t)}")
        new = cur.rowcount
        cur.execute("DROP TEMPORARY TABLE stage")
        return new


def compare_write_paths(n=20_000, batch_size=500):
    global TARGET
    server = start_maria()
    workdir = tempfile.mkdtemp(prefix="outbox-relay-bench-")
    try:
        url = fresh_database(server, "write_paths")
        path = os.path.join(workdir, "outbox.db")
        backlog.fill(path, n, "write-paths")
        tsv = os.path.join(workdir, "batch.tsv")
        ways = {"relay (ours)": batch_by_target, "executemany": batch_by_executemany,
                "LOAD DATA, strict staging": lambda c, t, b: batch_by_load_data(c, t, b, tsv, True),
                "LOAD DATA, LIKE staging": lambda c, t, b: batch_by_load_data(c, t, b, tsv, False)}
        for k in range(len(ways)):
            make_table(url, f"way{k}")
        conn = connect(url, autocommit=True)
        for k, (name, fn) in enumerate(ways.items()):
            TARGET = open_target(url, table=f"way{k}")
            rows = target_rows(path, TARGET)          # the values, prepared beforehand for every way
            start, new = time.perf_counter(), 0
            for i in range(0, n, batch_size):
                conn.begin()
                new += fn(conn, f"way{k}", rows[i:i + batch_size])
                conn.commit()
            rate = n / (time.perf_counter() - start)
            TARGET.close()
            print(f"{name:28} {rate:>9,.0f} rows/s  ({new:,} new of {n:,}, batches of {batch_size})")
        conn.close()
    finally:
        server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


TARGET = None

if __name__ == "__main__":
    compare_write_paths(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
