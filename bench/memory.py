"""Relay memory: peak RSS of a separate `outbox-relay sync` process draining a huge pending backlog.

The relay is the real CLI, started through a tiny wrapper process whose only child it is, so
getrusage(RUSAGE_CHILDREN).ru_maxrss is exactly that process's peak resident set size.
"""

import json
import os
import subprocess
import sys
import time

import backlog
from common import limit_line

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


def bench_memory(workdir, url, n, limit_mb=100):
    path = os.path.join(workdir, "memory-outbox.db")
    t0 = time.perf_counter()
    backlog.fill(path, n, "memory", max_pending=n)
    fill_seconds = time.perf_counter() - t0
    # The table exists before the relay starts, so its own start-up does no DDL.
    target = open_target(url)
    target.ensure_schema()
    target.close()
    exe = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
    env = dict(os.environ, OUTBOX_RELAY_OUTBOX=path, OUTBOX_RELAY_TARGET=url,
               OUTBOX_RELAY_MAX_PENDING=str(n))
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
    return [limit_line(f"relay memory: peak RSS draining {n:,} rows", peak_mb, "MB", limit_mb, fmt="{:,.1f}",
                       note=f"`outbox-relay sync` with OUTBOX_RELAY_MAX_PENDING={n} (every row pending), its"
                            " peak RSS from getrusage(RUSAGE_CHILDREN) in a one-child wrapper; drained in"
                            f" {report['seconds']:.0f} s ({rate:,.0f} rows/s); backlog built in"
                            f" {fill_seconds:.0f} s")]
