"""The benchmarks must keep running: `bench/run.py --quick` exits 0 and fills every line of its table.

A smoke test, not a timed one: the figures of a quick run are not meaningful and are not checked,
only that each line was measured (a number, not "n/a") and judged against its target.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

import pgharness
from serverproc import REPO
from skiputil import unavailable

ROOT = REPO
WRK = "/usr/bin/wrk"

pytestmark = [pytest.mark.slow, pytest.mark.pg]

# Every line of the table, by how it starts; the ratio lines also need a baseline figure.
EXPECTED = [
    ("ingest: put, 1/call, sync=FULL vs raw sqlite3", True),
    ("ingest: put, 1/call vs persist-queue", True),
    ("ingest: put, 1/call vs old JSON file", True),
    ("ingest: put_many, 500/call vs executemany 500/tx", True),
    ("webhook: POST, 16 conns vs bare WSGI + sqlite3", True),
    ("webhook: latency at full load, 16 conns", True),
    ("webhook: p99 at 500 req/s", False),
    ("relay: drain 3,000 backlog vs raw COPY", True),
    ("relay: drain 3,000 backlog vs connect+insert per msg", True),
    ("relay: max connections held (pool_size=2)", False),
    ("events: drain 1,000 rows, 30% of them events, vs messages only", True),
    ("relay over a 5 ms RTT link with TLS vs the old way on it", True),
    ("relay over a 5 ms RTT link vs the same at 0 ms", True),
    ("end-to-end: put -> visible in PG, 200/s, p50", False),
    ("end-to-end: put -> visible in PG, 200/s, p99", False),
    ("put with 20,000 rows parked vs an empty outbox", True),
    ("put with 20,000 rows parked vs 1,000 pending", True),
    ("status with 20,000 rows parked vs an empty outbox", True),
    ("relay memory: peak RSS draining 20,300 rows", False),
    ("outbox disk after draining 20,300 rows, vs 2,000 rows", True),
    ("spool ingestion with 3,000 waiting vs 1,000 waiting", True),
    ("filesystem alone: read + unlink with 3,000 vs 1,000 in new/", True),
    ("spool status with 3,000 waiting vs 1,000 waiting", True),
    ("hook: per message, service stopped (spool), p99", False),
    ("hook: per message, service running: spool vs HTTP POST", True),
    ("relay: drain 3,000 into MariaDB vs LOAD DATA", True),
    ("export: peak RSS of 5,000 rows to JSON lines", True),
    ("archive: search '消息1' --since 30d, partitioned vs plain (10,000 rows)", True),
    ("archive: search on chat --since 30d, partitioned vs plain (10,000 rows)", True),
    ("archive: stats --days 30, partitioned vs plain (10,000 rows)", True),
    ("retention: one month of 5,000 rows, DROP vs DELETE", True),
    ("partitioned load: 3,000 messages over 36 months, 300 again, kill -9", True),
    ("partition --convert: 2,000 rows under a delivering relay, kill -9 x2", True),
]
NUMBER = re.compile(r"\d")


def table_rows(stdout):
    """{what: [ours, baseline, ratio, target, result]} from the printed markdown table."""
    rows = {}
    for line in stdout.splitlines():
        if not line.startswith("| ") or line.startswith("| what "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_quick_benchmark_fills_every_line(tmp_path):
    if not pgharness.find_pg_bindir():
        unavailable("PostgreSQL server binaries not found: the benchmarks start their own server")
    if not (os.path.exists(WRK) or shutil.which("wrk")):
        unavailable("wrk not installed: the webhook benchmark needs it (apt-get install wrk)")
    results = tmp_path / "RESULTS.md"
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--quick",
             "--workdir", str(tmp_path / "work"), "--results", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:  # say which section was running: the log is its stderr
        pytest.fail(f"bench/run.py --quick still running after 300 s; its log:\n{(e.stderr or b'').decode()[-4000:]}")
    assert proc.returncode == 0, f"bench/run.py --quick exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    out = proc.stdout
    for label in ("CPU:", "Python ", "SQLite ", "PostgreSQL "):
        assert label in out, f"machine info lacks {label!r}:\n{out}"
    rows = table_rows(out)
    for what, has_baseline in EXPECTED:
        assert what in rows, f"the table has no line {what!r}:\n{out}"
        ours, baseline, ratio, target, result = rows[what]
        assert NUMBER.search(ours) and not ours.startswith("n/a"), f"{what}: no figure ({ours!r})"
        if has_baseline:
            assert NUMBER.search(baseline), f"{what}: no baseline figure ({baseline!r})"
        assert result in ("PASS", "MISS", "—"), f"{what}: result {result!r}"
        assert target != "—" or result == "—", f"{what}: judged without a target"
    assert len(rows) == len(EXPECTED), f"unexpected lines: {sorted(set(rows) - {w for w, _ in EXPECTED})}"
    assert not results.exists(), "a quick run must not write RESULTS.md"
