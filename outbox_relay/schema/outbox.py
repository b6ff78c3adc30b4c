"""The outbox's tables (SQLite), versioned: the version lives in `PRAGMA user_version`, and
OUTBOX_MIGRATIONS[i] takes a file from version i to i+1, so a later release migrates an existing outbox
in place when it opens it."""

import functools
import sqlite3

OUTBOX_MIGRATIONS = [
    # 0 -> 1
    [
        """CREATE TABLE outbox (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id   TEXT NOT NULL UNIQUE,
            state        TEXT NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivered', 'parked', 'dead')),
            chat_id      TEXT,
            sender_id    TEXT,
            msg_type     TEXT,
            text         TEXT NOT NULL DEFAULT '',
            created_at   INTEGER NOT NULL,          -- epoch ms, from the message
            received_at  REAL NOT NULL,             -- epoch s, the outbox commit
            updated_at   REAL NOT NULL,
            delivered_at REAL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            last_error   TEXT,
            payload      TEXT NOT NULL              -- Message as JSON
        )""",
        "CREATE INDEX outbox_state_id ON outbox (state, id)",
        """CREATE TABLE outbox_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ],
]
OUTBOX_MIGRATIONS.append(
    # 1 -> 2: rows per state kept by triggers, so counting costs the same with a million rows
    # parked as with none (put's overflow check, status, /metrics).
    [
        "CREATE TABLE outbox_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO outbox_counts (state, n) SELECT s.value, (SELECT count(*) FROM outbox WHERE state = s.value)"
        " FROM json_each('[\"pending\", \"delivered\", \"parked\", \"dead\"]') AS s",
        """CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox BEGIN
            UPDATE outbox_counts SET n = n + 1 WHERE state = NEW.state;
        END""",
        """CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox BEGIN
            UPDATE outbox_counts SET n = n - 1 WHERE state = OLD.state;
        END""",
        """CREATE TRIGGER outbox_counts_update AFTER UPDATE OF state ON outbox
           WHEN OLD.state <> NEW.state BEGIN
            UPDATE outbox_counts SET n = n - 1 WHERE state = OLD.state;
            UPDATE outbox_counts SET n = n + 1 WHERE state = NEW.state;
        END""",
    ])
OUTBOX_MIGRATIONS.append(
    # 2 -> 3: the signed webhook requests already committed (their X-Lark-Signature), kept for the
    # replay window: a captured request sent again must not store its message a second time.
    [
        "CREATE TABLE request_keys (key TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX request_keys_seen_at ON request_keys (seen_at)",
    ])
OUTBOX_MIGRATIONS.append(
    # 3 -> 4: a row holds a message, or an event about one (an edit, a recall, a reaction: message/events.py).
    # An event's row keeps its key, event:<event_id>, in message_id: the column the outbox dedupes on.
    [
        "ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'message' CHECK (kind IN ('message', 'event'))",
    ])
OUTBOX_VERSION = len(OUTBOX_MIGRATIONS)


@functools.lru_cache(maxsize=None)
def row_columns():
    """The outbox table's columns but `id`, in table order, as the migrations above make them: read from
    a scratch in-memory database, so the list is never written out a second time beside the DDL."""
    conn = sqlite3.connect(":memory:")
    try:
        for step in OUTBOX_MIGRATIONS:
            for sql in step:
                conn.execute(sql)
        return tuple(r[1] for r in conn.execute("PRAGMA table_info(outbox)") if r[1] != "id")
    finally:
        conn.close()
