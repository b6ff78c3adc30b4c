"""Events beside messages: the relay's drain rate when 30 % of the rows are edits, recalls and
reactions vs messages only, the same number of rows into the same PostgreSQL, in the same run.

An event costs more than a message: its row goes to feishu_message_events and the batch then brings
the rows of the messages it names up to their history (targets/: the latest edit, the recall). The
issue's bar: no worse than 0.9x of a messages-only drain.
"""

import os
import random
import statistics
import time

import payloads
from common import harness, query_one, ratio_line, remove_sqlite

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

EVENT_SHARE = 0.3
CHUNK = 1000


def event_rows(run, n_messages, n_events, seed=19):
    """Feishu v2 events about the first messages: edits (40 %), reactions added (30 %) and removed
    (15 %), recalls (15 %), each of a message that exists, shuffled among the messages."""
    factories = harness("factories")
    rng = random.Random(seed)
    out, recalled = [], 0
    for k in range(n_events):
        mid = payloads.message_id(run, rng.randrange(n_messages))
        at = 1_700_000_000_000 + n_messages + k
        eid = f"ev-{run}-{k:08d}"
        roll = rng.random()
        if roll < 0.40:
            out.append(factories.feishu_edit(mid, eid, payloads.text(rng, 120), at))
        elif roll < 0.70:
            out.append(factories.feishu_reaction(mid, eid, at, emoji=rng.choice(("THUMBSUP", "OK", "SMILE"))))
        elif roll < 0.85:
            out.append(factories.feishu_reaction(mid, eid, at, added=False))
        else:  # a message is recalled once: a second recall of it would be the same fact, one row
            out.append(factories.feishu_recall(payloads.message_id(run, recalled), eid, at))
            recalled += 1
    return out


def fill(path, items):
    box = Outbox(path, max_pending=len(items) + 1)  # all pending: the drain is what is measured
    try:
        for i in range(0, len(items), CHUNK):
            box.put_many(items[i:i + CHUNK])
    finally:
        box.close()


def drain_rate(path, url, n, n_events):
    box = Outbox(path)
    target = open_target(url, pool_size=2)
    try:
        target.ensure_schema()
        start = time.perf_counter()
        totals = Relay(box, target, batch_size=500).drain()
        seconds = time.perf_counter() - start
    finally:
        target.close()
        box.close()
    counts = archived(url)
    if totals["delivered"] != n or counts != (n - n_events, n_events):
        raise RuntimeError(f"relay delivered {dict(totals)}, the archive holds {counts} (messages, events);"
                           f" expected {n - n_events} messages and {n_events} events")
    return n / seconds


def archived(url):
    return query_one(url, "SELECT (SELECT count(*) FROM feishu_messages), (SELECT count(*) FROM feishu_message_events)")


def bench_events(workdir, pg, n, rounds=5):
    """Each round drains both outboxes, built afresh, into fresh databases, one right after the other
    (alternating which goes first), so both see the same load on the machine; the figure is the median
    of the rounds' ratios, the rates shown are the medians of each."""
    from common import fresh_database

    n_events = int(n * EVENT_SHARE)
    messages_only = payloads.events("evonly", n)
    mixed = payloads.events("evmix", n - n_events) + event_rows("evmix", n - n_events, n_events)
    random.Random(7).shuffle(mixed)
    plain_rates, mixed_rates = [], []
    for r in range(rounds):
        order = [("plain", messages_only, 0, plain_rates), ("mixed", mixed, n_events, mixed_rates)]
        for name, items, events, rates in (order if r % 2 == 0 else order[::-1]):
            path = os.path.join(workdir, f"events-{name}.db")
            remove_sqlite(path)
            fill(path, items)
            rates.append(drain_rate(path, fresh_database(pg, f"bench_events_{name}"), len(items), events))
            remove_sqlite(path)
    ratio = statistics.median(m / p for m, p in zip(mixed_rates, plain_rates))
    base = statistics.median(plain_rates)
    return [ratio_line(f"events: drain {n:,} rows, {EVENT_SHARE:.0%} of them events, vs messages only",
                       base * ratio, base, "rows/s", 0.9,
                       note=f"median of {rounds} paired rounds' ratios, shown as ours = the baseline's median x that"
                            f" ratio (ours {', '.join(f'{x:,.0f}' for x in mixed_rates)};"
                            f" baseline {', '.join(f'{x:,.0f}' for x in plain_rates)}); events: 40 % edits,"
                            " 45 % reactions added/removed, 15 % recalls of messages in the same drain;"
                            " Relay(batch_size=500), pool_size=2, PostgreSQL")]
