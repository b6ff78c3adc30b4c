"""handoff.py: the spool directory, on real files and a real outbox (no PostgreSQL here).

Hand-over (write), ingestion (only after the commit is a file removed), what is not a message set
aside beside its reason and never lost, a crash between commit and unlink, a full outbox, and the
CLI around it (`spool`, `status`, `sync`). The hook under Node and the service under SIGKILL are
in test_hook_spool.py.
"""

import json
import logging
import os
import pathlib
import stat
import subprocess
import threading
import time

import pytest

from outbox_relay.errors import InvalidMessage, SpoolError
from outbox_relay.intake import spool as spool_module
from outbox_relay.intake.spool import STALE_TMP, Spool, SpoolIngester, item_name
from outbox_relay.message import MAX_MESSAGE_BYTES
from outbox_relay.outbox import Outbox

from cliutil import EXE, clean_env, run_cli, without_dac_override
from factories import BASE_MS, flat_message
from serverproc import wait_until


def spooled(i, text="hello"):
    """Message i of this file's series: om_spool_{i:05d}, "{text} {i}"."""
    return flat_message(f"om_spool_{i:05d}", f"{text} {i}", chat_id="oc_c", sender_id="ou_s", at=BASE_MS + i)


def drop(spool, name, data):
    """Put a file straight into new/, as a foreign writer (or a broken one) would."""
    path = pathlib.Path(spool.new) / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def stored_ids(outbox):
    return {r["message_id"] for s in ("pending", "parked", "delivered") for r in outbox.rows(s, 100000)}


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool").ensure()


@pytest.fixture
def box(tmp_path):
    with Outbox(tmp_path / "outbox.db") as outbox:
        yield outbox


def test_write_hands_over_and_ingest_commits_then_removes(spool, box):
    names = [spool.write(spooled(i)) for i in range(3)]
    assert sorted(os.listdir(spool.new)) == sorted(names) and os.listdir(spool.tmp) == []
    assert spool.status()["waiting"] == 3
    report = spool.ingest(box)
    assert (report.stored, report.duplicates, report.rejected, report.error) == (3, 0, 0, None)
    assert os.listdir(spool.new) == []
    assert stored_ids(box) == {f"om_spool_{i:05d}" for i in range(3)}
    assert box.get("om_spool_00001")["payload"]  # the message itself, not only its id
    assert spool.ingest(box).seen == 0


def test_oldest_first_by_name(spool, box):
    # Names start with the epoch milliseconds: a later hand-over sorts after an earlier one.
    early, late = item_name(now=1_700_000_000.000), item_name(now=1_700_000_000.001)
    drop(spool, late, json.dumps(spooled(2)))
    drop(spool, early, json.dumps(spooled(1)))
    assert spool.waiting() == [early, late]
    spool.ingest(box)
    assert [r["message_id"] for r in box.rows("pending")] == ["om_spool_00001", "om_spool_00002"]


def test_a_pass_takes_its_items_from_one_listing_and_later_arrivals_at_the_next(spool, box, monkeypatch):
    """new/ is listed once for LISTING items (only the oldest LISTING names kept), not once per pass:
    sorting a million names for every chunk of 500 made a big spool crawl. What arrives meanwhile is
    taken at the next listing, oldest first, even when its name sorts before the rest."""
    monkeypatch.setattr(spool_module, "LISTING", 10)
    for i in range(1, 16):
        drop(spool, item_name(now=1_700_000_000 + i), json.dumps(spooled(i)))

    def ingested(limit):
        before = stored_ids(box)
        assert spool.ingest(box, limit=limit).stored == limit
        return sorted(stored_ids(box) - before)

    assert spool.waiting(3) == spool.waiting()[:3]
    assert ingested(4) == [f"om_spool_{i:05d}" for i in range(1, 5)]
    drop(spool, item_name(now=1_700_000_000), json.dumps(spooled(0)))  # older than every other item
    assert ingested(6) == [f"om_spool_{i:05d}" for i in range(5, 11)]  # the rest of the first listing
    assert ingested(2) == ["om_spool_00000", "om_spool_00011"]  # a new listing: oldest first
    assert spool.ingest(box).stored == 4 and spool.waiting() == []


def test_status_reads_no_more_than_SCAN_LIMIT_entries_and_says_at_least(hermetic, tmp_path, monkeypatch):
    """status (and health, top, /healthz) must not read a whole big spool: past SCAN_LIMIT entries of a
    directory a count is a lower bound, and says so."""
    monkeypatch.setattr(spool_module, "SCAN_LIMIT", 5)
    spool = Spool(tmp_path / "data" / "spool").ensure()
    Outbox("data/outbox.db").close()
    for i in range(4):
        spool.write(spooled(i))
    small = spool.status()
    assert (small["waiting"], small["rejected"], small["at_least"]) == (4, 0, [])
    for i in range(4, 12):
        spool.write(spooled(i))
    big = spool.status()
    assert (big["waiting"], big["at_least"]) == (5, ["waiting"]) and big["oldest_waiting_age_s"] is not None
    text = run_cli("status", "--no-target").stdout
    assert "at least 5 waiting" in text and "at least 5 message(s) wait in the spool" in text
    assert json.loads(run_cli("status", "--no-target", "--json").stdout)["spool"]["at_least"] == ["waiting"]
    assert "at least 5 waiting" in run_cli("spool").stdout
    assert "spool_waiting=>=5" in run_cli("top", "--once", "--interval", "0.2").stdout


def test_write_refuses_bad_input_and_writes_nothing(spool):
    for bad in ({"no": "id"}, "not json", {"type": "message", "action": "sent", "context": {"messageId": "x"}}):
        with pytest.raises(InvalidMessage):
            spool.write(bad)
    assert os.listdir(spool.new) == [] and os.listdir(spool.tmp) == []


def test_ensure_gives_the_subdirectories_the_spools_own_mode(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o2770)  # group-writable for the gateway's user, as the README sets it up
    spool = Spool(root).ensure()
    assert [stat.S_IMODE(os.stat(d).st_mode) for d in (spool.tmp, spool.new, spool.rejected)] == [0o2770] * 3
    name = spool.write(spooled(1))
    assert stat.S_IMODE(os.stat(os.path.join(spool.new, name)).st_mode) == 0o640


def test_write_to_a_spool_that_is_not_there_is_a_clear_error(tmp_path):
    with pytest.raises(SpoolError, match="cannot hand message om_spool_00000 over to the spool"):
        Spool(tmp_path / "missing").write(spooled(0))
    assert not (tmp_path / "missing").exists()  # a mistyped path is not quietly created
    (tmp_path / "bare").mkdir()
    spool = Spool(tmp_path / "bare")
    assert spool.write(spooled(0)) in spool.waiting()  # an existing spool gets its tmp/ new/ rejected/


def test_writers_in_many_threads_never_collide(spool, box):
    def writer(k):
        for i in range(50):
            spool.write(spooled(k * 1000 + i))
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spool.waiting()) == 200
    assert spool.ingest(box).stored == 200


def test_what_is_not_a_message_is_set_aside_with_its_reason_and_the_rest_flows(spool, box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    good = [drop(spool, item_name(now=1_700_000_000 + i), json.dumps(spooled(i))) for i in range(5)]
    half = json.dumps(spooled(99))[:30]
    bad = {
        "garbage.bin": (b"\x00\xff\xfe garbage \x81", "not valid UTF-8"),
        "half-written.json": (half, "not valid JSON"),
        "notes.txt": ("this is not JSON at all", "not valid JSON"),
        "huge.json": (json.dumps(spooled(7, text="x" * (10 * 1024 * 1024))), "too large: 10485"),
        "sent-event.json": (json.dumps({"type": "message", "action": "sent", "context": {"messageId": "x"}}),
                            "not a chat message: event type 'message:sent'"),
        "bot-added.json": (json.dumps({"schema": "2.0", "header": {"event_type": "im.chat.member.bot.added_v1"},
                                       "event": {}}), "im.chat.member.bot.added_v1"),
        "empty.json": ("", "payload is empty"),
        "array.json": ("[1, 2]", "must be a JSON object"),
        "x.reason": (json.dumps({"message_id": ""}), "missing message_id"),
    }
    originals = {}
    for name, (data, _) in bad.items():
        originals[name] = drop(spool, name, data).read_bytes()
    os.symlink(secret, os.path.join(spool.new, "link.json"))
    os.mkdir(os.path.join(spool.new, "a-directory"))
    bom = drop(spool, "bom.json", b"\xef\xbb\xbf" + json.dumps(spooled(50)).encode())  # an editor's BOM is fine
    stale = pathlib.Path(spool.tmp) / item_name()
    stale.write_text(json.dumps(spooled(60))[:20])
    os.utime(stale, (time.time() - STALE_TMP - 60,) * 2)
    fresh = pathlib.Path(spool.tmp) / item_name()
    fresh.write_text("{")  # a writer at work right now: not touched

    report = spool.ingest(box)
    assert report.stored == 6 and report.error is None
    assert stored_ids(box) == {f"om_spool_{i:05d}" for i in (0, 1, 2, 3, 4, 50)}
    assert not any(p.exists() for p in good) and not bom.exists()
    assert os.listdir(spool.new) == []
    assert os.listdir(spool.tmp) == [fresh.name]

    items = {item["name"]: item for item in spool.rejected_items()}
    expected = set(bad) - {"x.reason"} | {"x.reason.item", "link.json", "a-directory", stale.name}
    assert set(items) == expected
    assert report.rejected == len(expected) - 1  # the stale tmp/ file was swept, not ingested
    for name, (_, why) in bad.items():
        kept = name + ".item" if name == "x.reason" else name
        assert why in items[kept]["reason"], (name, items[kept])
        # Kept byte for byte: nothing lost, an operator can look at it or retry it.
        assert (pathlib.Path(spool.rejected) / kept).read_bytes() == originals[name]
    assert items["link.json"]["reason"].startswith("a symbolic link") and \
        os.path.islink(os.path.join(spool.rejected, "link.json"))
    assert items["a-directory"]["reason"] == "not a regular file"
    assert items[stale.name]["reason"].startswith("incomplete write") and items[stale.name]["from"] == "tmp"
    assert "hunter2" not in json.dumps(list(items.values()))
    assert items["huge.json"]["size"] > MAX_MESSAGE_BYTES
    assert spool.status()["rejected"] == len(expected)


def test_a_crash_between_commit_and_unlink_puts_it_again_as_a_duplicate(spool, box, tmp_path):
    name = spool.write(spooled(1))
    saved = (pathlib.Path(spool.new) / name).read_bytes()
    assert spool.ingest(box).stored == 1
    # The unlink never happened (the process died right after the commit): the file is back.
    drop(spool, name, saved)
    report = spool.ingest(box)
    assert (report.stored, report.duplicates) == (0, 1)
    assert os.listdir(spool.new) == []
    assert box.counts()["pending"] == 1


def test_a_full_outbox_leaves_the_rest_waiting(spool, tmp_path):
    with Outbox(tmp_path / "strict.db", overflow="reject", max_pending=3) as strict:
        for i in range(5):
            spool.write(spooled(i))
        report = spool.ingest(strict)
        assert report.stored == 3 and report.rejected == 0
        assert "outbox is full" in report.error
        assert len(spool.waiting()) == 2  # handed over, not lost: ingested once there is room
        strict.finish_batch([r.id for r in strict.claim_oldest(3)])
        assert spool.ingest(strict).stored == 2 and spool.waiting() == []


def test_retry_moves_an_item_back_once_it_can_be_read(spool, box):
    drop(spool, "later.json", json.dumps({"type": "message", "action": "received", "context": {}}))
    assert spool.ingest(box).rejected == 1
    assert [i["reason"] for i in spool.rejected_items()] == ["missing context.messageId"]
    assert spool.retry(["nope"]) == []
    # The cause fixed (here: the operator repairs the item), it goes back and flows.
    (pathlib.Path(spool.rejected) / "later.json").write_text(json.dumps(spooled(5)))
    assert spool.retry(["later.json"]) == ["later.json"]
    assert os.listdir(spool.rejected) == []
    assert spool.ingest(box).stored == 1 and "om_spool_00005" in stored_ids(box)


@pytest.mark.parametrize("bad", ["", ".", "..", "../outbox.db", "sub/a.json", ".hidden", "a.json.reason"])
def test_retry_refuses_a_name_no_item_can_have_and_moves_nothing(spool, box, bad):
    drop(spool, "a.json", "not a message")
    drop(spool, "b.json", "not a message")
    assert spool.ingest(box).rejected == 2
    before = sorted(os.listdir(spool.rejected))
    with pytest.raises(SpoolError, match=f"not the name of a spool item: {bad!r} .*; nothing moved"):
        spool.retry(["a.json", bad])
    assert sorted(os.listdir(spool.rejected)) == before and os.listdir(spool.new) == []


def test_a_spool_that_cannot_be_read_is_an_error_not_an_empty_spool(spool, box):
    # We run as root, so permissions would not stop us: a symlink loop cannot be listed by anyone.
    os.rmdir(spool.new)
    os.symlink(spool.new, spool.new)
    with pytest.raises(SpoolError, match=spool.path):
        spool.ingest(box)
    status = spool.status()
    assert status["waiting"] is None and "Too many levels" in status["error"]
    from outbox_relay.operate.health import spool_warnings
    assert spool_warnings(status, relay_running=True) == [status["error"]]


def test_ingester_thread_ingests_within_a_second(spool, box):
    ingester = SpoolIngester(spool, box).start()
    try:
        started = time.monotonic()
        spool.write(spooled(1))
        deadline = started + 5
        while "om_spool_00001" not in stored_ids(box):
            assert time.monotonic() < deadline, "not ingested"
            time.sleep(0.01)
        assert time.monotonic() - started < 1.0
    finally:
        assert ingester.stop()
    assert ingester.totals.stored == 1


def test_ingester_waits_out_a_full_outbox_and_resumes(spool, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="outbox_relay.intake.spool")
    with Outbox(tmp_path / "strict.db", overflow="reject", max_pending=2) as strict:
        for i in range(4):
            spool.write(spooled(i))
        ingester = SpoolIngester(spool, strict).start()
        try:
            wait_until(lambda: strict.counts()["pending"] == 2, timeout=5, what="the first two ingested")
            wait_until(lambda: "outbox is full" in caplog.text, timeout=5, what="the full outbox said")
            assert len(spool.waiting()) == 2
            strict.finish_batch([r.id for r in strict.claim_oldest(2)])  # the relay made room
            wait_until(lambda: not spool.waiting(), timeout=5, what="the rest ingested")
        finally:
            assert ingester.stop()
        assert ingester.totals.stored == 4 and caplog.text.count("outbox is full") == 1  # said once
        assert "spool ingestion resumed" in caplog.text


# -- the CLI ------------------------------------------------------------------------------------------


def test_spool_command_lists_set_aside_items_and_retries(hermetic, tmp_path):
    spool = Spool(tmp_path / "data" / "spool")
    assert "does not exist" in run_cli("spool").output  # a reading command creates nothing
    assert not (tmp_path / "data").exists()
    spool.ensure()
    drop(spool, "notes.txt", "hello")
    spool.write(spooled(1))
    Outbox("data/outbox.db").close()
    status = json.loads(run_cli("status", "--no-target", "--json").stdout)
    assert status["spool"]["waiting"] == 2 and status["spool"]["rejected"] == 0
    assert any("wait in the spool and no relay is running" in w for w in status["warnings"])

    result = run_cli("sync", "--json")  # ingests the spool, then drains into the default archive
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spool"] == {"stored": 1, "duplicates": 0, "rejected": 1, "waiting": 0,
                                                  "at_least": [], "error": None}

    listing = json.loads(run_cli("spool", "--json").stdout)
    assert [(i["name"], i["from"]) for i in listing["rejected"]] == [("notes.txt", "new")]
    assert "not valid JSON" in listing["rejected"][0]["reason"]
    text = run_cli("spool").stdout
    assert "notes.txt" in text and "not valid JSON" in text
    status = run_cli("status", "--no-target")
    assert "1 spool item(s) set aside as not messages" in status.stdout
    assert run_cli("health").exit_code == 1  # degraded: someone should look

    missing = run_cli("spool", "--retry", "notes.txt", "--retry", "nope.json")
    assert missing.exit_code == 1 and "1 name(s) matched no set-aside item: nope.json" in missing.output
    assert spool.waiting() == ["notes.txt"]
    assert run_cli("spool", "--retry", "x", "--retry-all").exit_code == 2


def test_a_spool_file_name_cannot_forge_a_log_line(tmp_path):
    """Issue 24, item 11: whatever a file name holds, the log line that names it stays one line."""
    spool = Spool(str(tmp_path / "spool")).ensure()
    forged = "1700000000000.1_aa.json\n2026-12-04 10:00:00,000 CRITICAL outbox_relay: forged\x1b[2J"
    pathlib.Path(spool.new, forged).write_text("not json")
    result = subprocess.run([EXE, "sync", "--outbox", str(tmp_path / "o.db"), "--spool", spool.path,
                             "--target", f"sqlite:///{tmp_path / 'a.db'}"], env=clean_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.splitlines()
    assert any("set aside" in line and "\\n2026-12-04 10:00:00,000 CRITICAL" in line for line in lines), lines
    assert not any(line.startswith("2026-12-04 10:00:00,000 CRITICAL") for line in lines), lines
    assert "\x1b" not in result.stderr


def test_spool_retry_of_an_empty_name_is_one_line_and_moves_nothing(hermetic, tmp_path):
    spool = Spool(tmp_path / "data" / "spool").ensure()
    drop(spool, "notes.txt", "hello")
    with Outbox("data/outbox.db") as outbox:
        assert spool.ingest(outbox).rejected == 1
    result = run_cli("spool", "--retry", "")  # rejected/ + "" is rejected/ itself
    assert result.exit_code == 1 and "'' is empty; nothing moved" in result.output, result.output
    assert sorted(os.listdir(spool.rejected)) == ["notes.txt", "notes.txt.reason"]
    assert os.listdir(spool.new) == []


@pytest.mark.parametrize("locked", ["spool", "new"])
def test_a_spool_that_may_not_be_read_is_said_by_every_command_and_fails_sync(tmp_path, locked):
    """Permission denied is not "no spool". Made real although the tests run as root: the commands run
    without CAP_DAC_OVERRIDE, so the directory's mode 000 applies to them."""
    spool = Spool(tmp_path / "spool").ensure()
    name = spool.write(spooled(1))
    Outbox(tmp_path / "outbox.db").close()
    where = spool.path if locked == "spool" else spool.new
    mode = stat.S_IMODE(os.stat(where).st_mode)
    settings = ("--outbox", tmp_path / "outbox.db", "--spool", spool.path)
    os.chmod(where, 0)
    try:
        sync = without_dac_override("sync", "--json", *settings, cwd=tmp_path)
        listing = without_dac_override("spool", *settings, cwd=tmp_path)
        status = without_dac_override("status", "--no-target", "--json", *settings, cwd=tmp_path)
        health = without_dac_override("health", *settings, cwd=tmp_path)
        top = without_dac_override("top", "--once", *settings, cwd=tmp_path)
    finally:
        os.chmod(where, mode)
    denied = f"cannot read the spool directory {spool.new}: Permission denied"  # new/ or what holds it
    assert sync.returncode == 1 and json.loads(sync.stdout)["spool"]["error"] == denied, sync
    assert sync.stderr.strip().splitlines()[-1] == f"Error: {denied}", sync.stderr
    assert listing.returncode == 1 and listing.stderr.strip() == f"Error: {denied}", listing
    assert status.returncode == 0 and json.loads(status.stdout)["spool"]["error"] == denied, status
    assert health.returncode == 1 and denied in health.stdout, health
    assert top.returncode == 0 and f'spool_error="{denied}"' in top.stdout, top
    assert not any("Traceback" in r.stderr for r in (sync, listing, status, health, top))
    assert spool.waiting() == [name]  # handed over, still there: nothing lost, nothing moved


def test_sync_ends_with_items_it_cannot_remove_from_new_and_says_they_wait(tmp_path):
    """A new/ the relay may read but not write (made real: no CAP_DAC_OVERRIDE, mode 555): each item
    is committed, then stays. sync takes what waited when it started, once, and ends; it must not
    take the same items again and again."""
    spool = Spool(tmp_path / "spool").ensure()
    names = sorted(spool.write(spooled(i)) for i in range(3))
    Outbox(tmp_path / "outbox.db").close()
    mode = stat.S_IMODE(os.stat(spool.new).st_mode)
    os.chmod(spool.new, 0o555)
    try:
        sync = without_dac_override("sync", "--json", "--outbox", tmp_path / "outbox.db", "--spool", spool.path,
                                    cwd=tmp_path, timeout=30)
    finally:
        os.chmod(spool.new, mode)
    assert sync.returncode == 1 and "3 message(s) still waiting in the spool" in sync.stderr, sync
    report = json.loads(sync.stdout)
    assert (report["spool"]["stored"], report["spool"]["duplicates"], report["delivered"]) == (3, 0, 3)
    assert spool.waiting() == names
