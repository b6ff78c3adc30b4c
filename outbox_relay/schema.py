"""Table definitions for both sides, versioned.

Outbox (SQLite): the version lives in `PRAGMA user_version`; OUTBOX_MIGRATIONS[i]
takes a file from version i to i+1, so a later release migrates an existing
outbox in place when it opens it.

Target (PostgreSQL or SQLite): the version lives in `outbox_relay_schema`, one
row per table. TARGET_MIGRATIONS[dialect][i] takes the table from i to i+1.
`outbox-relay schema --sql` prints them for a DBA (on RDS the application user
often may not run DDL); `outbox-relay init-db` applies what is missing.

Identifiers are the only thing ever formatted into SQL here, and only after
`check_table_name` has held them to [A-Za-z_][A-Za-z0-9_]* (optionally
schema-qualified). Values always go through bind parameters.
"""

import re

from .errors import ConfigError

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
OUTBOX_VERSION = len(OUTBOX_MIGRATIONS)

_TABLE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Columns written by the relay, in COPY order. `relayed_at` is the server's now().
TARGET_COLUMNS = (
    "message_id", "chat_id", "chat_type", "thread_id", "root_id", "parent_id",
    "sender_id", "sender_type", "msg_type", "content", "text", "mentions",
    "created_at", "source", "raw", "received_at", "outbox_host", "outbox_id",
)
JSON_COLUMNS = ("content", "mentions", "raw")
TIME_COLUMNS = ("created_at", "received_at")


def check_table_name(name):
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigError(
            f"table name {name!r} is not valid: use letters, digits and _ (optionally schema.table)")
    return name


def quote_ident(name):
    return ".".join(f'"{part}"' for part in check_table_name(name).split("."))


def _index_name(table, suffix):
    return quote_ident(table.split(".")[-1] + "_" + suffix)


def target_migrations(dialect, table):
    """[[sql, ...], ...]: the statements that take `table` from version i to i+1."""
    t = quote_ident(table)
    if dialect == "postgresql":
        v1 = [
            f"""CREATE TABLE IF NOT EXISTS {t} (
    message_id   varchar(128) PRIMARY KEY,
    chat_id      varchar(128),
    chat_type    varchar(64),
    thread_id    varchar(128),
    root_id      varchar(128),
    parent_id    varchar(128),
    sender_id    varchar(128),
    sender_type  varchar(64),
    msg_type     varchar(64) NOT NULL,
    content      jsonb,
    text         text NOT NULL DEFAULT '',
    mentions     jsonb,
    created_at   timestamptz NOT NULL,
    source       varchar(32) NOT NULL,
    raw          jsonb,
    received_at  timestamptz NOT NULL,
    relayed_at   timestamptz NOT NULL DEFAULT now(),
    outbox_host  varchar(255),
    outbox_id    bigint
)""",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'chat_created')} ON {t} (chat_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'created')} ON {t} (created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'sender_created')} ON {t} (sender_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'relayed')} ON {t} (relayed_at)",
        ]
    elif dialect == "sqlite":
        v1 = [
            f"""CREATE TABLE IF NOT EXISTS {t} (
    message_id   TEXT PRIMARY KEY,
    chat_id      TEXT,
    chat_type    TEXT,
    thread_id    TEXT,
    root_id      TEXT,
    parent_id    TEXT,
    sender_id    TEXT,
    sender_type  TEXT,
    msg_type     TEXT NOT NULL,
    content      TEXT,
    text         TEXT NOT NULL DEFAULT '',
    mentions     TEXT,
    created_at   TEXT NOT NULL,
    source       TEXT NOT NULL,
    raw          TEXT,
    received_at  TEXT NOT NULL,
    relayed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    outbox_host  TEXT,
    outbox_id    INTEGER
)""",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'chat_created')} ON {t} (chat_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'created')} ON {t} (created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'sender_created')} ON {t} (sender_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'relayed')} ON {t} (relayed_at)",
        ]
    else:
        raise ConfigError(f"unsupported target dialect {dialect!r}")
    return [v1]


def trigram_statements(table):
    """PostgreSQL only, applied where permitted: substring search on text (Chinese has no word breaks)."""
    return [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        f"CREATE INDEX IF NOT EXISTS {_index_name(table, 'text_trgm')} ON {quote_ident(table)} "
        "USING gin (text gin_trgm_ops)",
    ]


VERSION_TABLE = "outbox_relay_schema"


def version_table_sql(dialect):
    ts = "timestamptz NOT NULL DEFAULT now()" if dialect == "postgresql" else "TEXT NOT NULL"
    return (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
            f"(table_name varchar(130) PRIMARY KEY, version integer NOT NULL, applied_at {ts})")


def schema_sql(dialect, table):
    """The whole DDL as one script, for a DBA to read and run."""
    migrations = target_migrations(dialect, table)
    lines = [f"-- outbox-relay target schema for {table} ({dialect}), version {len(migrations)}"]
    lines.append(version_table_sql(dialect) + ";")
    for stmts in migrations:
        lines.extend(s + ";" for s in stmts)
    if dialect == "postgresql":
        lines.append("-- Optional, for fast substring search (needs the pg_trgm extension):")
        lines.extend(s + ";" for s in trigram_statements(table))
    now = "now()" if dialect == "postgresql" else "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    lines.append(
        f"INSERT INTO {VERSION_TABLE} (table_name, version, applied_at) "
        f"VALUES ('{check_table_name(table)}', {len(migrations)}, {now}) "
        f"ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version;")
    return "\n".join(lines) + "\n"
