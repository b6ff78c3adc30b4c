"""The OpenClaw hook (integrations/openclaw/outbox-relay/handler.js) under Node: time per message.

Stopped: no outbox-relay process at all; the hook hands each event over through the spool
(tmp/ -> fsync -> rename into new/ -> fsync new/). Running: `outbox-relay run` (relay + webhook,
PostgreSQL target) ingests that same spool while the hook writes it. The baseline of the running
line, measured in the same run against the same service, is the hook's HTTP path (POST to the
webhook, which commits to the outbox before it answers): what the hook did before the spool.

Each time is taken inside Node around `await handler(event)` (run-hook.mjs --jsonl), one event at a
time, in the gateway's event shape (tests/samples/hook_group.json, hook_direct.json). At the end
every message of the three runs must be in PostgreSQL exactly once, or the benchmark fails.
"""

import copy
import json
import os
import shutil
import subprocess
import sys

import psycopg2
from common import ROOT, TESTS, Line, free_port, na_line, percentile, port_open, query_one, wait_for

RUN_HOOK = os.path.join(ROOT, "integrations", "openclaw", "run-hook.mjs")
STOPPED = "hook: per message, service stopped (spool), p99"
RUNNING = "hook: per message, service running: spool vs HTTP POST"
WARMUP = 20


def events(prefix, count):
    samples = []
    for name in ("hook_group.json", "hook_direct.json"):
        with open(os.path.join(TESTS, "samples", name), encoding="utf-8") as f:
            samples.append(json.load(f))
    for i in range(count):
        event = copy.deepcopy(samples[i % 2])
        event["context"].update(messageId=f"{prefix}_{i:06d}", content=f"第 {i} 条: 明天的会议改到下午三点",
                                timestamp=1796006382258 + i)
        yield event


def run_hook(node, workdir, prefix, count, **env_extra):
    """Milliseconds per event (warm-up events excluded); every event must be handed over."""
    path = os.path.join(workdir, f"{prefix}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for event in events(prefix, count + WARMUP):
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    env.update(env_extra)
    proc = subprocess.run([node, RUN_HOOK, "--jsonl", path], env=env, capture_output=True, text=True,
                          timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    if proc.returncode != 0 or len(results) != count + WARMUP:
        raise RuntimeError(f"the hook failed ({prefix}): {proc.stderr[-1000:]}")
    return [r["ms"] for r in results[WARMUP:]]


def start_service(workdir, url, spool):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    log = open(os.path.join(workdir, "hook-service.log"), "wb")
    proc = subprocess.Popen([exe, "-q", "run", "--outbox", os.path.join(workdir, "hook-outbox.db"),
                             "--target", url, "--spool", spool, "--http", f"127.0.0.1:{port}"],
                            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    wait_for(lambda: proc.poll() is not None or port_open(port), 30, what="outbox-relay run")
    if proc.poll() is not None:
        raise RuntimeError("outbox-relay run exited at start; see hook-service.log")
    return proc, f"http://127.0.0.1:{port}"


def rows(url):
    try:
        return query_one(url, "SELECT count(*), count(DISTINCT message_id) FROM feishu_messages")
    except psycopg2.Error:  # the table is not there yet
        return (0, 0)


def bench_hook(workdir, url, count):
    node = shutil.which("node")
    if node is None:
        return [na_line(STOPPED, "node not installed", "≤ 20 ms"), na_line(RUNNING, "node not installed")]
    spool = os.path.join(workdir, "hook-spool")
    os.makedirs(spool, exist_ok=True)
    stopped = run_hook(node, workdir, "om_hkstop", count, OUTBOX_RELAY_SPOOL=spool)
    proc, base = start_service(workdir, url, spool)
    try:
        running = run_hook(node, workdir, "om_hkrun", count, OUTBOX_RELAY_SPOOL=spool)
        http = run_hook(node, workdir, "om_hkhttp", count, OUTBOX_RELAY_URL=base)
        total = 3 * (count + WARMUP)
        wait_for(lambda: rows(url)[0] >= total, 120, interval=0.1, what="every hooked message in PostgreSQL")
        if rows(url) != (total, total):
            raise RuntimeError(f"expected {total} rows once each, found {rows(url)}")
    finally:
        proc.terminate()
        proc.wait(30)
    return lines(stopped, running, http, count)


def lines(stopped, running, http, count):
    def pair(ms):
        return f"p50 {percentile(ms, 50):.1f} / p99 {percentile(ms, 99):.1f} ms"
    setup = (f"{count} events, one at a time, timed inside Node around the handler (run-hook.mjs --jsonl)"
             f" after {WARMUP} warm-up events; spool = tmp/ -> fsync -> rename -> fsync dir")
    p99 = percentile(stopped, 99)
    return [
        Line(STOPPED, pair(stopped), "—", None, "≤ 20 ms", p99 <= 20,
             note=f"{setup}; no outbox-relay process running; max {max(stopped):.1f} ms"),
        Line(RUNNING, pair(running), pair(http), None, "—", None,
             note=f"{setup}; `outbox-relay run` ingests the spool into PostgreSQL meanwhile; baseline: the"
                  " same hook with only OUTBOX_RELAY_URL set, POSTing to that service's webhook"),
    ]


