"""End to end: Outbox.put -> row visible in PostgreSQL, at a fixed rate, relay in the same process.

The relay runs as `outbox-relay run` runs it (Relay.run() on a thread, woken by puts). A separate
process polls the target every few milliseconds for new message_ids and records when each became
visible; latency = visible - the moment put() was called. Both clocks are this machine's.
"""

import json
import os
import subprocess
import sys
import threading
import time

import payloads
import psycopg2
from common import limit_line, percentile

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

POLL_INTERVAL = 0.002


def poll_target(url, prefix, count, timeout):
    """In a child process: {message_id: first time seen} for `count` ids starting with `prefix`."""
    conn = psycopg2.connect(url, application_name="bench-poller")
    conn.autocommit = True
    print("ready", flush=True)
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
    return seen


def bench_e2e(workdir, url, rate, seconds):
    path = os.path.join(workdir, "e2e-outbox.db")
    run = "e2e"
    count = int(rate * seconds)
    events = payloads.events(run, count)
    box = Outbox(path)
    target = open_target(url)
    target.ensure_schema()
    relay = Relay(box, target)
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    poller = subprocess.Popen([sys.executable, os.path.abspath(__file__), url, payloads.id_prefix(run),
                               str(count), str(seconds + 60)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    put_at = {}
    try:
        if poller.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"poller failed: {poller.communicate()[1].decode()[-2000:]}")
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
        out, err = poller.communicate(timeout=seconds + 120)
        if poller.returncode != 0:
            raise RuntimeError(f"poller failed: {err.decode()[-2000:]}")
        seen = json.loads(out)
    finally:
        relay.stop()
        thread.join(30)
        if poller.poll() is None:
            poller.kill()
            poller.wait()
        target.close()
        box.close()
    if len(seen) != count:
        raise RuntimeError(f"end-to-end: {len(seen)} of {count} messages reached the target")
    lat = [(seen[mid] - t) * 1000 for mid, t in put_at.items()]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    note = (f"Outbox.put at {rate}/s (achieved {achieved:.0f}/s) for {seconds:g} s, Relay.run() on a thread"
            f" of the same process; a separate process polls the target every {POLL_INTERVAL * 1000:.0f} ms;"
            f" latency = first seen - put() called; max {max(lat):.0f} ms")
    return [limit_line(f"end-to-end: put -> visible in PG, {rate}/s, p50", p50, "ms", 50, note=note),
            limit_line(f"end-to-end: put -> visible in PG, {rate}/s, p99", p99, "ms", 250, note=note)]


if __name__ == "__main__":
    url, prefix, count, timeout = sys.argv[1:5]
    print(json.dumps(poll_target(url, prefix, int(count), float(timeout))))
