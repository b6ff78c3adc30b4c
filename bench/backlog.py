"""Build a large outbox quickly: a few thousand real puts, then SQL copies with fresh message_ids.

1,000,000 individual puts would take minutes; the relay does not care how a row got there, only
that every row is a normal outbox row (payload = Message JSON) with its own message_id.
"""

import os
import sqlite3
import time

import payloads

from outbox_relay.outbox import Outbox


def fill(path, n, run, templates=10_000, max_pending=1000):
    """An outbox at `path` holding `n` undelivered rows, pending/parked as put() would leave them
    with `max_pending`. Returns the number of rows."""
    templates = min(templates, n)
    box = Outbox(path, max_pending=max(n, 1))  # no parking while we build; applied at the end
    try:
        events = payloads.events(run, templates)
        for i in range(0, templates, 1000):
            box.put_many(events[i:i + 1000])
    finally:
        box.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Preparation, not the thing measured: no journal while copying (gigabytes at 1M rows),
        # then back to WAL, which the outbox needs.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        now = time.time()
        for k in range(1, -(-n // templates)):
            # The template's message_id appears twice in the payload (the field and raw); both change.
            conn.execute(
                "INSERT INTO outbox (message_id, state, chat_id, sender_id, msg_type, text, created_at,"
                " received_at, updated_at, payload)"
                " SELECT mid, 'pending', chat_id, sender_id, msg_type, text, created_at + ?, ?, ?,"
                "        replace(payload, message_id, mid)"
                " FROM (SELECT printf('%s%024d', ?, ? + id - 1) AS mid, * FROM outbox"
                "       WHERE id <= ? AND id <= ?)",
                (k * templates, now, now, payloads.id_prefix(run), k * templates, templates,
                 n - k * templates))
        if n > max_pending:
            # put() parks the oldest pending rows beyond max_pending; leave the file as it would.
            conn.execute("UPDATE outbox SET state = 'parked' WHERE id <= (SELECT max(id) FROM outbox) - ?",
                         (max_pending,))
        conn.execute("COMMIT")
        count = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    # The copies were written without a journal or fsync: put them on disk now, so that what is
    # measured next does not pay for them (on ext4 the first fsync of any file waits for them).
    for suffix in ("", "-wal"):
        try:
            fd = os.open(path + suffix, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    assert count == n, (count, n)
    return count
