"""The OpenClaw hook's local handoff, end to end on real processes: the hook file under Node writing
the spool, `outbox-relay run` ingesting it into a real PostgreSQL, SIGKILL during ingestion, and a
spool that is full or read-only (a small tmpfs mounted for the test).

Node, PostgreSQL and mount(8) are not Python dependencies: without them these tests skip on a
laptop and fail in CI.
"""

import copy
import json
import os
import pathlib
import random
import signal
import stat
import subprocess
import time

import pytest

from outbox_relay.intake.spool import SCAN_LIMIT, Spool, item_name

from cliutil import clean_env
from factories import sample
from relayutil import SEED, pg_count, pg_query, row_stats
from serverproc import REPO, wait_until
from serviceutil import outbox_ids, service_process
from skiputil import unavailable

ROOT = pathlib.Path(REPO)
RUN_HOOK = ROOT / "integrations" / "openclaw" / "run-hook.mjs"
TOKEN = "hook-token-5a4b3c"


def gateway_events(n, prefix="om_hook"):
    """n events in the gateway's shape (the two samples, alternating group and direct chat)."""
    samples = [sample(name) for name in ("hook_group.json", "hook_direct.json")]
    for i in range(n):
        event = copy.deepcopy(samples[i % 2])
        event["context"].update(messageId=f"{prefix}_{i:05d}", content=f"第 {i} 条 message",
                                timestamp=1796006382258 + i)
        yield event


def run_hook(node, tmp_path, events, **env_extra):
    """The hook over JSON lines in one Node process -> (exit code, [result per event], stderr)
    (the `node` fixture is conftest's)."""
    source = tmp_path / f"events-{time.monotonic_ns()}.jsonl"
    source.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), encoding="utf-8")
    env = clean_env(OUTBOX_RELAY_TIMEOUT_MS="5000", OUTBOX_RELAY_MAX_TRIES="1", **env_extra)
    proc = subprocess.run([node, str(RUN_HOOK), "--jsonl", str(source)], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def percentile(values, p):
    data = sorted(values)
    return data[min(len(data) - 1, int(p / 100 * len(data)))]


# -- service stopped, then started ---------------------------------------------------------------


def test_1000_messages_through_the_hook_while_stopped_then_run_delivers_each_once(node, spawn, tmp_path, pg_url):
    spool = Spool(tmp_path / "spool").ensure()
    code, results, stderr = run_hook(node, tmp_path, gateway_events(1000), OUTBOX_RELAY_SPOOL=spool.path)
    # No service anywhere: every message is handed over locally, in milliseconds, without a word.
    assert code == 0 and stderr == "", stderr
    assert len(results) == 1000 and all(r["ok"] and r["via"] == "spool" for r in results)
    times = [r["ms"] for r in results]
    print(f"hook, service stopped: p50 {percentile(times, 50):.2f} ms, p99 {percentile(times, 99):.2f} ms")
    assert percentile(times, 99) < 200, "the hand-over takes far longer than a local commit should"
    assert len(spool.waiting()) == 1000 and os.listdir(spool.tmp) == []

    proc = spawn("run", ["run", "--no-http"], outbox=tmp_path / "outbox.db", target=pg_url, spool=spool.path)
    wait_until(lambda: pg_count(pg_url) >= 1000 and not spool.waiting(), timeout=60,
               what="1,000 handed-over messages in PostgreSQL")
    assert row_stats(pg_url) == (1000, 1000)
    assert spool.rejected_items() == [] and os.listdir(spool.new) == []
    rows = dict((r[0], r[1:]) for r in pg_query(
        pg_url, "SELECT message_id, chat_id, chat_type, sender_id, text, source FROM feishu_messages"
                " WHERE message_id IN ('om_hook_00000', 'om_hook_00001')"))
    assert rows == {
        "om_hook_00000": ("oc_5ce6d572455d361153b7cb51da133945", "group", "ou_84aad35d084aa403a838cf73ee18467",
                          "第 0 条 message", "openclaw"),
        "om_hook_00001": ("ou_0e01c2d3e4f5a6b7c8d9e0f1a2b3c4d5", "p2p", "ou_0e01c2d3e4f5a6b7c8d9e0f1a2b3c4d5",
                          "第 1 条 message", "openclaw"),
    }

    # Running now: a handed-over message is in PostgreSQL within a second (as a webhook POST is).
    latencies = []
    for i, event in enumerate(gateway_events(5, prefix="om_live")):
        code, (result,), _ = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=spool.path)
        handed_over = time.monotonic()
        assert code == 0 and result["via"] == "spool"
        deadline = handed_over + 10
        while not pg_query(pg_url, "SELECT 1 FROM feishu_messages WHERE message_id = %s", (f"om_live_{i:05d}",)):
            assert time.monotonic() < deadline, f"om_live_{i:05d} never reached PostgreSQL"
            time.sleep(0.01)  # polling the target, with a deadline
        latencies.append(time.monotonic() - handed_over)
    print("hand-over -> visible in PostgreSQL:", ", ".join(f"{s * 1000:.0f} ms" for s in latencies))
    assert max(latencies) <= 1.0, latencies
    assert proc.alive(), proc.output()


# -- SIGKILL during ingestion -------------------------------------------------------------------------


def hand_over_fast(spool, payloads):
    """The writer's protocol (tmp/ then rename into new/) without the fsyncs: this test is about the
    ingesting side, and 20,000 fsyncs would take longer than the test itself."""
    for payload in payloads:
        name = item_name()
        tmp = os.path.join(spool.tmp, name)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        os.rename(tmp, os.path.join(spool.new, name))


@pytest.mark.slow
def test_sigkill_during_ingestion_of_20000_handed_over_messages(node, spawn, tmp_path, pg_url):
    n = 20_000
    spool = Spool(tmp_path / "spool").ensure()
    hand_over_fast(spool, gateway_events(n))
    rng = random.Random(SEED)
    kills, left = [], n
    for round_ in range(10):
        proc = spawn(f"run-{round_}", ["run", "--no-http"], outbox=tmp_path / "outbox.db", target=pg_url,
                     spool=spool.path)
        # This incarnation has ingested something (so the kill lands mid-ingestion, not in start-up)...
        wait_until(lambda before=left: len(spool.waiting()) < before, timeout=30,
                   what=f"ingestion progress in round {round_} (seed {SEED})")
        if not spool.waiting():
            break
        time.sleep(rng.uniform(0, 0.3))  # ...then a random moment: reading, committing, unlinking
        assert proc.alive(), proc.output()
        assert proc.kill9() == -signal.SIGKILL
        left = len(spool.waiting())
        kills.append(left)
        if len(kills) >= 6:
            break
    assert len(kills) >= 5 and kills[-1] > 0, f"kills did not land during ingestion: {kills} (seed {SEED})"

    final = spawn("final", ["sync", "--json"], outbox=tmp_path / "outbox.db", target=pg_url, spool=spool.path)
    assert final.wait(120) == 0, final.output()
    assert json.loads(final.stdout())["spool"]["waiting"] == 0
    got = [r[0] for r in pg_query(pg_url, "SELECT message_id FROM feishu_messages")]
    assert len(got) == len(set(got)) == n
    assert set(got) == {f"om_hook_{i:05d}" for i in range(n)}
    assert os.listdir(spool.new) == [] and spool.rejected_items() == []
    print(f"spool items left at each kill: {kills}")


# -- sync's Ctrl-C during ingestion ----------------------------------------------------------------------


@pytest.mark.slow
def test_sync_stops_ingesting_at_the_first_ctrl_c_and_loses_nothing(spawn, tmp_path):
    """The first SIGINT ends `sync`'s ingestion after the chunk in flight, as it ends the drain after
    the batch in flight: every item is then committed to the outbox or still in new/, never both."""
    n = 20_000
    spool = Spool(tmp_path / "spool").ensure()
    hand_over_fast(spool, gateway_events(n))
    proc = spawn("sync", ["sync", "--json"], outbox=tmp_path / "outbox.db", spool=spool.path)
    wait_until(lambda: len(os.listdir(spool.new)) < n, timeout=60, what="sync ingesting the spool")
    proc.signal(signal.SIGINT)
    signalled = time.monotonic()
    code = proc.wait(60)
    took = time.monotonic() - signalled
    left = os.listdir(spool.new)
    assert code == 1 and left, f"sync went on ingesting after Ctrl-C (exit {code}, {len(left)} left):\n{proc.output()}"
    assert took < 3.0, f"sync took {took:.1f} s to stop"
    committed = set(outbox_ids(str(tmp_path / "outbox.db")))
    waiting = {json.loads((pathlib.Path(spool.new) / name).read_text())["context"]["messageId"] for name in left}
    assert committed | waiting == {f"om_hook_{i:05d}" for i in range(n)} and not committed & waiting
    assert os.listdir(spool.rejected) == []
    report = json.loads(proc.stdout())["spool"]  # the count read as status reads it: at most SCAN_LIMIT
    assert (report["waiting"], report["at_least"]) == ((SCAN_LIMIT, ["waiting"]) if len(left) > SCAN_LIMIT
                                                       else (len(left), []))
    print(f"stopped {took:.2f} s after SIGINT with {len(committed)} committed, {len(left)} still handed over")


# -- storage full or unwritable -------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs of the test's own (we are root in CI and in the dev container)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a small tmpfs for the spool-full test: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory):
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_or_read_only_spool_logs_one_line_and_falls_back_to_http(node, tmp_path, small_fs):
    spool = Spool(small_fs / "spool").ensure()
    fill(small_fs)
    event = next(gateway_events(1, prefix="om_full"))
    with service_process(tmp_path, auth_token=TOKEN, spool=spool.path) as p:
        code, (result,), stderr = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=spool.path,
                                           OUTBOX_RELAY_URL=p.url, OUTBOX_RELAY_AUTH_TOKEN=TOKEN)
        assert code == 0 and result["ok"] and result["via"] == "http" and result["status"] == 200
        assert "no space left on device" in result["spoolError"]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith("[outbox-relay] could not write message om_full_00000 to the spool ")
        assert "no space left on device" in lines[0] and f"posting it to {p.url}/webhook/feishu-message" in lines[0]
        assert TOKEN not in stderr
        assert os.listdir(spool.tmp) == [] and os.listdir(spool.new) == []  # no half-written leftovers
        assert "om_full_00000" in outbox_ids(p.outbox)

        # Read-only (as root, chmod would not stop us; a read-only mount does).
        os.unlink(small_fs / "filler")
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        event = next(gateway_events(1, prefix="om_ro"))
        code, (result,), stderr = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=spool.path,
                                           OUTBOX_RELAY_URL=p.url, OUTBOX_RELAY_AUTH_TOKEN=TOKEN)
        assert code == 0 and result["via"] == "http", result
        assert len(stderr.strip().splitlines()) == 1 and "read-only file system" in stderr
        assert "om_ro_00000" in outbox_ids(p.outbox)

    # Without OUTBOX_RELAY_URL there is nowhere else to go: said in one line, and ok is false.
    code, (result,), stderr = run_hook(node, tmp_path, [next(gateway_events(1, prefix="om_lost"))],
                                       OUTBOX_RELAY_SPOOL=spool.path)
    assert code == 1 and result["ok"] is False
    assert stderr.strip().splitlines() == [
        f"[outbox-relay] could not write message om_lost_00000 to the spool {spool.path}: "
        f"{result['error']}; OUTBOX_RELAY_URL is not set: not handed over"]


def test_a_missing_spool_directory_is_not_created_by_the_hook(node, tmp_path):
    """A mistyped OUTBOX_RELAY_SPOOL must fail loudly, not fill a directory nobody ingests; a spool
    whose tmp/ and new/ are missing (fresh install, service not started yet) is completed."""
    event = next(gateway_events(1))
    typo = tmp_path / "no-such-dir" / "spool"
    code, (result,), stderr = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=str(typo))
    assert code == 1 and f"the spool directory {typo} does not exist" in stderr
    assert not typo.exists() and not typo.parent.exists()
    code, (result,), stderr = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL="relative/spool")
    assert code == 1 and "must be an absolute path" in stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    os.chmod(bare, 0o2770)  # shared with the service's user: what the hook creates is shared too
    code, (result,), stderr = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=str(bare))
    assert code == 0 and stderr == "" and os.listdir(bare / "new") == [result["file"]]
    assert [stat.S_IMODE(os.stat(bare / d).st_mode) for d in ("tmp", "new")] == [0o2770, 0o2770]
    assert stat.S_IMODE(os.stat(bare / "new" / result["file"]).st_mode) == 0o640
    assert json.loads((bare / "new" / result["file"]).read_text())["context"]["messageId"] == "om_hook_00000"


def test_the_hook_never_spools_the_gateway_config(node, tmp_path):
    spool = Spool(tmp_path / "spool").ensure()
    event = next(gateway_events(1))
    event["context"]["cfg"] = {"channels": {"feishu": {"appSecret": "s3cr3t-app-secret"}}}
    code, (result,), _ = run_hook(node, tmp_path, [event], OUTBOX_RELAY_SPOOL=spool.path)
    assert code == 0
    text = (pathlib.Path(spool.new) / result["file"]).read_text()
    assert "s3cr3t" not in text and json.loads(text)["context"]["messageId"] == "om_hook_00000"
