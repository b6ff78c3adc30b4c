"""Helpers for the relay tests: filling and reading an outbox, relay subprocesses, reading the
target back, the checks every fault test ends with.

Plain functions and classes, no fixtures (those stay in conftest.py and the test modules). The
test messages are in factories.py.
"""

import os
import random
import signal
import subprocess
import sys
import threading

import psycopg2

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from cliutil import clean_env
from factories import BASE_MS, flat, ids
from serverproc import wait_until

__all__ = ["SEED", "put_all", "outbox_with", "outbox_counts", "pending_rows", "undelivered_ids", "heartbeat", "Writer",
           "relay_cmd", "relay_env", "RelayProcess", "pg_query", "row_stats", "pg_rows", "pg_count",
           "assert_exactly_once",
           # at home in factories.py and serverproc.py; importable here too for test files on branches
           # begun before the helpers moved (drop once those are merged)
           "BASE_MS", "flat", "wait_until"]

# The seed of the run's random fault timings, named in their failure messages: rerun with
# OUTBOX_RELAY_TEST_SEED=<it> to repeat them.
SEED = int(os.environ.get("OUTBOX_RELAY_TEST_SEED", "0")) or random.randrange(1, 1_000_000)


# -- the outbox --------------------------------------------------------------------------------------


def put_all(outbox, payloads, chunk=1000):
    """put_many in chunks; returns how many were new."""
    payloads = list(payloads)
    new = 0
    for start in range(0, len(payloads), chunk):
        new += sum(not r.duplicate for r in outbox.put_many(payloads[start:start + chunk]))
    return new


def outbox_with(path, payloads):
    """The outbox file at path, holding payloads (none: just created); -> path as a string."""
    with Outbox(path) as outbox:
        put_all(outbox, payloads)
    return str(path)


def outbox_counts(path):
    """The outbox's counts by state."""
    with Outbox(path) as outbox:
        return outbox.counts()


def pending_rows(path):
    with Outbox(path) as outbox:
        return outbox.rows("pending", limit=1_000_000)


def undelivered_ids(path):
    with Outbox(path) as outbox:
        return {r["message_id"] for state in ("pending", "parked", "dead")
                for r in outbox.rows(state, limit=1_000_000)}


def heartbeat(path):
    """What the relay last wrote about itself into the outbox ({} before its first beat)."""
    with Outbox(path) as outbox:
        return outbox.get_meta("relay", {})


def archive_with(url, outbox_path, delivered, pending=()):
    """An archive made by init-db at url holding `delivered` (relayed), its outbox at outbox_path still
    holding `pending`. -> {"url", "outbox"}: what a test of the CLI's reads names."""
    target = open_target(url)
    target.init_db()
    outbox = Outbox(outbox_path)
    try:
        outbox.put_many(list(delivered))
        assert Relay(outbox, target).drain()["delivered"] == len(delivered)
        outbox.put_many(list(pending))
        assert outbox.counts()["pending"] == len(pending)
    finally:
        outbox.close()
        target.close()
    return {"url": url, "outbox": outbox_path}


class Writer(threading.Thread):
    """Puts flat messages one at a time (each its own commit; `per_commit` > 1: that many a commit, as a
    busy webhook's group commit does) until stopped; remembers the ids."""

    def __init__(self, outbox_path, prefix="om", per_commit=1):
        super().__init__(daemon=True)
        self.outbox_path = outbox_path
        self.prefix = prefix
        self.per_commit = per_commit
        self.put = 0
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        with Outbox(self.outbox_path) as outbox:
            while not self.halt.is_set():
                try:
                    if self.per_commit == 1:
                        outbox.put(flat(self.put, self.prefix))
                    else:
                        outbox.put_many([flat(self.put + k, self.prefix) for k in range(self.per_commit)])
                    self.put += self.per_commit
                except Exception as e:  # noqa: BLE001 - asserted by the test
                    self.errors.append(e)
                    return
                self.halt.wait(0.001)

    def stop(self):
        self.halt.set()
        self.join(30)
        assert not self.is_alive()
        return ids(self.put, prefix=self.prefix)


# -- relay subprocesses ------------------------------------------------------------------------------


def relay_cmd():
    """The installed console script next to this interpreter, else `python -m outbox_relay.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "outbox_relay.cli"]


def relay_env(**settings):
    """clean_env() plus the given settings (outbox="…" -> OUTBOX_RELAY_OUTBOX=…)."""
    env = clean_env(PYTHONUNBUFFERED="1")
    for name, value in settings.items():
        env["OUTBOX_RELAY_" + name.upper()] = str(value)
    return env


class RelayProcess:
    """`outbox-relay ARGS` as a child process; stderr (the log) and stdout in files beside each other."""

    def __init__(self, args, env, cwd, log_path):
        self.args = list(args)
        self.log_path = str(log_path)
        self.out_path = self.log_path + ".stdout"
        self._files = [open(self.log_path, "ab"), open(self.out_path, "ab")]
        self.proc = subprocess.Popen(relay_cmd() + self.args, env=env, cwd=str(cwd),
                                     stdout=self._files[1], stderr=self._files[0],
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def _read(self, path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stdout(self):
        return self._read(self.out_path)

    def output(self):
        """The log and then stdout: for assertion messages and for text anywhere in either."""
        return self._read(self.log_path) + self._read(self.out_path)

    def stop(self):
        """Clean-up: SIGKILL if still running, close the files."""
        if self.alive():
            self.kill9()
        for f in self._files:
            f.close()

    def __repr__(self):
        return f"<RelayProcess {self.pid} {' '.join(self.args)}>"


# -- reading the target back ----------------------------------------------------------------------


def pg_query(url, sql, params=None):
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else None
    finally:
        conn.close()


def row_stats(url, table="feishu_messages"):
    """(count(*), count(DISTINCT message_id)) of the target table."""
    return tuple(pg_query(url, f'SELECT count(*), count(DISTINCT message_id) FROM "{table}"')[0])


def pg_rows(url, table="feishu_messages"):
    """Every message_id in the target table, as a list (duplicates kept, to be counted)."""
    return [r[0] for r in pg_query(url, f'SELECT message_id FROM "{table}"')]


def pg_count(url):
    """count(*) of the target table; 0 while it does not exist yet."""
    try:
        return row_stats(url)[0]
    except Exception:  # noqa: BLE001 - the table does not exist yet
        return 0


def assert_exactly_once(rows, expected):
    """rows (every message_id in the target, duplicates kept: pg_rows(), mariaharness.message_ids())
    are the set expected, each once."""
    assert len(rows) == len(set(rows)), "duplicates in the target"
    missing, extra = expected - set(rows), set(rows) - expected
    assert not missing and not extra, (sorted(missing)[:10], sorted(extra)[:10])
