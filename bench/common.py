"""Shared pieces of the benchmarks: result lines, the table, machine info, PostgreSQL, helpers."""

import dataclasses
import importlib
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
TESTS = os.path.join(ROOT, "tests")


@dataclasses.dataclass
class Line:
    """One row of the table. `ratio_target` (>=) or `limit` (<=) decides PASS/MISS; neither: info."""

    what: str
    ours: str
    baseline: str = "—"
    ratio: float | None = None
    target: str = "—"
    ok: bool | None = None
    note: str = ""

    @property
    def verdict(self):
        return "—" if self.ok is None else ("PASS" if self.ok else "MISS")


def ratio_line(what, ours, base, unit, minimum, fmt="{:,.0f}", note=""):
    ratio = ours / base if base else float("inf")
    return Line(what, f"{fmt.format(ours)} {unit}", f"{fmt.format(base)} {unit}", ratio,
                f"≥ {minimum:g}×", ratio >= minimum, note)


def limit_line(what, value, unit, limit, fmt="{:,.1f}", baseline="—", note=""):
    return Line(what, f"{fmt.format(value)} {unit}", baseline, None, f"≤ {limit:g} {unit}",
                value <= limit, note)


def na_line(what, reason, target="—"):
    return Line(what, f"n/a ({reason})", "—", None, target, None)


def render(lines):
    headers = ("what", "ours", "baseline (same run)", "ratio", "target", "result")
    rows = [(ln.what, ln.ours, ln.baseline, "—" if ln.ratio is None else f"{ln.ratio:,.2f}×",
             ln.target, ln.verdict) for ln in lines]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(fmt(r) for r in rows)
    return "\n".join(out)


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    data = sorted(values)
    k = max(0, min(len(data) - 1, int(round(p / 100 * len(data) + 0.5)) - 1))
    return data[k]


def median(values):
    return statistics.median(values)


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(pg_version):
    mem = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; RAM {mem}",
        f"OS: {platform.system()} {platform.release()}; filesystem of the outbox: {fs_type(ROOT)}",
        f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; PostgreSQL {pg_version}",
    ]


def fs_type(path):
    try:
        out = subprocess.run(["df", "--output=fstype", path], capture_output=True, text=True, timeout=5)
        return out.stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def harness(name):
    """A module of tests/ that starts throwaway servers (pgharness, mariaharness): the benchmarks
    start theirs exactly as the tests do."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    return importlib.import_module(name)


# The tests' process helpers are plain library code (no pytest): the same free port and port probe.
free_port, port_open = harness("serverproc").free_port, harness("serverproc").port_open


def start_pg():
    """A throwaway PostgreSQL cluster."""
    pgharness = harness("pgharness")
    pgharness.sweep_stale_dirs()
    return pgharness.PgCluster.create()


def fresh_database(pg, name):
    pg.drop_database(name, force=True)
    pg.create_database(name)
    return pg.url(name)


def query_one(url, sql):
    """One row of one query on a connection of its own: what a benchmark checks before it reports."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def wait_for(predicate, timeout, interval=0.01, what="condition"):
    """serverproc.wait_until with a fixed poll interval (that one's grows to 0.25 s): a benchmark's
    end is timed by it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)




def remove_sqlite(path):
    for suffix in ("", "-wal", "-shm", ".lock"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
