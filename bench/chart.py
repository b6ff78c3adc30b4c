"""The chart of a full run (bench/chart.png, shown in the README): drain rate against round-trip time
for the relay and the old way, and put latency percentiles for Outbox.put and a bare sqlite3 insert."""

import os
import time

import ingest
import payloads
from common import percentile

PERCENTILES = (50, 90, 99, 99.9)


def put_latencies(workdir, n):
    """Per-call latency (ms) of n single puts: ours, and raw sqlite3 with the same pragmas."""
    events = payloads.events("chart", n)
    rows = ingest.raw_rows(events)
    path = os.path.join(workdir, "chart-ours.db")
    ingest.remove_sqlite(path)
    from outbox_relay.outbox import Outbox
    ours = []
    with Outbox(path) as box:
        for ev in events:
            start = time.perf_counter()
            box.put(ev)
            ours.append((time.perf_counter() - start) * 1000)
    raw, conn = [], ingest.raw_connection(os.path.join(workdir, "chart-raw.db"))
    try:
        for ev, values in rows:
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(ingest.INSERT, (*values, ingest._dumps(ev)))
            conn.execute("COMMIT")
            raw.append((time.perf_counter() - start) * 1000)
    finally:
        conn.close()
    return {"Outbox.put": [percentile(ours, p) for p in PERCENTILES],
            "raw sqlite3": [percentile(raw, p) for p in PERCENTILES]}


def draw(path, rates, latencies):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rtts = sorted(rates)
    left.plot(rtts, [rates[r][0] for r in rtts], "o-", label="outbox-relay drain (batches of 500)")
    left.plot(rtts, [rates[r][1] for r in rtts], "s--", label="old way (connect + insert + commit)")
    left.set_yscale("log")
    left.set_xticks(rtts)
    left.set_xlabel("round-trip time to PostgreSQL, ms (TLS)")
    left.set_ylabel("messages per second (log)")
    left.set_title("Drain rate against distance")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    width = 0.38
    xs = range(len(PERCENTILES))
    for k, (name, values) in enumerate(latencies.items()):
        right.bar([x + (k - 0.5) * width for x in xs], values, width, label=name)
    right.set_xticks(list(xs), [f"p{p:g}" for p in PERCENTILES])
    right.set_ylabel("ms per call")
    right.set_title("put latency, synchronous=FULL")
    right.grid(True, axis="y", alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
