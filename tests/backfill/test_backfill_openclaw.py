"""backfill/openclaw.py and `outbox-relay backfill openclaw`, on an OpenClaw directory of both eras
(tests/openclawfixtures.py) into real PostgreSQL: exact rows and fields, counts by reason, a second
run adding nothing, and a gateway process writing the SQLite transcript while the backfill reads it.
"""

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from outbox_relay.backfill.openclaw import SKIP_REASONS, backfill_openclaw
from outbox_relay.outbox import Outbox
from outbox_relay.targets import open_target

import openclawfixtures as ocf
from cliutil import run_cli
from relayutil import pg_query, row_stats
from serverproc import wait_until

FIELDS = ("message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id", "sender_id", "sender_type",
          "msg_type", "text", "mentions", "created_at", "source")


@pytest.fixture
def fx(tmp_path):
    return ocf.build(tmp_path / "openclaw")


def backfill_cli(fx, tmp_path, target, *extra):
    result = run_cli("backfill", "openclaw", fx.root, "--outbox", tmp_path / "outbox.db", "--target", target,
                     "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sync(tmp_path, target):
    result = run_cli("sync", "--outbox", tmp_path / "outbox.db", "--target", target, "--timeout", "30")
    assert result.exit_code == 0, result.output


def pg_messages(url):
    cols = ", ".join(f"(extract(epoch from {c}) * 1000)::bigint" if c == "created_at" else c for c in FIELDS)
    return {r[0]: dict(zip(FIELDS, r)) for r in pg_query(url, f"SELECT {cols} FROM feishu_messages")}


def expected_skips(fx):
    return {reason: fx.skipped.get(reason, 0) for reason in SKIP_REASONS}


def put_preexisting(tmp_path, fx, target):
    """The message that reached the archive by webhook before the backfill."""
    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        outbox.put(fx.preexisting)
    sync(tmp_path, target)


def test_both_eras_give_exactly_the_expected_rows_and_a_second_run_adds_nothing(fx, tmp_path, pg_url, hermetic):
    put_preexisting(tmp_path, fx, pg_url)
    report = backfill_cli(fx, tmp_path, pg_url)
    assert report["found"] == len(fx.expected) + 1
    assert (report["new"], report["already_stored"]) == (len(fx.expected), 1)
    assert report["skipped"] == expected_skips(fx)
    assert report["copies"] == fx.copies == 2
    assert report["agents"] == ["main", "ops"] and report["target_checked"] is True
    sync(tmp_path, pg_url)

    rows = pg_messages(pg_url)
    assert row_stats(pg_url) == (len(fx.expected) + 1,) * 2
    assert {k: v for k, v in rows.items() if k != fx.preexisting["message_id"]} == {
        mid: {f: e.get(f) for f in FIELDS} for mid, e in fx.expected.items()}
    # The row that was already there is the webhook's, untouched.
    pre = rows[fx.preexisting["message_id"]]
    assert (pre["source"], pre["text"]) == ("api", fx.preexisting["text"])

    again = backfill_cli(fx, tmp_path, pg_url)
    assert (again["found"], again["new"], again["already_stored"]) == (report["found"], 0, report["found"])
    sync(tmp_path, pg_url)
    assert row_stats(pg_url) == (len(fx.expected) + 1,) * 2


def test_the_raw_line_is_kept_and_the_text_is_the_senders_words_alone(fx, tmp_path, pg_url, hermetic):
    backfill_cli(fx, tmp_path, pg_url)
    sync(tmp_path, pg_url)
    raw, content = pg_query(pg_url, "SELECT raw, content FROM feishu_messages WHERE message_id = 'om_fx_b'")[0]
    assert raw["session"]["key"] == f"agent:main:feishu:group:{ocf.GROUP}"
    assert "[Replying to:" in raw["openclaw_transcript"]["message"]["content"][0]["text"]
    assert content == {"text": "收到，我改日历\n第二行"}
    for (text,) in pg_query(pg_url, "SELECT text FROM feishu_messages"):
        assert "[message_id:" not in text and "[System:" not in text and ocf.MARKER not in text


def test_dry_run_commits_nothing(fx, tmp_path, pg_url, hermetic):
    put_preexisting(tmp_path, fx, pg_url)
    report = backfill_cli(fx, tmp_path, pg_url, "--dry-run")
    assert (report["dry_run"], report["new"], report["already_stored"]) == (True, len(fx.expected), 1)
    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        assert outbox.counts()["pending"] == 0
    assert row_stats(pg_url) == (1, 1)


def test_since_and_until_select_by_the_exact_message_time(fx, tmp_path, hermetic):
    since, until = ocf.BASE_MS, ocf.BASE_MS + 3_600_000  # [02:00, 03:00) UTC on 2026-11-30
    inside = {m for m, e in fx.expected.items() if since <= e["created_at"] < until}
    assert inside and len(inside) < len(fx.expected)
    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        report = backfill_openclaw(str(fx.root), outbox, since_ms=since, until_ms=until)
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as c:
        stored = {json.loads(p)["message_id"] for (p,) in c.execute("SELECT payload FROM outbox")}
    assert stored == inside
    assert report["skipped"]["out_of_range"] == len(fx.expected) + 1 - len(inside)


def test_cli_since_takes_dates_and_a_wrong_one_is_one_line(fx, tmp_path, hermetic):
    ok = run_cli("backfill", "openclaw", fx.root, "--outbox", tmp_path / "o.db", "--target",
                 f"sqlite:///{tmp_path}/a.db", "--since", "2026-11-30T02:00", "--until", "2026-11-30T03:00", "--json")
    assert ok.exit_code == 0, ok.output
    inside = [e for e in fx.expected.values() if ocf.BASE_MS <= e["created_at"] < ocf.BASE_MS + 3_600_000]
    assert json.loads(ok.stdout)["new"] == len(inside) == 3
    bad = run_cli("backfill", "openclaw", fx.root, "--outbox", tmp_path / "o.db", "--since", "last tuesday")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.output


@pytest.mark.parametrize("make", ["missing", "file", "no_agents"])
def test_a_wrong_dir_is_one_line_exit_2_and_changes_nothing(tmp_path, hermetic, make):
    target = tmp_path / "openclaw"
    if make == "file":
        target.write_text("x")
    elif make == "no_agents":
        target.mkdir()
    result = run_cli("backfill", "openclaw", target, "--outbox", tmp_path / "data" / "outbox.db")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert str(target) in result.stderr
    assert not (tmp_path / "data").exists()


def test_the_summary_table_names_every_count(fx, tmp_path, hermetic):
    result = run_cli("backfill", "openclaw", fx.root, "--outbox", tmp_path / "o.db", "--target",
                     f"sqlite:///{tmp_path}/a.db")
    assert result.exit_code == 0, result.output
    for label in ("found", "new", "already stored", "skipped: assistant", "skipped: compaction",
                  "skipped: tool output", "skipped: other channel", "skipped: generated",
                  "incomplete last line (being written)"):
        assert label in result.stdout


def test_an_unreachable_target_still_commits_everything_to_the_outbox(fx, tmp_path, hermetic):
    report = backfill_cli(fx, tmp_path, "postgresql://u:secret-pw@127.0.0.1:9/db?connect_timeout=1")
    assert (report["new"], report["target_checked"]) == (len(fx.expected) + 1, False)


def test_nothing_in_the_openclaw_directory_is_written(fx, tmp_path, hermetic):
    def snapshot():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in fx.root.rglob("*") if p.is_file()}
    before = snapshot()
    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        backfill_openclaw(str(fx.root), outbox)
    after = snapshot()
    # SQLite's reader may create the (empty) WAL index files beside the database, as any reader does.
    assert {p: h for p, h in after.items() if not str(p).endswith(("-wal", "-shm"))} == before


# -- a gateway writing the SQLite transcript while the backfill reads it ------------------------------

WRITER = r"""
import json, os, sqlite3, sys, time
sys.path.insert(0, sys.argv[1])
import openclawfixtures as ocf
db, session, stop, out = sys.argv[2:6]
# timeout=0: a writer that had to wait for a lock fails at once, so every wait is seen and counted.
conn = sqlite3.connect(db, isolation_level=None, timeout=0)
(seq,) = conn.execute("SELECT max(seq) FROM transcript_events WHERE session_id = ?", (session,)).fetchone()
busy, written = [], []
while not os.path.exists(stop):
    seq += 1
    mid = "om_w_%06d" % seq
    line = {"type": "message", "id": "w%d" % seq, "parentId": None, "timestamp": ocf.iso(ocf.BASE_MS + seq),
            "message": {"role": "user", "timestamp": ocf.BASE_MS + seq, "__openclaw": ocf.meta(ocf.TOM, "Tom"),
                        "content": [{"type": "text", "text": ocf.feishu_body(mid, "Tom", "写入中 %d" % seq)}]}}
    try:
        conn.execute("BEGIN IMMEDIATE")
        ocf.insert_event(conn, session, seq, line, compress=seq % 2 == 0)
        conn.execute("COMMIT")
        written.append([mid, time.time()])
    except sqlite3.OperationalError as e:
        busy.append(str(e))
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        seq -= 1
    time.sleep(0.001)  # a busy gateway's pace, not a wait for anything
json.dump({"busy": busy, "written": written}, open(out, "w"))
"""


@pytest.mark.slow
def test_a_transcript_written_during_the_backfill_is_neither_blocked_nor_corrupted(fx, tmp_path, pg_url, hermetic):
    stop, out = tmp_path / "stop", tmp_path / "writer.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, os.path.dirname(ocf.__file__), str(fx.ops_db),
                               fx.ops_group_session, str(stop), str(out)])
    try:
        wait_until(lambda: _rows(fx) >= 400, timeout=30, what="the writer's first rows")
        target = open_target(pg_url)
        try:
            with Outbox(str(tmp_path / "outbox.db")) as outbox:
                started = time.time()
                first = backfill_openclaw(str(fx.root), outbox, target)
                finished = time.time()
                stop.touch()
                assert writer.wait(30) == 0
                second = backfill_openclaw(str(fx.root), outbox, target)
        finally:
            target.close()
    finally:
        stop.touch()
        if writer.poll() is None:
            writer.kill()
    result = json.loads(out.read_text())
    written = {mid for mid, _ in result["written"]}
    assert result["busy"] == []  # the gateway never waited for our reader
    assert any(started <= at <= finished for _, at in result["written"]), "the writer did not overlap the backfill"
    conn = sqlite3.connect(fx.ops_db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    assert first["skipped"]["unreadable"] == second["skipped"]["unreadable"] == 1  # only the fixture's partial line
    sync(tmp_path, pg_url)
    ids = {r[0] for r in pg_query(pg_url, "SELECT message_id FROM feishu_messages")}
    assert ids == set(fx.expected) | {fx.preexisting["message_id"]} | written
    assert row_stats(pg_url) == (len(ids),) * 2
    assert first["new"] + second["new"] == len(ids)


def _rows(fx):
    with contextlib.closing(sqlite3.connect(f"file:{fx.ops_db}?mode=ro", uri=True)) as c:
        return c.execute("SELECT count(*) FROM transcript_events WHERE session_id = ?",
                         (fx.ops_group_session,)).fetchone()[0]


def test_an_unreadable_store_is_reported_and_the_rest_is_read(fx, tmp_path):
    fx.ops_db.write_bytes(b"not a database " * 100)
    with Outbox(str(tmp_path / "outbox.db")) as outbox:
        report = backfill_openclaw(str(fx.root), outbox)
    assert report["unreadable_sources"] == [{"where": "agents/ops/agent/openclaw-agent.sqlite",
                                             "error": "cannot read: file is not a database"}]
    # agents/main whole, and what the migration archive still holds of agents/ops.
    assert report["found"] == sum(1 for m in fx.expected if m in "om_fx_a om_fx_b om_fx_c om_fx_d om_fx_e om_fx_f"
                                  " om_fx_l om_fx_m".split())
