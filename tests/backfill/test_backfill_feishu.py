"""Issue 11, `outbox-relay backfill feishu`: every acceptance line, against a fake Feishu Open API
server (tests/fakefeishu.py: real HTTP on 127.0.0.1) and a real PostgreSQL target."""

import json
import os
import random
import re
import shutil
import signal
import threading
import time

import pytest

from outbox_relay.backfill import feishu
from outbox_relay.backfill.feishu import CHECKPOINT_PREFIX, backfill_feishu, gaps, merge, next_window
from outbox_relay.backfill.feishu_api import FeishuClient, RateLimiter
from outbox_relay.errors import FeishuUnavailable
from outbox_relay.message import RECALLED_TEXT, normalize
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

import fakefeishu
from cliutil import run_exe
from fakefeishu import FakeFeishu, history
from relayutil import pg_query, row_stats
from serverproc import wait_until
from skiputil import unavailable

START = 1_790_000_000  # 2026-09-21, epoch seconds
DAYS_30 = 30 * 86400
SINCE, UNTIL = "2026-09-21T14:13:20Z", "2026-10-21T14:13:20Z"  # START .. START + 30 days
CHAT_A, CHAT_B, CHAT_C = "oc_chat0000000000aaaa01", "oc_chat0000000000bbbb02", "oc_chat0000000000cccc03"
FIELDS = ("message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id", "sender_id",
          "sender_type", "msg_type", "content", "text", "created_at")
PG_COLUMNS = ("message_id, chat_id, chat_type, thread_id, root_id, parent_id, sender_id, sender_type, msg_type,"
              " content, text, (extract(epoch FROM created_at) * 1000)::bigint, source")


def feishu_flags(fake, outbox, target, rate=40):
    return ["--outbox", outbox, "--target", target, "--feishu-app-id", fake.app_id,
            "--feishu-app-secret", fake.app_secret, "--feishu-api-base", fake.url, "--feishu-rate", rate]


def client_for(fake, rate=40, **kwargs):
    return FeishuClient(fake.app_id, fake.app_secret, base=fake.url, rate=rate, backoff_base=0.05, **kwargs)


def expected(event):
    m = normalize(event)
    return tuple(getattr(m, f) for f in FIELDS)


def pg_by_id(url):
    return {r[0]: r for r in pg_query(url, f"SELECT {PG_COLUMNS} FROM feishu_messages")}


def deliver(outbox_path, url):
    with Outbox(outbox_path) as outbox:
        target = open_target(url)
        try:
            target.ensure_schema()
            return Relay(outbox, target).drain()
        finally:
            target.close()


# -- the normalizer: one message, two ways in, one row ------------------------------------------------

def test_the_api_item_and_the_v2_event_of_a_message_give_the_same_fields():
    pairs = history(CHAT_A, 400, START, DAYS_30, recalled_every=0, edited_every=7)
    for item, event in pairs:
        got = normalize(item)
        assert tuple(getattr(got, f) for f in FIELDS if f != "chat_type") == expected(event)[:2] + expected(event)[3:]
        assert got.source == "feishu.history" and got.chat_type is None  # the item has none: the listing knows


# -- acceptance 1: 2 chats x 1,200 over 30 days, 700 already stored -----------------------------------

def test_two_chats_of_1200_with_700_already_stored_give_exactly_2400_rows_then_nothing_new(
        invoke, tmp_path, pg_url):
    pairs = {CHAT_A: history(CHAT_A, 1200, START, DAYS_30, recalled_every=97, edited_every=53),
             CHAT_B: history(CHAT_B, 1200, START, DAYS_30, recalled_every=89, edited_every=61)}
    everything = [p for chat in pairs.values() for p in chat]
    stored_before = random.Random(11).sample(everything, 700)
    old_outbox = str(tmp_path / "old-host.db")  # another host archived these long ago
    with Outbox(old_outbox) as outbox:
        outbox.put_many([event for _, event in stored_before])
    deliver(old_outbox, pg_url)
    assert row_stats(pg_url) == (700, 700)

    outbox = str(tmp_path / "outbox.db")
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, [i for i, _ in pairs[CHAT_A]], name="项目群 A")
        fake.add_chat(CHAT_B, [i for i, _ in pairs[CHAT_B]], name="Ops")
        flags = feishu_flags(fake, outbox, pg_url)
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json", *flags)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        totals = report["totals"]
        assert (totals["seen"], totals["new"], totals["already_stored"], totals["failed"]) == (2400, 1700, 700, 0)
        assert totals["recalled"] == sum(i["deleted"] for i, _ in everything) > 0
        assert totals["threads"] == 60 and report["complete"] and report["api"]["retried"] == 0
        assert {c["chat_id"]: c["status"] for c in report["chats"]} == {CHAT_A: "complete", CHAT_B: "complete"}
        assert_rate(fake.requests, 40)

        result = invoke("sync", "--json", "--outbox", outbox, "--target", pg_url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["new"] == 1700
        assert row_stats(pg_url) == (2400, 2400)
        rows, before = pg_by_id(pg_url), {e["event"]["message"]["message_id"] for _, e in stored_before}
        for item, event in everything:
            row, want = rows[item["message_id"]], list(expected(event))
            if item["message_id"] in before:
                assert row[-1] == "feishu.v2"  # the archive keeps what it had, recalled or not
            else:
                assert row[-1] == "feishu.history"
                if item["deleted"]:  # recalled before it was archived: the fact, not the content
                    want[FIELDS.index("content")], want[FIELDS.index("text")] = {}, RECALLED_TEXT
            assert tuple(row[:-1]) == tuple(want), item["message_id"]

        # Again: the ranges are recorded as read, so nothing is even asked for.
        listed = len(fake.served())
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json", *flags)
        assert result.exit_code == 0, result.output
        again = json.loads(result.stdout)
        assert again["totals"]["new"] == 0 and {c["status"] for c in again["chats"]} == {"up to date"}
        assert len(fake.served()) == listed
        # And --recheck reads it all again: everything is already stored.
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--recheck", *flags)
        assert result.exit_code == 0, result.output
        total = next(line for line in result.stdout.splitlines() if line.startswith("total")).split()
        assert total[:6] == ["total", "2", "chats", "2400", "0", "2400"], result.stdout
    result = invoke("sync", "--json", "--outbox", outbox, "--target", pg_url)
    assert json.loads(result.stdout)["new"] == 0
    assert row_stats(pg_url) == (2400, 2400)


# -- acceptance 2: token expiry, 429s, 500s, dropped connections ---------------------------------------

def test_faults_lose_nothing_keep_the_rate_and_request_nothing_twice_beyond_the_retries(tmp_path, pg_url):
    pairs = history(CHAT_A, 300, START, DAYS_30) + history(CHAT_B, 300, START, DAYS_30)
    outbox_path, rate = str(tmp_path / "outbox.db"), 20
    with FakeFeishu(token_ttl=2) as fake, Outbox(outbox_path) as outbox:
        fake.add_chat(CHAT_A, [i for i, _ in pairs[:300]])
        fake.add_chat(CHAT_B, [i for i, _ in pairs[300:]])
        fake.set_faults(rate_limit_every=13, error_every=5, drop_every=11, revoke_every=6, reset_seconds=1)
        target = open_target(pg_url)
        target.ensure_schema()
        client = client_for(fake, rate=rate)
        report = backfill_feishu(client, outbox, target, since_ms=START * 1000, until_ms=(START + DAYS_30) * 1000)
        target.close()
        requests = sorted(fake.requests, key=lambda r: r.at)
    assert report["complete"] and report["totals"]["new"] == 600, report

    # Every fault happened, and each was only a retry.
    outcomes = [r.outcome for r in requests]
    for outcome in ("429", "500", "dropped", "revoked"):
        assert outcome in outcomes, outcome
    lists = [r for r in requests if r.path == fakefeishu.MESSAGES_PATH]
    served = [tuple(sorted(r.query.items())) for r in lists if r.outcome == "ok"]
    assert len(served) == len(set(served))  # no page asked for twice once it was answered
    assert len(lists) == len(served) + sum(r.outcome != "ok" for r in lists)
    tokens = [r for r in requests if r.path == fakefeishu.TOKEN_PATH and r.outcome == "ok"]
    assert len(tokens) > outcomes.count("revoked")  # refreshed before expiry, and again when revoked

    assert_rate(requests, rate)
    # A 429 is honoured: the next request waits out x-ogw-ratelimit-reset.
    for before, after in zip(requests, requests[1:]):
        if before.outcome == "429":
            assert after.at - before.at >= 0.95

    deliver(outbox_path, pg_url)
    assert row_stats(pg_url) == (600, 600)
    rows = pg_by_id(pg_url)
    assert {mid: tuple(r[:-1]) for mid, r in rows.items()} == {
        e["event"]["message"]["message_id"]: expected(e) for _, e in pairs}


def assert_rate(requests, rate):
    """No more than `rate` requests in any second, and no burst inside one: any k+1 consecutive
    requests (arrival times at the server) span at least k/rate seconds, less 50 ms of jitter."""
    times = sorted(r.at for r in requests)
    assert len(times) > 2 * rate
    for k in (3, 6, rate):
        assert all(times[i + k] - times[i] >= k / rate - 0.05 for i in range(len(times) - k)), k


def test_the_rate_limiter_spaces_requests_and_holds_for_the_reset():
    now = [100.0]
    stop = threading.Event()
    limiter = RateLimiter(4, stop, clock=lambda: now[0])
    stop.wait = lambda delay: now.__setitem__(0, now[0] + delay) or False  # a clock that jumps
    sent = []
    for _ in range(6):
        limiter.wait()
        sent.append(now[0])
    assert sent == [100.0, 100.25, 100.5, 100.75, 101.0, 101.25]
    limiter.hold(3)
    limiter.wait()
    assert now[0] == 104.25


# -- acceptance 3: SIGTERM and SIGKILL mid-run, then resume ----------------------------------------------

def checkpoint(outbox_path, chat_id):
    if not os.path.exists(outbox_path):
        return None
    with Outbox(outbox_path) as outbox:
        return outbox.get_meta(CHECKPOINT_PREFIX + chat_id)


def first_chat_request(fake, done):
    """The query of the first page of a chat asked for after the first `done` requests served."""
    return next(r.query for r in fake.served()[done:] if r.query["container_id_type"] == "chat")


def test_sigterm_then_sigkill_mid_run_resume_from_the_checkpoint_exactly_once(spawn, tmp_path, pg_url):
    pairs = history(CHAT_A, 1200, START, DAYS_30)
    outbox_path = str(tmp_path / "outbox.db")
    args = ["backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json"]
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, [i for i, _ in pairs])
        fake.set_faults(page_delay=0.05)  # slow enough to be caught mid-way
        settings = dict(outbox=outbox_path, target=pg_url, feishu_app_id=fake.app_id,
                        feishu_app_secret=fake.app_secret, feishu_api_base=fake.url, feishu_rate=20)
        for name, sig in (("term", signal.SIGTERM), ("kill", signal.SIGKILL)):
            done = len(fake.served())
            resume_from = checkpoint(outbox_path, CHAT_A)["read"][0][1] if sig == signal.SIGKILL else START
            proc = spawn(name, args, **settings)
            wait_until(lambda done=done: len(fake.served()) >= done + 8 and checkpoint(outbox_path, CHAT_A),
                       timeout=30,
                       what="a few pages and a checkpoint")
            read_before = checkpoint(outbox_path, CHAT_A)["read"]
            proc.signal(sig)
            code = proc.wait(30)
            wait_until(lambda: fake.in_flight == 0, what="the killed run's last request to be answered")
            assert first_chat_request(fake, done)["start_time"] == str(resume_from)
            if sig == signal.SIGTERM:  # stops at once: exit 1, says why
                assert code == 1, proc.output()
                assert json.loads(proc.stdout())["stopped"] is True
                assert "backfill incomplete: stopped before the end" in proc.output()
            else:
                assert code == -signal.SIGKILL
            assert checkpoint(outbox_path, CHAT_A)["read"][0][0] == START
            assert checkpoint(outbox_path, CHAT_A)["read"][0][1] >= read_before[0][1]

        # The run after the kill starts where the checkpoint is, not at --since.
        resume_from = checkpoint(outbox_path, CHAT_A)["read"][0][1]
        done = len(fake.served())
        proc = spawn("resume", args, **settings)
        assert proc.wait(60) == 0, proc.output()
        report = json.loads(proc.stdout())
        assert int(first_chat_request(fake, done)["start_time"]) == resume_from > START
        assert report["chats"][0]["status"] == "complete"
        assert checkpoint(outbox_path, CHAT_A)["read"] == [[START, START + DAYS_30]]
    proc = spawn("sync", ["sync", "--json"], outbox=outbox_path, target=pg_url)
    assert proc.wait(60) == 0, proc.output()
    assert row_stats(pg_url) == (1200, 1200)  # exactly once


def test_a_stop_ends_the_run_after_the_page_and_a_rerun_completes(tmp_path):
    pairs = history(CHAT_A, 500, START, DAYS_30)
    stop = threading.Event()

    class StopAfter:  # a progress object that presses Ctrl-C after three pages
        pages = 0

        def task(self, label, total=None):
            return self

        def advance(self, n=1):
            self.pages += 1
            if self.pages == 3:
                stop.set()

    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, [i for i, _ in pairs])
        target = open_target(f"sqlite:///{tmp_path}/archive.db")
        target.ensure_schema()
        kwargs = dict(since_ms=START * 1000, until_ms=(START + DAYS_30) * 1000)
        first = backfill_feishu(client_for(fake, stop=stop), outbox, target, progress=StopAfter(), **kwargs)
        assert first["stopped"] and not first["complete"] and first["chats"][0]["status"] == "stopped"
        assert 0 < first["totals"]["new"] < 500
        second = backfill_feishu(client_for(fake), outbox, target, **kwargs)
        target.close()
        assert second["complete"]
        assert first["totals"]["new"] + second["totals"]["new"] == 500
        assert outbox.counts()["pending"] + outbox.counts()["parked"] == 500


# -- acceptance 4: a chat the bot may not read ---------------------------------------------------------------

def test_a_chat_the_bot_may_not_read_is_reported_the_others_complete_exit_1(invoke, tmp_path):
    archive = f"sqlite:///{tmp_path}/archive.db"
    target = open_target(archive)  # the archive already holds a chat the bot has since left
    target.ensure_schema()
    target.write([(1, normalize({"message_id": "om_old", "chat_id": CHAT_C, "text": "hi"}), 1.7e9)])
    target.close()
    outbox = str(tmp_path / "outbox.db")
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, [i for i, _ in history(CHAT_A, 120, START, DAYS_30)], name="open")
        fake.add_chat(CHAT_B, [i for i, _ in history(CHAT_B, 120, START, DAYS_30)], name="secret",
                      forbidden=fakefeishu.NO_PERMISSION)
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json",
                        *feishu_flags(fake, outbox, archive))
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        chats = {c["chat_id"]: c for c in report["chats"]}
        assert (chats[CHAT_A]["status"], chats[CHAT_A]["new"]) == ("complete", 120)
        assert chats[CHAT_B]["status"] == "failed" and chats[CHAT_B]["new"] == 0
        assert chats[CHAT_B]["error"] == f"{fakefeishu.NO_PERMISSION[1]} (Feishu code 230027)"
        assert chats[CHAT_C]["status"] == "failed" and "230002" in chats[CHAT_C]["error"]
        last = result.stderr.splitlines()[-1]
        assert last == "Error: backfill incomplete: 2 chat(s) failed; run it again to continue"
        assert "Traceback" not in result.stderr

        # The table says the same to a person; a rerun reads only what failed.
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL,
                        *feishu_flags(fake, outbox, archive))
        assert result.exit_code == 1
        assert f"{CHAT_B}: Lack of necessary permissions" in result.stdout
        assert re.search(r"^open \(oc_chat0000000000aaaa01\) +up to date +0 ", result.stdout, re.M), result.stdout


# -- acceptance 5: a wrong secret --------------------------------------------------------------------------

def test_a_wrong_app_secret_is_one_clear_line_exit_2_and_no_secret_anywhere(tmp_path):
    with FakeFeishu() as fake:
        base = ["backfill", "feishu", "--outbox", tmp_path / "o.db", "--target", f"sqlite:///{tmp_path}/a.db",
                "--feishu-app-id", fake.app_id, "--feishu-api-base", fake.url]
        wrong = run_exe(*base, "--feishu-app-secret", "wrong-secret-XYZZY")
        assert wrong.returncode == 2, wrong.stderr
        assert wrong.stdout == ""
        assert wrong.stderr == (f"Error: Feishu refused the app credentials (feishu_app_id '{fake.app_id}' / "
                                "feishu_app_secret): app secret invalid (Feishu code 10014)\n")
        loud = run_exe("-vv", *base, "--feishu-app-secret", "wrong-secret-XYZZY")
        assert loud.returncode == 2 and "Traceback" not in loud.stderr
        good = run_exe("-vv", *base, "--feishu-app-secret", fake.app_secret, "--json")
        assert good.returncode == 0, good.stderr
        tokens = list(fake.tokens)
    for out in (wrong, loud):
        assert "XYZZY" not in out.stdout + out.stderr
    assert tokens and not any(t in good.stdout + good.stderr for t in tokens)
    assert fake.app_secret not in good.stdout + good.stderr


@pytest.mark.parametrize("missing", ["--feishu-app-id", "--feishu-app-secret"])
def test_a_missing_app_id_or_secret_exits_2_naming_it(invoke, tmp_path, missing):
    flags = {"--feishu-app-id": "cli_x", "--feishu-app-secret": "s-XYZZY"}
    flags.pop(missing)
    result = invoke("backfill", "feishu", "--outbox", tmp_path / "o.db", *[a for kv in flags.items() for a in kv])
    assert result.exit_code == 2
    name = missing[2:].replace("-", "_")
    assert result.stderr == (f"Error: {name} is not set: give {missing}, OUTBOX_RELAY_{name.upper()} or "
                             f"{name} in the config file\n")
    assert not os.path.exists(tmp_path / "o.db") and "XYZZY" not in result.output


# -- dry run, bad arguments, the range bookkeeping -----------------------------------------------------------

def test_a_dry_run_counts_commits_nothing_and_records_no_checkpoint(invoke, tmp_path):
    archive, outbox = f"sqlite:///{tmp_path}/archive.db", str(tmp_path / "outbox.db")
    open_target(archive).ensure_schema()
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, [i for i, _ in history(CHAT_A, 130, START, DAYS_30)])
        flags = feishu_flags(fake, outbox, archive)
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--dry-run", "--json", *flags)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["totals"]["new"] == 130
        assert not os.path.exists(outbox)  # not even an empty outbox
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json", *flags)
        assert json.loads(result.stdout)["totals"]["new"] == 130
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--dry-run", "--recheck",
                        "--json", *flags)
        assert json.loads(result.stdout)["totals"]["already_stored"] == 130  # queued in the outbox
    with Outbox(outbox) as box:
        assert box.counts()["pending"] == 130


@pytest.mark.parametrize("args,words", [
    (["--since", "yesterday"], "--since 'yesterday'"),
    (["--since", "2026-10-02", "--until", "2026-10-01"], "--since must be before --until"),
    (["--feishu-api-base", "open.feishu.cn"], "invalid feishu_api_base"),
    (["--feishu-rate", "0"], "invalid feishu_rate"),
])
def test_bad_arguments_are_one_line_exit_2(invoke, tmp_path, args, words):
    result = invoke("backfill", "feishu", "--outbox", tmp_path / "o.db", "--feishu-app-id", "cli_x",
                    "--feishu-app-secret", "s", *args)
    assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.output


def test_ranges_merge_and_gaps():
    assert merge([(5, 9), (1, 3), (3, 4), (8, 12), (20, 20)]) == [(1, 4), (5, 12)]
    covered = merge([(10, 20), (30, 40)])
    assert gaps(covered, 0, 50) == [(0, 10), (20, 30), (40, 50)]
    assert gaps(covered, 12, 18) == []
    assert gaps(covered, 15, 35) == [(20, 30)]
    assert gaps([], 5, 6) == [(5, 6)]


def test_windows_grow_while_a_chat_is_quiet_and_shrink_while_it_is_busy():
    day, most = feishu.WINDOW_S, feishu.WINDOW_PAGES
    assert next_window(day, 0) == next_window(day, 1) == 2 * day
    assert next_window(day, 2) == next_window(day, most) == day
    assert next_window(day, most + 1) == day // 2
    assert next_window(feishu.MAX_WINDOW_S, 1) == feishu.MAX_WINDOW_S
    assert next_window(feishu.MIN_WINDOW_S, 500) == feishu.MIN_WINDOW_S


# -- what else a production run meets ------------------------------------------------------------------

def sqlite_target(tmp_path):
    target = open_target(f"sqlite:///{tmp_path}/archive.db")
    target.ensure_schema()
    return target


RANGE = dict(since_ms=START * 1000, until_ms=(START + DAYS_30) * 1000)


def test_an_invalid_item_is_reported_by_id_and_the_rest_of_the_page_is_stored(tmp_path):
    items = [i for i, _ in history(CHAT_A, 60, START, DAYS_30, thread_every=0)]
    items[10] = {**items[10], "body": {"content": "{not json"}}
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, items)
        target = sqlite_target(tmp_path)
        report = backfill_feishu(client_for(fake), outbox, target, **RANGE)
        target.close()
    chat = report["chats"][0]
    assert (chat["status"], chat["new"], chat["invalid"]) == ("complete", 59, 1)
    assert chat["invalid_items"] == [{"message_id": items[10]["message_id"],
                                      "error": "body.content is not valid JSON: Expecting property name "
                                               "enclosed in double quotes: line 1 column 2 (char 1)"}]


def test_feishu_unreachable_fails_before_any_chat_and_an_outage_mid_run_stops_the_run(tmp_path):
    with FakeFeishu() as fake:
        url = fake.url
    dead = FeishuClient("cli_x", "s", base=url, rate=50, attempts=3, backoff_base=0.01)
    target = sqlite_target(tmp_path)
    with Outbox(str(tmp_path / "o.db")) as outbox:
        with pytest.raises(FeishuUnavailable, match="3 attempts"):
            backfill_feishu(dead, outbox, target, **RANGE)
        with FakeFeishu() as fake:
            for chat in (CHAT_A, CHAT_B):
                fake.add_chat(chat, [i for i, _ in history(chat, 60, START, DAYS_30)])
            client = client_for(fake, attempts=3)
            client.authenticate()
            fake.set_faults(error_every=1)  # from now on every answer is a 500
            report = backfill_feishu(client, outbox, target, chats=[CHAT_A, CHAT_B], **RANGE)
    target.close()
    assert [c["status"] for c in report["chats"]] == ["failed", "not started"]
    assert report["errors"] == [f"stopped: {report['chats'][0]['error']}"] and not report["complete"]
    assert "HTTP 500 (3 attempts)" in report["chats"][0]["error"]


def test_with_overflow_reject_the_backfill_waits_for_the_relay_to_make_room(tmp_path):
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db"), max_pending=60, overflow="reject") as outbox:
        fake.add_chat(CHAT_A, [i for i, _ in history(CHAT_A, 300, START, DAYS_30)])
        target = sqlite_target(tmp_path)
        relay = Relay(outbox, target, batch_size=20)
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        try:
            report = backfill_feishu(client_for(fake), outbox, target, **RANGE)
            assert report["complete"] and report["totals"]["new"] == 300
            wait_until(lambda: target.count() == 300, timeout=20, what="the relay to deliver everything")
        finally:
            relay.stop()
            thread.join(10)
            target.close()


def bounded_backfill(client, outbox, target, seconds=30, **kwargs):
    """backfill_feishu, stopped if it still runs after `seconds`: a listing that pages forever ends
    as "stopped" and fails the test's assertions instead of hanging it."""
    timer = threading.Timer(seconds, client.stop.set)
    timer.start()
    try:
        return backfill_feishu(client, outbox, target, **kwargs)
    finally:
        timer.cancel()


HOURS_2 = [i for i, _ in history(CHAT_A, 200, START, 7200, thread_every=0)]  # four pages in one window


def test_a_page_token_that_never_moves_on_fails_the_chat_instead_of_paging_forever(tmp_path):
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(stuck_paging=True)
        target = sqlite_target(tmp_path)
        report = bounded_backfill(client_for(fake), outbox, target, **RANGE)
        target.close()
    chat = report["chats"][0]
    assert chat["status"] == "failed"
    assert chat["error"] == (f"Feishu's page_token went round in a circle listing chat {CHAT_A} (a token it had"
                             " given before came again after 2 pages): paging stopped")
    assert chat["pages"] == 2 and chat["new"] == 100  # what was read is kept


def test_page_tokens_that_cycle_through_several_pages_fail_the_chat_and_count_each_message_once(tmp_path):
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(token_cycle=True)  # page 1 -> 2 -> 3 -> 2 -> ...
        target = sqlite_target(tmp_path)
        report = bounded_backfill(client_for(fake), outbox, target, **RANGE)
        target.close()
        assert checkpoint(str(tmp_path / "o.db"), CHAT_A) is None  # nothing recorded as read
    chat = report["chats"][0]
    assert chat["status"] == "failed" and "went round in a circle" in chat["error"], chat
    assert (chat["pages"], chat["seen"], chat["new"]) == (3, 150, 150)
    assert not report["complete"] and not report["stopped"]


@pytest.mark.parametrize("fields,words", [
    ({"has_more": "false"}, "has_more is 'false', not true or false"),
    ({"has_more": None}, "has_more is missing"),
    ({"items": 5}, "items is 5, not a list"),
    ({"has_more": True, "page_token": ""}, "has_more is true but there is no page_token"),
])
def test_a_page_of_the_wrong_shape_fails_the_chat_with_a_clear_error(invoke, tmp_path, fields, words):
    archive, outbox = f"sqlite:///{tmp_path}/archive.db", str(tmp_path / "outbox.db")
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(page_fields=fields)
        result = invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--chat", CHAT_A, "--json",
                        *feishu_flags(fake, outbox, archive))
        listed = len(fake.served())
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    chat = json.loads(result.stdout)["chats"][0]
    assert chat["status"] == "failed"
    assert chat["error"] == f"Feishu's answer listing chat {CHAT_A} is not a page: {words}"
    assert listed == 1  # the first answer of the wrong shape ends the chat
    assert checkpoint(outbox, CHAT_A) is None


def test_pages_out_of_order_then_a_failing_page_record_nothing_of_that_window_and_a_rerun_reads_it_all(tmp_path):
    outbox_path = str(tmp_path / "o.db")
    with FakeFeishu() as fake, Outbox(outbox_path) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        # Page 1 ends with page 2's newest message, and page 2 cannot be had.
        fake.set_faults(out_of_order=True, fail_from_page=1)
        target = sqlite_target(tmp_path)
        first = backfill_feishu(client_for(fake, attempts=2), outbox, target, **RANGE)
        assert first["chats"][0]["status"] == "failed" and first["totals"]["new"] == 50
        assert checkpoint(outbox_path, CHAT_A) is None  # the window holding page 2 is not read yet
        fake.set_faults(out_of_order=False, fail_from_page=0)
        second = backfill_feishu(client_for(fake), outbox, target, **RANGE)
        target.close()
        assert second["complete"] and second["chats"][0]["status"] == "complete"
        assert (second["totals"]["new"], second["totals"]["already_stored"]) == (150, 50)
        assert outbox.counts()["pending"] + outbox.counts()["parked"] == 200
        assert checkpoint(outbox_path, CHAT_A)["read"] == [[START, START + DAYS_30]]


def test_an_answer_nested_past_the_recursion_limit_is_retried_then_fails_the_run_without_a_traceback(tmp_path):
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(body=b'{"code": 0, "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        target = sqlite_target(tmp_path)
        report = backfill_feishu(client_for(fake, attempts=2), outbox, target, **RANGE)
        target.close()
    chat = report["chats"][0]
    assert (chat["status"], chat["error"]) == (
        "failed", "Feishu API /open-apis/im/v1/messages: HTTP 200 without a Feishu JSON answer (2 attempts)")


# -- the host's clock is not Feishu's -------------------------------------------------------------------

def iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def day_ahead():
    """run_exe's arguments for a host whose wall clock is a day ahead (libfaketime). Its monotonic
    clock stays true: faked too (libfaketime's default), every timed wait would last a day, since
    Python hands that clock's deadline to sem_clockwait, which libfaketime does not intercept."""
    faketime = shutil.which("faketime") or unavailable("faketime is not installed (Debian package faketime)")
    return {"under": [faketime, "-f", "+1d"], "env": {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}}


def test_a_host_clock_a_day_ahead_records_nothing_past_feishus_time_and_the_next_run_finds_what_came_since(
        tmp_path):
    outbox, archive = str(tmp_path / "outbox.db"), f"sqlite:///{tmp_path}/archive.db"
    with FakeFeishu() as fake:
        now = int(fake.now())
        earlier = [i for i, _ in history(CHAT_A, 30, now - 7200, 3600, thread_every=0)]
        fake.add_chat(CHAT_A, earlier)
        args = ["backfill", "feishu", "--since", iso(now - 3 * 3600), "--chat", CHAT_A, "--json",
                *feishu_flags(fake, outbox, archive)]
        first = run_exe(*args, **day_ahead())
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["totals"]["new"] == 30
        assert checkpoint(outbox, CHAT_A)["read"][-1][1] <= fake.now() - 60  # Feishu's time less a minute

        # Sent now by Feishu's clock, and read two minutes later: found, although this host's clock
        # passed their time a day ago.
        since = [i for i, _ in history(CHAT_A, 5, int(fake.now()), 5, thread_every=0, prefix="om_since")]
        fake.add_chat(CHAT_A, earlier + since)
        fake.advance(120)
        second = run_exe(*args, **day_ahead())
        assert second.returncode == 0, second.stderr
        chat = json.loads(second.stdout)["chats"][0]
        assert (chat["status"], chat["new"], chat["seen"]) == ("complete", 5, 5)
        assert checkpoint(outbox, CHAT_A)["read"][-1][1] <= fake.now() - 60
    with Outbox(outbox) as box:
        assert box.counts()["pending"] + box.counts()["parked"] == 35


def test_without_feishus_time_nothing_is_recorded_past_the_newest_message_seen(tmp_path):
    outbox_path = str(tmp_path / "o.db")
    with FakeFeishu() as fake, Outbox(outbox_path) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(no_date=True)
        target = sqlite_target(tmp_path)
        report = backfill_feishu(client_for(fake), outbox, target, since_ms=START * 1000,
                                 until_ms=(START + 4 * 86400) * 1000)
        target.close()
        assert report["complete"] and report["totals"]["new"] == 200
        newest = max(int(i["create_time"]) for i in HOURS_2)
        assert checkpoint(outbox_path, CHAT_A)["read"] == [[START, (newest - 60_000) // 1000]]


# -- a server that answers a byte at a time -----------------------------------------------------------

def test_an_answer_trickling_a_byte_at_a_time_is_cut_off_at_the_request_deadline(tmp_path):
    with FakeFeishu() as fake, Outbox(str(tmp_path / "o.db")) as outbox:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(trickle=0.2)  # each read gets a byte well within the read timeout
        target = sqlite_target(tmp_path)
        began = time.monotonic()
        report = backfill_feishu(client_for(fake, attempts=2, deadline=1.0), outbox, target, **RANGE)
        took = time.monotonic() - began
        target.close()
    chat = report["chats"][0]
    assert chat["status"] == "failed" and chat["new"] == 0
    assert chat["error"] == "Feishu API /open-apis/im/v1/messages: no complete answer within 1 s (2 attempts)"
    assert report["errors"] == [f"stopped: {chat['error']}"]
    assert took < 5, took  # two tries of a second each, and a backoff between


def test_the_first_ctrl_c_stops_the_run_at_once_while_an_answer_trickles(spawn, tmp_path):
    outbox_path = str(tmp_path / "outbox.db")
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, HOURS_2)
        fake.set_faults(trickle=5.0)  # a byte every 5 s: an answer would take hours
        proc = spawn("backfill", ["backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json"],
                     outbox=outbox_path, target=f"sqlite:///{tmp_path}/archive.db", feishu_app_id=fake.app_id,
                     feishu_app_secret=fake.app_secret, feishu_api_base=fake.url)
        wait_until(lambda: fake.trickling, timeout=30, what="the backfill's request to be trickled an answer")
        signalled = time.monotonic()
        proc.signal(signal.SIGINT)
        code = proc.wait(15)
        took = time.monotonic() - signalled
    assert code == 1, proc.output()
    assert took < 3, took
    assert json.loads(proc.stdout())["stopped"] is True
    log = (tmp_path / "backfill.log").read_text()  # stderr
    assert log.splitlines()[-1] == "Error: backfill incomplete: stopped before the end; run it again to continue"
    assert "Traceback" not in log


# -- issue 19: the history API's deleted/updated flags become the webhook's events ----------------------


def test_recalls_and_edits_whose_events_never_came_are_added_by_a_backfill_once(invoke, tmp_path, pg_url):
    """500 messages archived from their webhook events; Feishu's history says 50 were recalled and 50
    edited since, and none of those events came. The backfill adds the 100 events, the relay marks the
    50 recalled and the 50 edited; a second run, and a --recheck reading it all again, add nothing."""
    pairs = history(CHAT_A, 500, START, DAYS_30, recalled_every=10, edited_every=10)
    recalled = {i["message_id"]: int(i["update_time"]) for i, _ in pairs if i["deleted"]}  # when, by Feishu
    edited = {i["message_id"]: int(i["update_time"]) for i, _ in pairs if i["updated"]}
    assert len(recalled) == len(edited) == 50 and not set(recalled) & set(edited)
    webhook_outbox = str(tmp_path / "webhook.db")
    with Outbox(webhook_outbox) as outbox:
        outbox.put_many([event for _, event in pairs])
    deliver(webhook_outbox, pg_url)

    outbox = str(tmp_path / "outbox.db")
    with FakeFeishu() as fake:
        fake.add_chat(CHAT_A, [i for i, _ in pairs], name="项目群 A")
        flags = feishu_flags(fake, outbox, pg_url)
        runs = [invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json", *flags),
                invoke("sync", "--json", "--outbox", outbox, "--target", pg_url)]
        for again in ([], ["--recheck"]):
            runs += [invoke("backfill", "feishu", "--since", SINCE, "--until", UNTIL, "--json", *again, *flags),
                     invoke("sync", "--json", "--outbox", outbox, "--target", pg_url)]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    first, _, second, _, recheck, _ = (json.loads(r.stdout) for r in runs)
    assert (first["totals"]["new"], first["totals"]["already_stored"], first["totals"]["events"]) == (0, 500, 100)
    assert second["totals"]["events"] == 0 and recheck["totals"]["events"] == 0, (second, recheck)
    assert recheck["totals"]["seen"] == 500
    events = pg_query(pg_url, "SELECT message_id, kind, (extract(epoch FROM happened_at) * 1000)::bigint, source"
                              " FROM feishu_message_events")
    assert sorted(events) == sorted([(m, "recalled", at, "feishu.history") for m, at in recalled.items()]
                                    + [(m, "edited", at, "feishu.history") for m, at in edited.items()]), events[:5]
    rows = {r[0]: r[1:] for r in pg_query(
        pg_url, "SELECT message_id, recalled_at IS NOT NULL, (extract(epoch FROM edited_at) * 1000)::bigint"
                " FROM feishu_messages")}
    assert len(rows) == 500
    assert {m for m, (was_recalled, _) in rows.items() if was_recalled} == set(recalled)
    assert {m: at for m, (_, at) in rows.items() if at is not None} == edited
