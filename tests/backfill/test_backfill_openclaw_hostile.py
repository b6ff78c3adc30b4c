"""`outbox-relay backfill openclaw` on hostile files (issue 24's trial), generated beside the good
transcripts of tests/openclawfixtures.py: every bad line or file is skipped with its reason, the good
messages are committed exactly once into real PostgreSQL, memory stays bounded (the CLI runs as a
subprocess under a 1 GiB address-space limit), and a source that could not be read makes the exit
non-zero with the report still printed."""

import json
import resource
import sqlite3
import subprocess

import pytest

import openclawfixtures as ocf
from cliutil import EXE, clean_env, run_cli
from relayutil import pg_query, row_stats

MEMORY_LIMIT = 1024 ** 3


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def backfill(fx, tmp_path, pg_url):
    return subprocess.run([EXE, "backfill", "openclaw", str(fx.root), "--outbox", str(tmp_path / "outbox.db"),
                           "--target", pg_url, "--json"], capture_output=True, text=True, timeout=300,
                          env=clean_env(), preexec_fn=limited)


def sync(tmp_path, pg_url):
    result = run_cli("sync", "--outbox", tmp_path / "outbox.db", "--target", pg_url, "--timeout", "30")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_hostile_files_are_skipped_with_their_reasons_and_the_good_messages_committed_once(tmp_path, pg_url,
                                                                                            hermetic):
    fx = ocf.build(tmp_path / "openclaw")
    bad = ocf.hostile(fx)
    good = set(fx.expected) | {fx.preexisting["message_id"]} | bad.expected
    with sqlite3.connect(bad.locked_db, isolation_level=None) as lock:
        lock.execute("BEGIN EXCLUSIVE")  # a writer holding the store: readers get SQLITE_BUSY
        first = backfill(fx, tmp_path, pg_url)
        lock.execute("ROLLBACK")
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr and "MemoryError" not in first.stderr
    report = json.loads(first.stdout)  # the report is printed all the same
    assert (report["new"], report["already_stored"]) == (len(good), 0)
    unreadable = {s["where"]: s["error"] for s in report["unreadable_sources"]}
    assert set(unreadable) == set(bad.sources), unreadable
    for where, error in bad.sources.items():
        assert unreadable[where].startswith(error), (where, unreadable[where])
    examples = {e["where"]: e["error"] for e in report["examples"]}
    for where, error in bad.lines.items():
        assert examples.get(where) == error, (where, examples.get(where))
    assert first.stderr.splitlines()[-1] == (
        f"Error: {len(bad.sources)} source(s) could not be read (listed above): the messages in them are not"
        " committed; fix or move them, then run the backfill again")
    sync(tmp_path, pg_url)
    ids = {r[0] for r in pg_query(pg_url, "SELECT message_id FROM feishu_messages")}
    assert ids == good and row_stats(pg_url) == (len(good), len(good))

    # The store is free again: the next run reads it, adds only its message, and still says what it could not read.
    second = backfill(fx, tmp_path, pg_url)
    assert second.returncode == 1, second.stderr
    report = json.loads(second.stdout)
    assert (report["new"], report["already_stored"]) == (len(bad.locked), len(good))
    assert {s["where"] for s in report["unreadable_sources"]} == set(bad.sources) - {
        str(bad.locked_db.relative_to(fx.root))}
    sync(tmp_path, pg_url)
    assert row_stats(pg_url) == (len(good | bad.locked),) * 2
