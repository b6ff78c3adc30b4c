"""Build a large outbox quickly: a few thousand real puts, then SQL copies with fresh message_ids.

1,000,000 individual puts would take minutes; the relay does not care how a row got there, only
that every row is a normal outbox row (payload = Message JSON) with its own message_id.
"""

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
        conn = box._conn()
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        copies = -(-n // templates)
        for k in range(1, copies):
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
        pending = n
        if pending > max_pending:
            # put() parks the oldest pending rows beyond max_pending; leave the file as it would.
            conn.execute("UPDATE outbox SET state = 'parked' WHERE id <= (SELECT max(id) FROM outbox) - ?",
                         (max_pending,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        box.close()
    assert count == n, (count, n)
    return count
