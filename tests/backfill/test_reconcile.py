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

import fakefeishu
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
            top = invoke("top", "--once", "--json", "--interval", "0.2", "--url", svc.url, "--outbox", outbox)
            assert json.loads(top.stdout.strip().splitlines()[-1])["reconcile"]["gaps_total"] == {"webhook": 120}
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


# -- acceptance 2: 429s, expiring tokens, and a budget too small for every chat -----------------------

BUSY = {"oc_recon0000000000000dd1": 1000, "oc_recon0000000000000cc2": 300,  # ids sort against traffic
        "oc_recon0000000000000bb3": 100, "oc_recon0000000000000aa4": 50}


def a_chat_set(fake, now, heard=0.9, rng=None):
    """BUSY's chats over the last hour in the fake; -> ({chat: pairs}, the events the webhook got)."""
    rng = rng or random.Random(7)
    pairs = {c: history(c, n, now - 3600, 3000, thread_every=0) for c, n in BUSY.items()}
    for chat_id, chat_pairs in pairs.items():
        fake.add_chat(chat_id, [i for i, _ in chat_pairs])
    heard_events = [e for chat in pairs.values() for _, e in chat if rng.random() < heard]
    return pairs, heard_events


def test_under_429s_and_expiring_tokens_the_budget_holds_and_covers_the_busiest_chats_first(invoke, tmp_path, pg_url):
    # The busiest chat takes 20 pages, the next 6, the others 2 and 1, and the faults add about one
    # request in three: 45 is enough for the first and not for the second.
    budget = 45
    with FakeFeishu() as fake:
        pairs, heard = a_chat_set(fake, int(fake.now()))
        outbox = str(tmp_path / "outbox.db")
        with Outbox(outbox) as box:
            box.put_many(heard)  # what the webhook brought before: how busy each chat is
        fake.set_faults(rate_limit_every=6, reset_seconds=0, revoke_every=4)
        settings = feishu_settings(fake, feishu_reconcile_interval=3600, feishu_reconcile_window=7200,
                                   feishu_reconcile_budget=budget)
        with running_service(tmp_path, target=pg_url, outbox=outbox, **settings):
            wait_until(lambda: passes(outbox) >= 1, timeout=60, what="a pass")
            wait_until(lambda: row_stats(pg_url)[0] == len(heard) + sum(state_of(outbox).gaps_total.values()),
                       timeout=30, what="delivery of what the webhook brought and the gaps")
            assert fake.calls() <= budget  # the server's own count: the budget was never exceeded
        assert fake.calls() <= budget
        assert read_calls_total(outbox) == fake.calls()
        assert any(r.outcome == "429" for r in fake.requests) and any(r.outcome == "revoked" for r in fake.requests)
        assert len(fake.served(fakefeishu.TOKEN_PATH)) > 1  # tokens revoked and fetched again
        state = state_of(outbox)
        order = sorted(BUSY, key=lambda c: -BUSY[c])
        assert state.active == order  # busiest first, whatever their ids
        covered = [c for c in order if c not in state.uncovered]
        assert covered == order[:len(covered)] and 0 < len(covered) < len(order)
        report = status_json(invoke, outbox, pg_url, fake, feishu_reconcile_budget=budget)
        rc = report["reconcile"]
        assert [c["chat_id"] for c in rc["uncovered"]] == order[len(covered):]
        assert any("did not cover" in w and order[-1] in w for w in report["warnings"])
        assert report["health"]["level"] == "degraded"
        top = invoke("top", "--once", "--json", "--interval", "0.2", "--outbox", outbox, "--feishu-app-id", fake.app_id,
                     "--feishu-app-secret", fake.app_secret, "--feishu-reconcile-budget", budget)
        shown = json.loads(top.stdout.strip().splitlines()[-1])["reconcile"]
        assert [c["chat_id"] for c in shown["chats"] if not c["covered"]] == order[len(covered):]
        assert shown["calls_last_hour"] == fake.calls()
        archived = {r[0] for r in pg_query(pg_url, "SELECT message_id FROM feishu_messages")}
        for chat_id in covered:  # what the webhook missed in a covered chat is in the archive now
            assert {i["message_id"] for i, _ in pairs[chat_id]} <= archived
            assert state.chats[chat_id].checked_until is not None
        for chat_id in order[len(covered) + 1:]:
            assert state.chats.get(chat_id) is None or state.chats[chat_id].checked_until is None


# -- acceptance 3: kill -9 mid-pass, the next pass resumes, nothing twice -----------------------------

def test_kill_9_mid_pass_then_the_next_pass_resumes_and_nothing_is_committed_twice(tmp_path, pg_url):
    with FakeFeishu() as fake:
        pairs, heard = a_chat_set(fake, int(fake.now()), rng=random.Random(9))
        missed = {i["message_id"] for chat in pairs.values() for i, e in chat if e not in heard}
        outbox = str(tmp_path / "outbox.db")
        with Outbox(outbox) as box:
            box.put_many(heard)
        fake.set_faults(page_delay=0.15)
        settings = feishu_settings(fake, feishu_reconcile_interval=3600, target=pg_url)
        with service_process(tmp_path, **settings) as svc:
            wait_until(lambda: len(state_of(outbox).done) >= 2, timeout=60, what="two chats of the pass read")
            svc.proc.kill()  # kill -9 while the third chat's pages are read
            svc.proc.wait(10)
        killed = state_of(outbox)
        assert killed.pass_finished_at is None and len(killed.done) in (2, 3)
        mark = time.monotonic()
        fake.set_faults(page_delay=0.0)
        with service_process(tmp_path, **settings) as svc:
            wait_until(lambda: passes(outbox) >= 1, timeout=60, what="the resumed pass")
            wait_until(lambda: row_stats(pg_url)[0] == sum(BUSY.values()), timeout=30, what="delivery")
            assert svc.stop() == 0
            assert "resumes the pass cut short" in svc.log()
        again = {r.query["container_id"] for r in fake.requests if r.at >= mark and r.path == fakefeishu.MESSAGES_PATH}
        assert not again & set(killed.done)  # the chats done before the kill were not read again
        assert row_stats(pg_url) == (sum(BUSY.values()), sum(BUSY.values()))  # each message once
        assert state_of(outbox).gaps_total == {"webhook": len(missed)}  # each gap counted, once


# -- acceptance 4: no credentials, `run` works as today ------------------------------------------------

def test_without_credentials_run_works_as_today_and_status_says_reconciliation_is_off(invoke, tmp_path, pg_url):
    outbox = str(tmp_path / "outbox.db")
    with running_service(tmp_path, target=pg_url, outbox=outbox) as svc:
        assert svc.service.reconciler_thread is None
        _, event = history(CHATS[0], 1, int(time.time()) - 60, 1)[0]
        assert post(svc.url, event).status == 200
        wait_until(lambda: row_stats(pg_url) == (1, 1), what="the message delivered")
        assert not [k for k in scrape(svc.url) if k[0].startswith("outbox_relay_reconcile")]
    report = status_json(invoke, outbox, pg_url)
    assert report["reconcile"] == {"enabled": False,
                                   "off": "off: no Feishu app credentials (feishu_app_id / feishu_app_secret)"}
    result = invoke("status", "--outbox", outbox, "--target", pg_url)
    assert "reconcile off: no Feishu app credentials" in result.output
    assert not any("reconcil" in w for w in report["warnings"])


# -- acceptance 5: SIGTERM during a pass --------------------------------------------------------------

def test_sigterm_during_a_pass_stops_the_service_as_quickly_as_without_one(tmp_path, pg_url):
    with FakeFeishu() as fake:
        a_chat_set(fake, int(fake.now()))
        fake.set_faults(trickle=0.5)  # every message page crawls: a request is in flight when the signal comes
        with service_process(tmp_path, **feishu_settings(fake, target=pg_url)) as svc:
            wait_until(lambda: fake.trickling > 0, timeout=30, what="a page request in flight")
            began = time.monotonic()
            svc.proc.send_signal(signal.SIGTERM)
            assert svc.proc.wait(30) == 0
            took = time.monotonic() - began
            assert "reconciliation stopped mid-pass" in svc.log() and "stopped in" in svc.log()
    idle_dir = tmp_path / "idle"
    idle_dir.mkdir()
    with FakeFeishu() as idle:  # the same service between passes, for the usual time
        with service_process(idle_dir, **feishu_settings(idle, target=pg_url)) as svc:
            wait_until(lambda: passes(svc.outbox) >= 1, timeout=30, what="a pass")
            began = time.monotonic()
            svc.proc.send_signal(signal.SIGTERM)
            assert svc.proc.wait(30) == 0
            usual = time.monotonic() - began
    assert took < usual + 5.0, (took, usual)


# -- a gap is logged once per pass and chat, with its count -------------------------------------------

def test_gaps_are_logged_once_per_pass_and_chat_with_their_count_never_per_message(tmp_path, caplog):
    from outbox_relay.backfill.feishu_api import FeishuClient
    from outbox_relay.backfill.reconcile import Reconciler
    from outbox_relay.config import Config
    from outbox_relay.targets import open_target

    caplog.set_level(logging.INFO, logger="outbox_relay")
    with FakeFeishu() as fake:
        pairs = {c: history(c, 200, int(fake.now()) - 3000, 2400) for c in CHATS[:2]}
        for chat_id, chat_pairs in pairs.items():
            fake.add_chat(chat_id, [i for i, _ in chat_pairs])
        missed = {c: {i["message_id"] for i, _ in chat_pairs[::20]} for c, chat_pairs in pairs.items()}  # 10 each
        cfg = Config(**feishu_settings(fake), outbox=str(tmp_path / "outbox.db"),
                     target=f"sqlite:///{tmp_path / 'archive.db'}")
        with Outbox(cfg.outbox) as box:
            box.put_many([e for c, chat_pairs in pairs.items() for i, e in chat_pairs
                          if i["message_id"] not in missed[c]])  # what the webhook brought
            target = open_target(cfg.target)
            target.ensure_schema()
            reconciler = Reconciler(cfg, box, target, FeishuClient(fake.app_id, fake.app_secret, base=fake.url,
                                                                  rate=500, stop=threading.Event()))
            try:
                for _ in range(2):
                    reconciler.run_pass()
            finally:
                reconciler.close()
                target.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "outbox_relay.backfill.reconcile"
             and "gap" in r.getMessage()]
    assert sorted(lines) == sorted(f"reconciliation: chat {c}: 10 gap(s) filled (10 message(s), 0 recall(s)/edit(s))"
                                   " that the webhook did not bring" for c in missed)  # the second pass: none
    assert not [r for r in caplog.records if any(m in r.getMessage() for ids in missed.values() for m in ids)]


def test_a_recall_the_webhook_brought_and_the_relay_has_not_delivered_is_not_a_gap(tmp_path):
    """The outbox dedupes on keys: the webhook's recall (Feishu's event id) and the same recall stated by
    the history's deleted flag (a derived id) are one fact, and only the first counts."""
    from outbox_relay.backfill.commit import Committer
    from outbox_relay.message import normalize
    from outbox_relay.message.events import from_history

    from factories import sample

    recall = sample("v2_message_recalled.json")
    message_id, chat_id = recall["event"]["message_id"], recall["event"]["chat_id"]
    item, _ = history(chat_id, 1, int(time.time()) - 600, 1, thread_every=0)[0]
    item.update(message_id=message_id, deleted=True)
    with Outbox(str(tmp_path / "outbox.db")) as box:
        box.put(recall)  # the webhook's, waiting for the relay
        events = from_history(normalize(item), item)
        assert [e.kind for e in events] == ["recalled"]
        assert Committer(box).commit(events) == (0, 1)
        assert Committer(box).commit([normalize(item)]) == (1, 0)  # the message itself was never seen


def test_a_gap_is_labelled_with_the_way_the_chats_messages_come():
    from outbox_relay.backfill.reconcile import expected_way
    assert expected_way("feishu.v2") == expected_way("feishu.v1") == expected_way("api") == "webhook"
    assert expected_way("openclaw") == "hook"
    assert expected_way(None) == "webhook"  # nothing of the chat here: Feishu's events come to the webhook
    assert expected_way("feishu.history", "hook") == expected_way("openclaw.transcript", "hook") == "hook"
