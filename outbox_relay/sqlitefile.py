"""One SQLite file used by many threads and processes at once: the outbox's plumbing, apart from
its state machine (outbox.py).

Each thread gets its own connection (sqlite3 connections are not shared); a fork drops the
parent's; writers in this process take turns on a lock of ours before SQLite's; every write is one
`BEGIN IMMEDIATE` … COMMIT; sqlite3 errors become OutboxUnavailable / OutboxError here, and only here.
Written with the stdlib sqlite3 module so the pragmas and the transaction boundaries are exactly
what we say they are.
"""

import logging
import os
import sqlite3
import threading
import time
import urllib.parse

from .errors import OutboxError, OutboxUnavailable

log = logging.getLogger(__name__)


class SqliteFile:
    def __init__(self, path, *, synchronous="full", busy_timeout=30.0):
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()
        # Writers in this process take turns here and the next one wakes the moment a commit
        # ends. Left to SQLite, a blocked BEGIN IMMEDIATE sleeps in its busy handler (1, 2, 5,
        # 10 ... 100 ms steps) while the lock sits free: with 8 webhook threads the p99 was
        # 400-800 ms instead of ~40 ms (bench/). Other processes still meet busy_timeout.
        self.write_lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self.created = False  # set once the file exists: from then on it is never created again

    # -- connections -------------------------------------------------------------------------

    def conn(self):
        """This thread's connection, opened on first use."""
        if self._closed:
            raise OutboxError("the outbox is closed")
        if self._pid != os.getpid():
            # Inherited across fork(): never share a SQLite handle with the parent.
            self._local = threading.local()
            self._conns = []
            self.write_lock = threading.RLock()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _open(self):
        try:
            if self.created:
                # After the first open, never create the file again: an outbox deleted or moved
                # under us must fail loudly (503s), not become a fresh empty file.
                conn = sqlite3.connect(self._uri("rw"), timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False, uri=True)
            else:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            return conn
        except sqlite3.Error as e:
            raise translate(e, self.path) from None

    def _uri(self, mode):
        return "file:" + urllib.parse.quote(os.path.abspath(self.path)) + f"?mode={mode}"

    def close(self):
        """Close every connection this object opened (all threads)."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # -- statements ----------------------------------------------------------------------------

    def transaction(self):
        """`with db.transaction() as c:` — BEGIN IMMEDIATE … COMMIT on this thread's connection."""
        return _Transaction(self.conn(), self.path, self.write_lock, self.busy_timeout)

    def read(self, sql, params=()):
        """Rows of one statement outside a write transaction (WAL: readers never wait for writers)."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise translate(e, self.path) from None

    def pragma_outside_transaction(self, sql):
        """journal_mode and auto_vacuum must be set outside a transaction; another process opening
        the same file at the same moment may hold it locked for an instant."""
        conn = self.conn()
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return conn.execute(sql).fetchall()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise translate(e, self.path) from None
                time.sleep(0.01)

    def probe_writable(self, timeout):
        """Take and drop the write lock on a connection of its own: proves a commit could happen
        now, writes nothing. A missing file is an error here, never silently created."""
        try:
            conn = sqlite3.connect(self._uri("rw"), uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise translate(e, self.path) from None

    def integrity_check(self):
        return self.read("PRAGMA integrity_check")[0][0]


class _Transaction:
    """`BEGIN IMMEDIATE` … COMMIT, rolled back on any error; sqlite3 errors become OutboxError.
    Holds the file's in-process write lock from before BEGIN until after COMMIT/ROLLBACK."""

    def __init__(self, conn, path, lock, timeout):
        self.conn = conn
        self.path = path
        self.lock = lock
        self.timeout = timeout

    def __enter__(self):
        if not self.lock.acquire(timeout=self.timeout):
            raise OutboxUnavailable(f"outbox {self.path} is locked by another writer past the busy timeout")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            self.lock.release()
            if isinstance(e, sqlite3.Error):
                raise translate(e, self.path) from None
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._finish(exc_type, exc)
        finally:
            self.lock.release()

    def _finish(self, exc_type, exc):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except sqlite3.Error as e:
                self._rollback()
                raise translate(e, self.path) from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, self.path) from None
        return False

    def _rollback(self):
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def translate(e, path):
    """A sqlite3 error -> OutboxUnavailable (cannot commit now: locked, disk, read-only) or OutboxError."""
    text = str(e)
    if isinstance(e, sqlite3.OperationalError) or "disk" in text or "readonly" in text:
        if "locked" in text or "busy" in text:
            text = f"outbox {path} is locked by another writer past the busy timeout"
        else:
            text = f"outbox {path} cannot be written: {text}"
        return OutboxUnavailable(text)
    return OutboxError(f"outbox {path}: {text}")
