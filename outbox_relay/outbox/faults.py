"""When the outbox file itself fails: replaced under a running process, or damaged on disk.

Both paths keep every message that can still be read:
  * replaced (deleted, moved, another file put there): the old file is still open in this process;
    a full copy of it is written beside the path, and its undelivered rows are committed again
    into the file now at the path (`adopt_file_at_path`, called by the outbox after a commit).
  * damaged (SQLite says "malformed", or quick_check fails): `outbox-relay recover` moves the
    damaged file aside, reads every row it still can (bisecting around unreadable pages), and
    writes them into a new outbox at the path (`recover`).
"""

import logging
import os
import sqlite3
import time

from ..errors import OutboxError, OutboxUnavailable
from ..schema.outbox import row_columns
from .siblings import COMPANIONS, DAMAGE_MARKER, Siblings
from .sqlitefile import file_uri

log = logging.getLogger(__name__)

REPLACED_KEY = "file_replaced"  # outbox_meta: what the last adoption did (status/health show it)


def _select(where=""):
    return f"SELECT {', '.join(row_columns())} FROM outbox {where} ORDER BY id"


def adopt_file_at_path(outbox, why):
    """Under the outbox's write lock, after a commit: see the module docstring."""
    file, path = outbox.file, os.path.abspath(outbox.path)
    old = file.conn()
    kept = Siblings(path).orphan_copy()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old.execute("VACUUM INTO ?", (kept,))
        rows = old.execute(_select("WHERE state != 'delivered'")).fetchall()
        # The old file's -wal/-shm left at the path would be read into the file there now.
        for suffix in file.our_companions_at_path():
            os.replace(path + suffix, kept + suffix)
    except (sqlite3.Error, OSError) as e:
        # Not acknowledged: the caller gets OutboxUnavailable (503); the old file stays open, so
        # the next commit tries again.
        raise OutboxUnavailable(f"outbox {path} was {why} and its contents could not be copied yet:"
                                f" {e}") from None
    try:
        outbox.reopen_at_path()
        copied = outbox.restore_rows(rows)
    except OutboxError as e:
        file.broken = f"outbox {path} was {why}, and the file now there cannot take its messages ({e});" \
                      f" everything it held is kept in {kept}"
        log.error("%s", file.broken)
        raise OutboxUnavailable(file.broken) from None
    record = {"at": time.time(), "why": why, "kept": kept, "undelivered": len(rows), "committed_again": copied}
    outbox.set_meta(REPLACED_KEY, record)
    log.error("outbox %s was %s while in use: its %d undelivered message(s) were committed again into"
              " the file now at that path (%d new there); a full copy of the old file is kept at %s",
              path, why, len(rows), copied, kept)


def replaced_warning(outbox):
    """A sentence for status/health while the copy of a replaced file is still kept, else None."""
    record = outbox.get_meta(REPLACED_KEY)
    if not isinstance(record, dict) or not os.path.exists(str(record.get("kept"))):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["at"]))
    return (f"the outbox file was {record['why']} at {when}:"
            f" its {record['undelivered']} undelivered message(s) were committed again; the old file is"
            f" kept at {record['kept']} (remove it once reviewed)")


# -- a damaged file ------------------------------------------------------------------------------


SQLITE_HEADER = b"SQLite format 3\x00"


def check_recoverable(path):
    """Raise OutboxError unless `path` looks like an outbox (damaged or not): a SQLite file whose
    schema, where it can be read, has the outbox table. `recover` moves the file aside and puts an
    outbox in its place: pointed at an archive or a text file by mistake, it must refuse."""
    with open(path, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise OutboxError(f"{path} is not a SQLite database (its first page is not SQLite's): not an"
                              " outbox, or one damaged beyond what can be read; nothing was changed")
    conn = sqlite3.connect(file_uri(path, "ro"), uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return  # the schema itself is damaged: what recover is for
    finally:
        conn.close()
    if "outbox" not in tables:
        raise OutboxError(f"{path} is a SQLite database but not an outbox; nothing was changed")


def recover(outbox_path, open_outbox):
    """Move the damaged file aside (with its WAL: committed data lives there too), read what can
    be read, write it into a new outbox at the path. `open_outbox(path)` makes the new Outbox.
    Returns a report dict."""
    siblings = Siblings(outbox_path)
    path = siblings.outbox
    if not os.path.exists(path):
        raise OutboxError(f"outbox {path} does not exist")
    damaged = siblings.damaged_copy()
    for suffix in ("",) + COMPANIONS + (DAMAGE_MARKER,):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, damaged + suffix)
    rows, unreadable = read_what_can_be_read(damaged)
    meta = _read_meta(damaged)
    outbox = open_outbox(path)
    try:
        outbox.restore_rows(rows, meta)
        counts = outbox.counts()
    finally:
        outbox.close()
    return {"outbox": path, "damaged_copy": damaged, "recovered": len(rows), "counts": counts,
            "unreadable_ids": unreadable}


def read_what_can_be_read(path):
    """Every outbox row SQLite can still read -> (rows in row_columns() order, [(first id, last id)] of
    the id ranges it could not)."""
    conn = sqlite3.connect(file_uri(path, "ro"), uri=True)
    try:
        top = _highest_id(conn)
        rows, unreadable = [], []
        _bisect(conn, 1, top, rows, unreadable)
        return rows, _ranges(unreadable)
    finally:
        conn.close()


def _highest_id(conn):
    """The last id the table ever gave out; where both places that say so are damaged, a bound far
    beyond any real outbox (bisection skips empty ranges in one query each)."""
    for sql in ("SELECT max(id) FROM outbox", "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"):
        try:
            row = conn.execute(sql).fetchone()
            if row and row[0]:
                return int(row[0])
        except sqlite3.DatabaseError:
            continue
    return 1 << 40


MAX_PROBES = 2_000_000  # failing reads before the rest is given up as unreadable (a damaged root)


def _bisect(conn, low, high, rows, unreadable):
    """Read [low, high] in one query; where that fails, each half, down to single ids. `unreadable`
    collects (first, last) id ranges."""
    stack = [(low, high)]
    probes = 0
    while stack:
        a, b = stack.pop()
        probes += 1
        if probes > MAX_PROBES:
            unreadable.extend([(a, b)] + stack)
            return
        try:
            rows.extend(conn.execute(_select("WHERE id BETWEEN ? AND ?"), (a, b)).fetchall())
        except sqlite3.DatabaseError:
            if a == b:
                unreadable.append((a, a))
            else:
                mid = (a + b) // 2
                stack.extend([(mid + 1, b), (a, mid)])


def _ranges(spans):
    out = []
    for a, b in sorted(spans):
        if out and out[-1][1] >= a - 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [tuple(r) for r in out]


def _read_meta(path):
    conn = sqlite3.connect(file_uri(path, "ro"), uri=True)
    try:
        return conn.execute("SELECT key, value FROM outbox_meta").fetchall()
    except sqlite3.DatabaseError:
        return []  # the heartbeat and checkpoints: nice to keep, not messages
    finally:
        conn.close()
