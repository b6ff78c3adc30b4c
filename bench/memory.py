"""A million rows: what put and status cost with them parked, the relay's peak memory draining them
(a separate `outbox-relay sync`), and the disk the outbox gives back afterwards.

The relay is the real CLI, started through a tiny wrapper process whose only child it is, so
getrusage(RUSAGE_CHILDREN).ru_maxrss is exactly that process's peak resident set size.
"""

import json
import os
import subprocess
import sys
import time

import backlog
import payloads
from common import limit_line, median, ratio_line, remove_sqlite

from outbox_relay.config import Config
from outbox_relay.operate.status import collect_status
from outbox_relay.outbox import Outbox
from outbox_relay.targets import open_target

WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
print(json.dumps({"rc": proc.returncode, "seconds": time.perf_counter() - start,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stdout": proc.stdout.decode(errors="replace")[-4000:],
                  "stderr": proc.stderr.decode(errors="replace")[-2000:]}))
"""


def bench_memory(workdir, url, n, limit_mb=100, puts=300, statuses=15):
    path = os.path.join(workdir, "memory-outbox.db")
    t0 = time.perf_counter()
    backlog.fill(path, n, "memory")  # default max_pending: all but 1,000 parked
    fill_seconds = time.perf_counter() - t0
    events = payloads.events("scale", 3 * puts)
    empty, at_limit = os.path.join(workdir, "empty-outbox.db"), os.path.join(workdir, "limit-outbox.db")
    remove_sqlite(empty)
    backlog.fill(at_limit, 1000, "limit")  # exactly max_pending pending: every further put parks one
    put_big, put_empty = put_rate(path, events[:puts]), put_rate(empty, events[puts:2 * puts])
    put_limit = put_rate(at_limit, events[2 * puts:])
    status_big, status_empty = status_seconds(path, statuses), status_seconds(empty, statuses)
    lines = [
        ratio_line(f"put with {n:,} rows parked vs an empty outbox", put_big, put_empty, "msg/s", 0.9,
                   note=f"{puts} single puts (synchronous=full, default max_pending: over it, each put parks"
                        " the oldest pending row, which an empty outbox does not), same process, in a row"),
        ratio_line(f"put with {n:,} rows parked vs 1,000 pending", put_big, put_limit, "msg/s", 0.9,
                   note=f"{puts} single puts into an outbox at exactly max_pending (1,000 pending), where each"
                        " put parks one as well: what a put costs does not grow with the backlog"),
        ratio_line(f"status with {n:,} rows parked vs an empty outbox", 1 / status_big, 1 / status_empty,
                   "/s", 0.9, fmt="{:,.1f}",
                   note=f"ops.collect_status (counts, oldest pending age, sizes, heartbeat, health), median of"
                        f" {statuses}: {status_big * 1000:.1f} ms vs {status_empty * 1000:.1f} ms"),
    ]
    lines += drain_memory(workdir, path, url, n + puts, limit_mb, fill_seconds)
    return lines


def put_rate(path, events):
    with Outbox(path) as box:
        start = time.perf_counter()
        for ev in events:
            box.put(ev)
        return len(events) / (time.perf_counter() - start)


def status_seconds(path, runs):
    cfg = Config(outbox=path)
    with Outbox(path, readonly=True) as box:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            collect_status(cfg, box, None)
            times.append(time.perf_counter() - start)
    return median(times)


def drain_memory(workdir, path, url, n, limit_mb, fill_seconds):
    # The table exists before the relay starts, so its own start-up does no DDL.
    target = open_target(url)
    target.ensure_schema()
    target.close()
    exe = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
    env = dict(os.environ, OUTBOX_RELAY_OUTBOX=path, OUTBOX_RELAY_TARGET=url)
    env.pop("OUTBOX_RELAY_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", WRAPPER, exe, "-q", "sync", "--json"], env=env, cwd=workdir,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory wrapper failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        raise RuntimeError(f"outbox-relay sync exited {report['rc']}: {report['stderr']}")
    synced = json.loads(report["stdout"][report["stdout"].index("{"):])
    if synced["delivered"] != n:
        raise RuntimeError(f"outbox-relay sync delivered {synced['delivered']} of {n}: {synced}")
    peak_mb = report["maxrss_kb"] / 1024
    rate = n / report["seconds"]
    after = disk_bytes(path)
    reference = os.path.join(workdir, "reference-outbox.db")
    remove_sqlite(reference)
    with Outbox(reference) as box:
        box.put_many(payloads.events("reference", 2000))
    need = disk_bytes(reference)
    return [
        limit_line(f"relay memory: peak RSS draining {n:,} rows", peak_mb, "MB", limit_mb, fmt="{:,.1f}",
                   note=f"`outbox-relay sync` over the {n:,} rows (default max_pending: the parked ones are"
                        " taken oldest first), its peak RSS from getrusage(RUSAGE_CHILDREN) in a one-child"
                        f" wrapper; drained in {report['seconds']:.0f} s ({rate:,.0f} rows/s); backlog built in"
                        f" {fill_seconds:.0f} s"),
        limit_line(f"outbox disk after draining {n:,} rows, vs 2,000 rows", after / need, "x", 2,
                   fmt="{:,.2f}", baseline=f"{need / 1e6:,.1f} MB",
                   note=f"outbox.db + WAL after the drain: {after / 1e6:,.1f} MB; baseline: a fresh outbox"
                        " holding 2,000 of the same messages (put_many)"),
    ]


def disk_bytes(path):
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
