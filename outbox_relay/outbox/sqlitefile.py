"""One SQLite file used by many threads and processes at once: the outbox's plumbing, apart from
its state machine (queue.py).

Each thread gets its own connection (sqlite3 connections are not shared); a fork drops the
parent's; writers in this process take turns on a lock of ours before SQLite's; every write is one
`BEGIN IMMEDIATE` … COMMIT; sqlite3 errors become OutboxUnavailable / OutboxCorrupt / OutboxError
here, and only here, with a sentence that says what is wrong (the directory, the file, the disk).

The file's identity (device, inode) is remembered once it exists and checked after every commit:
an outbox deleted, moved away or replaced under a running process would otherwise keep taking
commits into a file nobody will ever read. What to do then is the outbox's decision
(`on_file_changed`); this module notices, and can open the file now at the path (`reopen`).
Written with the stdlib sqlite3 module so the pragmas and the transaction boundaries are exactly
what we say they are. Longer than most modules because every way the file can fail is turned into
a sentence here (translate), and only here.
"""

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import urllib.parse

from ..errors import OutboxCorrupt, OutboxError, OutboxUnavailable
from .siblings import COMPANIONS, Siblings

log = logging.getLogger(__name__)

# The WAL is truncated back to this after a checkpoint: without a limit it keeps the size of the
# biggest burst it ever held (tens of MB after a drain), for the life of the file.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


class SqliteFile:
    def __init__(self, path, *, synchronous="full", busy_timeout=30.0, readonly=False):
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.readonly = readonly
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
        self.identity = None    # (st_dev, st_ino) of the file our connections write
        self.generation = 0     # bumped by reopen(): every thread's connection is then replaced
        self.on_file_changed = None  # callable(why), called under the write lock after a commit
        self.broken = None      # why no write may go into the file now (damaged, or a foreign
        #                         file at the path): sticky until reopen() or `outbox-relay recover`
        self._immutable = False

    # -- connections -------------------------------------------------------------------------

    def conn(self):
        """This thread's connection to the current file, opened on first use."""
        if self._closed:
            raise OutboxError("the outbox is closed")
        if self._pid != os.getpid():
            # Inherited across fork(): never share a SQLite handle with the parent.
            self._local = threading.local()
            self._conns = []
            self.write_lock = threading.RLock()
            self._pid = os.getpid()
        local = self._local
        if getattr(local, "conn", None) is not None and local.generation != self.generation:
            self._forget(local.conn)  # a connection to the file that used to be at the path
            local.conn = None
        if getattr(local, "conn", None) is None:
            local.conn, local.generation = self._open(), self.generation
            with self._conns_lock:
                self._conns.append(local.conn)
        return local.conn

    def _open(self):
        try:
            if self.readonly:
                conn = self._open_readonly()
            elif self.identity is not None:
                # Once the file exists it is never created again by a plain open: an outbox deleted
                # or moved under us is noticed (identity), not silently replaced by an empty file.
                conn = sqlite3.connect(file_uri(self.path, "rw"), uri=True, **self._connect_args())
            else:
                conn = sqlite3.connect(self.path, **self._connect_args())
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self.readonly:
                conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
                conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            return conn
        except sqlite3.Error as e:
            raise self.translate(e) from None

    def _connect_args(self):
        return dict(timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)

    def _open_readonly(self):
        """For commands that only look: no write, no lock, no new file. SQLite reads a WAL database
        through its -shm file, which it must create when the last writer has removed it; where it
        cannot (a read-only directory, a full disk) and no WAL holds commits, the main file alone is
        complete and is read as immutable."""
        if not os.path.exists(self.path):
            raise OutboxUnavailable(f"outbox {os.path.abspath(self.path)} does not exist")
        conn = sqlite3.connect(file_uri(self.path, "ro"), uri=True, **self._connect_args())
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            return conn
        except sqlite3.OperationalError as e:
            conn.close()
            wal = self.path + "-wal"
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                raise
            log.debug("outbox opened as immutable (%s)", e)
            self._immutable = True
            return sqlite3.connect(file_uri(self.path, "ro", immutable=True), uri=True, **self._connect_args())

    def _forget(self, conn):
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:
            pass

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

    # -- the file's identity -------------------------------------------------------------------

    def remember_identity(self):
        """Note which file (and which -wal/-shm) our connections use. Our connection keeps the WAL
        open, so SQLite neither deletes nor recreates it while we live: its identity is stable."""
        self.identity = _identity(self.path)
        self._companions = {s: _identity(self.path + s) for s in COMPANIONS}

    def our_companions_at_path(self):
        """The suffixes (-wal, -shm) of the files at the path that belong to the file we write. When only the main
        file was replaced (or moved away), SQLite would read the old WAL into the file now at the
        path and mix two databases: these must be moved aside before that file is opened."""
        return [s for s, ident in getattr(self, "_companions", {}).items()
                if ident is not None and _identity(self.path + s) == ident]

    def identity_change(self):
        """None while the path still names the file we write; else what happened to it."""
        if self.identity is None or self.readonly:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted or moved away"
        except OSError as e:
            return f"no longer reachable ({e.strerror})"
        return None if (st.st_dev, st.st_ino) == self.identity else "replaced by another file"

    def reopen(self):
        """Point every thread at the file now at the path (creating it when there is none). The
        old connections are closed as each thread next asks for its connection."""
        with self.write_lock:
            self.generation += 1
            self.identity = None
            self.broken = None
            return self.conn()

    def _after_commit(self):
        why = self.identity_change()
        if why is not None and self.on_file_changed is not None:
            self.on_file_changed(why)

    # -- statements ----------------------------------------------------------------------------

    def transaction(self):
        """`with db.transaction() as c:` — BEGIN IMMEDIATE … COMMIT on this thread's connection."""
        if self.readonly:
            raise OutboxError(f"outbox {self.path} was opened read-only")
        return _Transaction(self)

    def read(self, sql, params=()):
        """Rows of one statement outside a write transaction (WAL: readers never wait for writers)."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self.translate(e) from None

    def script(self, sql):
        """Run to completion what execute() would step only once (PRAGMA incremental_vacuum frees
        one page per step: through execute() it freed a single page per prune)."""
        try:
            self.conn().executescript(sql)
        except sqlite3.Error as e:
            raise self.translate(e) from None

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
                    raise self.translate(e) from None
                time.sleep(0.01)

    def probe_writable(self, timeout):
        """Take and drop the write lock on a connection of its own: proves a commit could happen
        now, writes nothing. A missing file is an error here, never silently created."""
        self.refuse_if_broken()
        try:
            conn = sqlite3.connect(file_uri(self.path, "rw"), uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise self.translate(e) from None

    def quick_check(self):
        """SQLite's quick_check (the b-trees, not the indexes' contents): "ok", or raise OutboxCorrupt.
        On a connection of its own: a long-lived one may hold the damaged pages in its cache."""
        try:
            conn = sqlite3.connect(file_uri(self.path, "ro", immutable=self._immutable), uri=True,
                                   **self._connect_args())
            try:
                rows = conn.execute("PRAGMA quick_check").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise self.translate(e) from None
        result = "; ".join(r[0] for r in rows[:5])
        if result != "ok":
            raise OutboxCorrupt(self._damaged(f"quick_check: {result[:300]}"))
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.damage_marker)  # the file at the path is intact now (recovered, restored)
        return result

    @property
    def damage_marker(self):
        return Siblings(self.path).damage_marker

    def damaged_reason(self):
        try:
            with open(self.damage_marker, encoding="utf-8") as f:
                return f.read().strip() or f"outbox {os.path.abspath(self.path)} is damaged"
        except OSError:
            return None

    def _damaged(self, why):
        self.broken = (f"outbox {os.path.abspath(self.path)} is damaged ({why}): stop the service and run"
                       " `outbox-relay recover`")
        try:
            with open(self.damage_marker, "w", encoding="utf-8") as f:
                f.write(self.broken + "\n")
        except OSError as e:  # a full disk: the in-process flag and the logs still say it
            log.warning("cannot write %s: %s", self.damage_marker, e.strerror)
        return self.broken

    def refuse_if_broken(self):
        if self.broken:
            damaged = "damaged" in self.broken
            raise (OutboxCorrupt if damaged else OutboxUnavailable)(self.broken)

    def integrity_check(self):
        return self.read("PRAGMA integrity_check")[0][0]

    def checkpoint(self):
        """Copy the WAL back into the file and truncate it; skipped (not waited for) while busy."""
        try:
            return self.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as e:
            log.debug("checkpoint skipped: %s", e)
            return None

    def sizes(self):
        """{"file": bytes, "wal": bytes, "free_bytes": on the file system, "reusable": bytes}."""
        out = {}
        for key, name in (("file", self.path), ("wal", self.path + "-wal")):
            try:
                out[key] = os.path.getsize(name)
            except OSError:
                out[key] = 0
        out["free_bytes"] = free_bytes(self.path)
        return out

    # -- errors -------------------------------------------------------------------------------------

    def translate(self, e):
        """A sqlite3 error -> OutboxCorrupt (the file is damaged), OutboxUnavailable (cannot commit
        now: locked, disk full, read-only) or OutboxError, in words that point at the real cause."""
        name = getattr(e, "sqlite_errorname", "")  # Python >= 3.11
        text = str(e)
        where = os.path.abspath(self.path)
        if name == "SQLITE_NOTADB" or "not a database" in text:
            # Not a SQLite file at all: a wrong --outbox as likely as damage; no marker, no advice to
            # `recover` (which refuses such a file).
            return OutboxUnavailable(f"outbox {where} is not a database (not a SQLite file: a wrong path, or"
                                     " its first page is overwritten)")
        if name == "SQLITE_CORRUPT" or "malformed" in text:
            return OutboxCorrupt(self._damaged(text))
        if "locked" in text or "busy" in text:
            return OutboxUnavailable(f"outbox {where} is locked by another writer past the busy timeout")
        if name == "SQLITE_FULL" or "disk is full" in text:
            free = free_bytes(where)
            return OutboxUnavailable(f"outbox {where} cannot be written: the disk is full ("
                                     + ("unknown space" if free is None else f"{free / 1048576:.1f} MiB")
                                     + " free)")
        if name == "SQLITE_READONLY_DIRECTORY" or (
                "readonly" in text and not os.access(os.path.dirname(where), os.W_OK)):
            return OutboxUnavailable(f"outbox {where} cannot be written: its directory"
                                     f" {os.path.dirname(where)} is not writable (SQLite creates the"
                                     " -wal and -shm files there)")
        if "readonly" in text:
            return OutboxUnavailable(f"outbox {where} cannot be written: the file is read-only")
        if isinstance(e, sqlite3.OperationalError) or "disk" in text:
            return OutboxUnavailable(f"outbox {where} cannot be written: {text}")
        return OutboxError(f"outbox {where}: {text}")


def file_uri(path, mode, immutable=False):
    """The SQLite URI that opens `path` in `mode` (ro, rw, rwc). The path is percent-encoded whole:
    a '#', '?' or '%' in a directory name is part of the name, not URI syntax."""
    return (f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"
            + ("&immutable=1" if immutable else ""))


def _identity(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def free_bytes(path):
    """Bytes free on the file system that holds the file `path`, or None when it cannot be told."""
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return None


class _Transaction:
    """`BEGIN IMMEDIATE` … COMMIT, rolled back on any error; sqlite3 errors translated. Holds the
    file's in-process write lock from before BEGIN until after the identity check that follows
    the COMMIT, so nothing is acknowledged from a file that is no longer at the path."""

    def __init__(self, file):
        self.file = file
        self.conn = None

    def __enter__(self):
        file = self.file
        file.refuse_if_broken()
        if not file.write_lock.acquire(timeout=file.busy_timeout):
            raise OutboxUnavailable(f"outbox {file.path} is locked by another writer past the busy timeout")
        try:
            self.conn = file.conn()
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            file.write_lock.release()
            if isinstance(e, sqlite3.Error):
                raise file.translate(e) from None
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            result = self._finish(exc_type, exc)
            if exc_type is None:
                self.file._after_commit()
            return result
        finally:
            self.file.write_lock.release()

    def _finish(self, exc_type, exc):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except sqlite3.Error as e:
                self._rollback()
                raise self.file.translate(e) from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self.file.translate(exc) from None
        return False

    def _rollback(self):
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
