"""End to end: Outbox.put -> row visible in PostgreSQL, at a fixed rate, relay in the same process.

The relay runs as `outbox-relay run` runs it (Relay.run() on a thread, woken by puts). A separate
process polls the target every few milliseconds for new message_ids and records when each became
visible; latency = visible - the moment put() was called. Both clocks are this machine's.
"""

import multiprocessing
import os
import threading
import time

import payloads
import psycopg2
from common import limit_line, percentile

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.target import Target

POLL_INTERVAL = 0.002


def poll_target(url, prefix, count, timeout, out):
    """Child process: {message_id: first time seen} for `count` ids starting with `prefix`."""
    conn = psycopg2.connect(url, application_name="bench-poller")
    conn.autocommit = True
    seen = {}
    last = prefix
    deadline = time.time() + timeout
    with conn.cursor() as cur:
        while len(seen) < count and time.time() < deadline:
            # message_ids grow with put order and the relay commits them in that order.
            cur.execute("SELECT message_id FROM feishu_messages WHERE message_id > %s AND message_id LIKE %s"
                        " ORDER BY message_id", (last, prefix + "%"))
            rows = cur.fetchall()
            now = time.time()
            for (mid,) in rows:
                seen.setdefault(mid, now)
            if rows:
                last = rows[-1][0]
            time.sleep(POLL_INTERVAL)
    conn.close()
    out.put(seen)


def bench_e2e(workdir, url, rate, seconds):
    path = os.path.join(workdir, "e2e-outbox.db")
    run = "e2e"
    count = int(rate * seconds)
    events = payloads.events(run, count)
    box = Outbox(path)
    target = Target(url)
    target.ensure_schema()
    relay = Relay(box, target)
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    poller = ctx.Process(target=poll_target, args=(url, payloads.id_prefix(run), count, seconds + 60, results))
    poller.start()
    put_at = {}
    try:
        time.sleep(0.5)  # the poller connects
        start = time.perf_counter()
        wall0 = time.time() - start
        for i, ev in enumerate(events):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = time.perf_counter()
            box.put(ev)
            put_at[ev["event"]["message"]["message_id"]] = wall0 + t
        achieved = count / (time.perf_counter() - start)
        seen = results.get(timeout=120)
        poller.join(10)
    finally:
        relay.stop()
        thread.join(30)
        if poller.is_alive():
            poller.kill()
        target.close()
        box.close()
    if len(seen) != count:
        raise RuntimeError(f"end-to-end: {len(seen)} of {count} messages reached the target")
    lat = [(seen[mid] - t) * 1000 for mid, t in put_at.items()]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    label = f"end-to-end: put -> visible in PostgreSQL, {rate}/s for {seconds:g}s (achieved {achieved:.0f}/s)"
    note = f"relay thread in-process; target polled every {POLL_INTERVAL * 1000:.0f} ms by a separate process"
    return [limit_line(f"{label}, p50", p50, "ms", 50, note=note),
            limit_line(f"{label}, p99 (max {max(lat):.0f} ms)", p99, "ms", 250, note=note)]
