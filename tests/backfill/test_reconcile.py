"""Issue 21, the service reconciles the archive against Feishu's history by itself: every acceptance
line, against the fake Feishu Open API (tests/fakefeishu.py: real HTTP on 127.0.0.1) and a real
PostgreSQL target, with `run` in this process or as a subprocess (kill -9, SIGTERM)."""

import json
import logging
import random
import signal
import threading
import time

from outbox_relay.backfill.feishu import SETTLE_MS
from outbox_relay.backfill.reconcile_state import ReconcileState, read_calls
from outbox_relay.outbox import Outbox

from fakefeishu import FakeFeishu, history
from relayutil import pg_query, row_stats
from serverproc import wait_until
from serviceutil import metric, post, running_service, scrape, service_process

CHATS = ("oc_recon00000000000aaaa1", "oc_recon00000000000bbbb2", "oc_recon00000000000cccc3")
SETTLE_S = SETTLE_MS // 1000
INTERVAL = 0.5


def feishu_settings(fake, **more):
    return {"feishu_app_id": fake.app_id, "feishu_app_secret": fake.app_secret, "feishu_api_base": fake.url,
            "feishu_rate": 500.0, "feishu_reconcile_interval": INTERVAL, "feishu_reconcile_window": 4 * 3600,
            "feishu_reconcile_budget": 100_000, **more}


def state_of(outbox_path):
    with Outbox(outbox_path, readonly=True) as box:
        return ReconcileState.read(box)


def read_calls_total(outbox_path):
    with Outbox(outbox_path, readonly=True) as box:
        return read_calls(box)[1]


def passes(outbox_path):
    return state_of(outbox_path).passes


def status_json(invoke, outbox, target, fake=None, **flags):
    args = ["status", "--json", "--outbox", outbox, "--target", target]
    if fake is not None:
        args += ["--feishu-app-id", fake.app_id, "--feishu-app-secret", fake.app_secret,
                 "--feishu-api-base", fake.url]
    for name, value in flags.items():
        args += ["--" + name.replace("_", "-"), value]
    result = invoke(*args)
    return json.loads(result.stdout)


def post_all(url, events, threads=4):
    """POST each event to the webhook, from a few threads at once (the order is the list's, shuffled)."""
    failures = []

    def worker(part):
        for event in part:
            r = post(url, event)
            if r.status != 200:
                failures.append(r)
    parts = [events[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures[:3]


# -- acceptance 1: 3 chats, 3,000 messages over 3 hours, the webhook gets 96 % -------------------------

def test_three_chats_of_3000_messages_with_4_percent_missed_by_the_webhook_are_complete_within_two_passes(
        invoke, tmp_path, pg_url, caplog):
    caplog.set_level(logging.INFO, logger="outbox_relay")
    rng = random.Random(21)
    with FakeFeishu() as fake:
        start = int(fake.now()) - 3 * 3600 - 600
        pairs = {c: history(c, 1000, start, 3 * 3600, recalled_every=0, edited_every=0) for c in CHATS}
        for chat_id, chat_pairs in pairs.items():
            fake.add_chat(chat_id, [i for i, _ in chat_pairs], name=f"群 {chat_id[-1]}")
        everything = [p for chat in pairs.values() for p in chat]
        missed = {item["message_id"] for item, _ in rng.sample(everything, 120)}
        fake.freeze(start - 1)  # Feishu's clock: nothing sent yet
        outbox = str(tmp_path / "outbox.db")
        with running_service(tmp_path, target=pg_url, outbox=outbox, **feishu_settings(fake)) as svc:
            # Feishu's clock moves on a half hour at a time; each half hour's messages reach the webhook
            # (all but the missed ones, in random order) before the clock passes them, as they would.
            half_hour = 1800
            for t in range(start, start + 3 * 3600, half_hour):
                fake.freeze(t - 1)
                sent = [e for i, e in everything if t * 1000 <= int(i["create_time"]) < (t + half_hour) * 1000
                        and i["message_id"] not in missed]
                rng.shuffle(sent)
                post_all(svc.url, sent)
            fake.freeze(start + 3 * 3600 + SETTLE_S + 60)
            began = passes(outbox)
            wait_until(lambda: passes(outbox) >= began + 2, timeout=60, what="two passes after the last message")
            wait_until(lambda: row_stats(pg_url) == (3000, 3000), timeout=30, what="the relay to deliver 3,000")
            samples = scrape(svc.url)
            assert metric(samples, "outbox_relay_reconcile_gaps_total", source="webhook") == 120
            checked = metric(samples, "outbox_relay_reconcile_checked_until_seconds")
            # "Complete up to" trails Feishu's clock by the settle minute (a message sent a moment ago
            # may not be listed yet) and one interval at most.
            assert fake.now() - SETTLE_S - INTERVAL - 2 <= checked <= fake.now() - SETTLE_S + 2
            assert metric(samples, "outbox_relay_reconcile_calls_total") > 0
        assert read_calls_total(outbox) == fake.calls()  # every request counted, once
        ids = {r[0] for r in pg_query(pg_url, "SELECT message_id FROM feishu_messages")}
        assert ids == {i["message_id"] for i, _ in everything}
        report = status_json(invoke, outbox, pg_url, fake)["reconcile"]
        assert report["enabled"] and report["gaps_24h"] == 120 and report["gaps_total"] == {"webhook": 120}
        assert {c["chat_id"] for c in report["chats"]} == set(CHATS)
        assert all(c["complete_up_to"] == report["complete_up_to"] or c["complete_up_to"] >= report["complete_up_to"]
                   for c in report["chats"])
        per_chat = {c["chat_id"]: c["gaps_24h"] for c in report["chats"]}
        assert per_chat == {c: sum(i["message_id"] in missed for i, _ in pairs[c]) for c in CHATS}
    # A gap is logged once per pass per chat, with its count: never once per message.
    gap_lines = [r.getMessage() for r in caplog.records if "gap(s) filled" in r.getMessage()]
    assert gap_lines and len(gap_lines) < 120
    assert sum(int(line.split(": ")[2].split(" ")[0]) for line in gap_lines) == 120
    assert not any(m in line for line in gap_lines for m in missed)
