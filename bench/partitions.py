"""Partitions (issue 22): export's peak memory, search and stats on the partitioned table beside
the plain one, and retention of one month (DETACH + DROP) beside a DELETE of the same rows.

Rows are made inside PostgreSQL (generate_series, about 1 KB each, over 36 months), the same rows in
both layouts; the partitioned table gets its months first, so no row lands in DEFAULT.
"""

import datetime as dt
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from common import Line, harness, limit_line

from outbox_relay.archive.retention import apply_retention
from outbox_relay.archive.search import search_target
from outbox_relay.archive.stats import target_stats
from outbox_relay.targets import open_target
from outbox_relay.timeconv import now_ms, parse_duration

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "archive"))
harness("relayutil")  # puts tests/ on the path, for the scenarios of tests/archive
from memory import WRAPPER  # noqa: E402
from test_export import generate_sql  # noqa: E402 - one generator for the tests and the benchmark

EXE = os.path.join(os.path.dirname(sys.executable), "outbox-relay")


def filled(url, n, partition, months=36, words=150):
    target = open_target(url, partition=partition, host_name="bench")
    target.init_db()
    if target.layout.partitioned:
        end = dt.date(2026, 12, 1)
        target.layout.make_months(target, [((end.year * 12 + end.month - 1 - k) // 12,
                                            (end.year * 12 + end.month - 1 - k) % 12 + 1) for k in range(months + 1)])
    with target.transaction(timeout=False) as tx:
        if target.layout.partitioned:
            # The keys written as the relay writes them, a set at a time, not by the table's trigger row by
            # row (which holds ~2 KB of server memory a row until a statement of millions of rows ends).
            tx.execute("SET LOCAL outbox_relay.keyed = on")
        tx.execute(generate_sql(n, target.table, months, words))
        if target.layout.partitioned:
            tx.execute(f"INSERT INTO {target.quote(target.table + '_keys')} SELECT message_id, created_at"
                       f" FROM {target.quoted}")
    vacuum(url, target.table)
    return target


def vacuum(url, table):
    """VACUUM ANALYZE (outside a transaction): both layouts measured with their visibility maps set, as
    autovacuum leaves a table that has stood a while, not one caught half-way."""
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'VACUUM ANALYZE "{table}"')
    finally:
        conn.close()


def bench_export(url, n, limit_mb=100):
    target = filled(url, n, "none", months=1)
    target.close()
    out = os.path.join(tempfile.mkdtemp(prefix="outbox-relay-export-"), "export.jsonl")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, EXE, "export", "--target", url, "--format", "jsonl",
                           "--output", out], capture_output=True, text=True)
    result = json.loads(proc.stdout)
    os.remove(out) if os.path.exists(out) else None
    if result["rc"] != 0:
        raise RuntimeError(result["stderr"])
    return [limit_line(f"export: peak RSS of {n:,} rows to JSON lines", result["maxrss_kb"] / 1024, "MB", limit_mb,
                       baseline=f"{n * 1.1 / 1024:,.0f} MB of rows", note="`outbox-relay export --format jsonl` as"
                       " a child of a wrapper whose only child it is (ru_maxrss); the baseline is what the rows"
                       f" weigh, which a non-streaming export would hold; took {result['seconds']:.1f} s")]


def timed(fn, rounds=5):
    fn()  # warm the cache
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_read(plain_url, part_url, n):
    # Chat-sized messages (20 characters): at 1 KB a message, two tables of 10 M rows are 40 GB to write.
    plain, part = filled(plain_url, n, "none", words=10), filled(part_url, n, "month", words=10)
    since = now_ms() - 30 * 86_400_000
    lines = []
    try:
        for what, fn in (
                ("search '消息1' --since 30d", lambda t: search_target(t, "消息1", since_ms=since, limit=20)),
                ("search on chat --since 30d", lambda t: search_target(t, "消息", chat="oc_gen_7", since_ms=since)),
                ("stats --days 30", lambda t: target_stats(t, days=30))):
            ours, base = timed(lambda f=fn: f(part)), timed(lambda f=fn: f(plain))
            ratio = ours / base if base else float("inf")
            lines.append(Line(f"archive: {what}, partitioned vs plain ({n:,} rows)", f"{ours * 1000:,.1f} ms",
                              f"{base * 1000:,.1f} ms", ratio, "≤ 1.2×", ratio <= 1.2,
                              "the same rows (20-character messages over 36 months) in a table partitioned by month"
                              " and in a plain one, each vacuumed and analyzed; median of 5"))
    finally:
        plain.close()
        part.close()
    return lines


def bench_retention(delete_url, part_url, n):
    """One old month of n rows: retention's DETACH + DROP vs DELETE of the same rows from a plain table."""
    part, plain = filled(part_url, n, "month", months=1), filled(delete_url, n, "none", months=1)
    try:
        wal = "SELECT pg_current_wal_insert_lsn()"
        before = part.query(wal)[0][0]
        start = time.perf_counter()
        report = apply_retention(part, parse_duration("1d"), now=dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc))
        ours = time.perf_counter() - start
        ours_wal = float(part.query(f"SELECT pg_wal_lsn_diff(({wal}), %s)", (before,))[0][0])
        before = plain.query(wal)[0][0]
        start = time.perf_counter()
        plain.query(f"DELETE FROM {plain.quoted} WHERE created_at < '2026-12-01'")
        base = time.perf_counter() - start
        base_wal = float(plain.query(f"SELECT pg_wal_lsn_diff(({wal}), %s)", (before,))[0][0])
    finally:
        part.close()
        plain.close()
    dropped = sum(1 for m in report["months"] if m["action"] == "dropped")
    ratio = base / ours if ours else float("inf")
    return [Line(f"retention: one month of {n:,} rows, DROP vs DELETE", f"{ours * 1000:,.0f} ms",
                 f"{base * 1000:,.0f} ms", ratio, "≤ 1,000 ms", ours <= 1.0 and dropped >= 1,
                 f"apply_retention (DETACH + DROP, {dropped} partition) vs DELETE of the same rows from a plain"
                 f" table; WAL written: {ours_wal / 1e6:,.2f} MB vs {base_wal / 1e6:,.1f} MB")]


class Spawner:
    """The tests' `spawn` fixture, for a benchmark: relayutil.RelayProcess children in a directory."""

    def __init__(self, workdir):
        self.workdir, self.procs = workdir, []

    def __call__(self, name, args, **settings):
        relayutil = harness("relayutil")
        proc = relayutil.RelayProcess(args, relayutil.relay_env(**settings), cwd=self.workdir,
                                      log_path=os.path.join(self.workdir, f"{name}.log"))
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            proc.stop()


def bench_load(workdir, url, n):
    """The issue's load: n messages over 36 months into a partitioned table, a tenth again by another way in
    with another created_at, the relay killed -9 again and again (tests/archive/test_partitions.py)."""
    scenario, relayutil = harness("test_partitions"), harness("relayutil")
    spawn, where = Spawner(workdir), pathlib.Path(workdir) / "load"
    where.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        kills = scenario.deliver_twice_through_kill_9(spawn, where, url, n)
    finally:
        spawn.close()
    seconds = time.perf_counter() - start
    rows = relayutil.pg_rows(url)
    doubled = len(rows) - len(set(rows))
    months = scenario.months_by_partition(url)
    own = sum(1 for m, p, _ in months if m != "1970_01" and p == f"feishu_messages_p{m}")
    in_default = [c for m, p, c in months if m == "1970_01" and p == "feishu_messages_default"]
    ok = len(set(rows)) == n + 1 and not doubled and own == 36 and in_default == [1]
    return [Line(f"partitioned load: {n:,} messages over 36 months, {n // 10:,} again, kill -9",
                 f"{len(set(rows)):,} rows after {len(kills)} kills, {doubled} doubled, {own} months in their own"
                 f" partition, 1970 in DEFAULT: {bool(in_default)}", f"{n + 1:,} rows", None, "exactly once", ok,
                 f"tests/archive/test_partitions.py's scenario at full size; took {seconds:.0f} s")]


def bench_convert(workdir, url, n):
    """`partition --convert` of n rows under a relay delivering a writer's messages, killed -9 twice. The
    issue's 20,000 delivered meanwhile for 300,000 rows (the same share at other sizes): the writer commits
    ten messages at a time, as a busy webhook's group commit does, so that it outpaces the conversion."""
    test_convert, relayutil = harness("test_convert"), harness("relayutil")
    spawn = Spawner(workdir)
    wanted = n * 20_000 // 300_000
    start = time.perf_counter()
    try:
        result = test_convert.convert_through_kill_9(spawn, pathlib.Path(workdir), url, n, per_commit=10)
    finally:
        spawn.close()
    seconds = time.perf_counter() - start
    rows = relayutil.pg_rows(url)
    doubled = len(rows) - len(set(rows))
    ok = (set(rows) == result["expected"] and not doubled and result["relay_clean"]
          and result["during"] >= wanted)
    return [Line(f"partition --convert: {n:,} rows under a delivering relay, kill -9 x2",
                 f"{len(set(rows)):,} rows ({result['during']:,} delivered during the conversion,"
                 f" {len(result['expected']) - n:,} in all), {doubled} doubled,"
                 f" relay errors: {'none' if result['relay_clean'] else 'some'}", f"{len(result['expected']):,} rows",
                 None, f"exactly once, ≥ {wanted:,} delivered during", ok,
                 f"tests/archive/test_convert.py's scenario at full size; took {seconds:.0f} s")]
