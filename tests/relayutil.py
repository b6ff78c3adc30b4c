"""Helpers for the relay tests: test messages, relay subprocesses, reading the target back.

Plain functions and one class, no fixtures (those stay in conftest.py and the test modules).
"""

import os
import signal
import subprocess
import sys

import psycopg2

try:  # tests/ as a package or as a rootdir on sys.path (see conftest.py)
    from .pgharness import wait_until
except ImportError:
    from pgharness import wait_until

__all__ = ["BASE_MS", "wait_until", "flat", "put_all", "relay_cmd", "relay_env", "RelayProcess", "pg_rows",
           "pg_query", "row_stats"]

BASE_MS = 1_700_000_000_000


def flat(i, prefix="om", **extra):
    """A flat message dict (the old in-process call's shape) with a predictable id and fields."""
    payload = {
        "message_id": f"{prefix}_{i:06d}",
        "chat_id": f"oc_chat_{i % 7}",
        "sender_id": f"ou_user_{i % 11}",
        "msg_type": "text",
        "content": '{"text": "message %d 测试"}' % i,
        "create_time": str(BASE_MS + i),
    }
    payload.update(extra)
    return payload


def put_all(outbox, payloads, chunk=1000):
    """put_many in chunks; returns how many were new."""
    payloads = list(payloads)
    new = 0
    for start in range(0, len(payloads), chunk):
        new += sum(not r.duplicate for r in outbox.put_many(payloads[start:start + chunk]))
    return new


def relay_cmd():
    """The installed console script next to this interpreter, else `python -m outbox_relay.cli`."""
    script = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "outbox_relay.cli"]


def relay_env(**settings):
    """The current environment without any OUTBOX_RELAY_* variable, plus the given settings
    (outbox="…" -> OUTBOX_RELAY_OUTBOX=…)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
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
