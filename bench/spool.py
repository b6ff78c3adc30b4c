"""The handoff spool with a large backlog: the ingestion rate `run` gets (SpoolIngester passes of 500
into a real outbox) while new/ holds many items, beside the same ingestion from a small new/; what
the filesystem alone does with the same directories; and what Spool.status (status, health, top,
/healthz) costs over each.

The same number of items is taken from both spools, so each rate includes the listings of new/ it
needed. A file operation in a directory of a million entries costs more than in a small one whatever
reads it (measured on ext4: an unlink took 16 µs in a directory of 30,000, 108 µs in one of 200,000), so
ingestion is judged against the filesystem's own ratio (at most 1), measured on the oldest items of
the same two directories just before: read and unlinked by plain os calls, no outbox.

The items are handed over by the writer's protocol (tmp/, then a rename into new/) without its
fsyncs: building the spool is preparation, not what is measured.
"""

import json
import os
import random
import time

import payloads
from common import Line, median, ratio_line

from outbox_relay.intake.spool import Spool, SpoolIngester, item_name
from outbox_relay.outbox import Outbox

SHARE = 0.8  # of the filesystem's own large/small ratio (at most 1) that ingestion must keep


def bench_spool(workdir, large, small, statuses=15):
    raw = max(100, small // 5)  # items read and unlinked by plain os calls first, from each spool
    big, little = fill(workdir, "large", large + raw), fill(workdir, "small", small + raw)
    fs_big, fs_little = fs_rate(big, raw), fs_rate(little, raw)
    status_big, status_little = status_seconds(big, statuses), status_seconds(little, statuses)
    rate_big, rate_little = ingest_rate(big, workdir, small), ingest_rate(little, workdir, small)
    ratio, fs_ratio = rate_big / rate_little, fs_big / fs_little
    bar = SHARE * min(1.0, fs_ratio)  # a filesystem that measured faster on the big one is noise, not a bar
    return [
        Line(f"spool ingestion with {large:,} waiting vs {small:,} waiting", f"{rate_big:,.0f} msg/s",
             f"{rate_little:,.0f} msg/s", ratio, f"≥ {bar:.2f}× ({SHARE:g} × the filesystem's, ≤ 1)",
             ratio >= bar,
             note=f"{small:,} Feishu events taken from each spool by SpoolIngester.step (what `run` does:"
                  " passes of 500, one put_many each, then the unlinks) into a fresh outbox; new/ is listed"
                  " once per LISTING items taken (before issue 24's fix every pass listed and sorted all"
                  " of new/: 217 msg/s with 1,000,000 waiting)"),
        Line(f"filesystem alone: read + unlink with {large:,} vs {small:,} in new/", f"{fs_big:,.0f} files/s",
             f"{fs_little:,.0f} files/s", fs_ratio,
             note=f"the oldest {raw:,} items of each spool opened, read and unlinked by plain os calls (no"
                  " outbox), oldest first as ingestion takes them: what the directory's size costs by itself"),
        ratio_line(f"spool status with {large:,} waiting vs {small:,} waiting", 1 / status_big, 1 / status_little,
                   "/s", 0.8, fmt="{:,.1f}",
                   note=f"Spool.status (counts of new/ rejected/ tmp/, oldest age), median of {statuses}:"
                        f" {status_big * 1000:.1f} ms vs {status_little * 1000:.1f} ms"),
    ]


def fill(workdir, name, n):
    spool = Spool(os.path.join(workdir, f"spool-{name}")).ensure()
    rng = random.Random(f"spool-{name}")
    for i in range(n):
        item = item_name()
        tmp = os.path.join(spool.tmp, item)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payloads.event(f"spool{name}", i, rng), f, ensure_ascii=False)
        os.rename(tmp, os.path.join(spool.new, item))
    os.sync()  # the writeback of what was just written must not land in what is measured next
    return spool.path


def fs_rate(path, n):
    """Files a second that plain open/read/unlink get through the oldest n items of new/."""
    spool = Spool(path)
    paths = [os.path.join(spool.new, name) for name in spool.waiting(n)]
    start = time.perf_counter()
    for item in paths:
        with open(item, "rb") as f:
            f.read()
        os.unlink(item)
    return n / (time.perf_counter() - start)


def ingest_rate(path, workdir, take):
    """Items a second while a SpoolIngester (not started: its passes are called here) takes `take`."""
    outbox = os.path.join(workdir, f"{os.path.basename(path)}-outbox.db")
    with Outbox(outbox, max_pending=take) as box:
        ingester = SpoolIngester(Spool(path), box)
        start = time.perf_counter()
        while ingester.totals.seen < take:
            ingester.step()
        seconds = time.perf_counter() - start
    if ingester.totals.stored != take:
        raise RuntimeError(f"{path}: {ingester.totals.stored} of {take} stored ({ingester.totals})")
    return take / seconds


def status_seconds(path, runs):
    spool = Spool(path)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        spool.status()
        times.append(time.perf_counter() - start)
    return median(times)
