"""The target's table, versioned: every database in targets/ holds the same columns. The version lives
in `outbox_relay_schema`, one row per table; `target_migrations(db, table)[i]` takes the table from i
to i+1. The columns are declared once here and each database class maps their types to its own SQL.
`outbox-relay schema --sql` prints them for a DBA (on RDS the application user often may not run
DDL); `outbox-relay init-db` applies what is missing.

Identifiers are the only thing ever formatted into SQL here, and only after
`check_table_name` has held them to [A-Za-z_][A-Za-z0-9_]* (optionally
schema-qualified). Values always go through bind parameters.
"""

import dataclasses
import re

from ..errors import ConfigError

_TABLE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")

# A table, in COPY order: (column, type, constraint). Types are words of our own that each database
# class maps to its SQL type (`Target.types`); {now} is the database's clock and {empty} a default of
# '' where the database allows one on a text column. Columns with a default of {now} are not written
# by the relay (relayed_at: the server's clock).
@dataclasses.dataclass(frozen=True)
class Table:
    """One of our tables: its columns, the key a re-sent row is a duplicate by, its indexes."""

    key: str
    columns: tuple
    indexes: tuple  # (name suffix, columns): what search, stats and history filter and sort on
    unique: tuple = ()  # (name suffix, columns): other facts a row is a duplicate by

    @property
    def written(self):
        """The columns the relay writes, in order."""
        return tuple(name for name, _, constraint in self.columns if "{now}" not in constraint)

    @property
    def json_columns(self):
        return tuple(name for name, kind, _ in self.columns if kind == "json")


# What every relayed row ends with: which way it came, what it was, and where and when it was relayed.
ARRIVAL = (
    ("source", "source", "NOT NULL"),
    ("raw", "json", ""),
    ("received_at", "time", "NOT NULL"),
    ("relayed_at", "time", "NOT NULL DEFAULT {now}"),
    ("outbox_host", "host", ""),
    ("outbox_id", "bigint", ""),
)
# The messages table, as version 1 made it: one row per message, as it was first archived.
MESSAGES = Table("message_id", (
    ("message_id", "id", "PRIMARY KEY"),
    ("chat_id", "id", ""),
    ("chat_type", "kind", ""),
    ("thread_id", "id", ""),
    ("root_id", "id", ""),
    ("parent_id", "id", ""),
    ("sender_id", "id", ""),
    ("sender_type", "kind", ""),
    ("msg_type", "kind", "NOT NULL"),
    ("content", "json", ""),
    ("text", "text", "NOT NULL{empty}"),
    ("mentions", "json", ""),
    ("created_at", "time", "NOT NULL"),
    *ARRIVAL,
), (
    ("chat_created", ("chat_id", "created_at")),
    ("created", ("created_at",)),
    ("sender_created", ("sender_id", "created_at")),
    ("relayed", ("relayed_at",)),
))
# What version 2 adds to a message's row: what the chat shows now. They are set from the message's
# events (targets/: the latest edit, the first recall), never by the insert; the words first
# archived move to original_text/original_content when an edit replaces them.
MESSAGE_STATE = (
    ("edited_at", "time", ""),
    ("recalled_at", "time", ""),
    ("recall_type", "kind", ""),
    ("original_text", "text", ""),
    ("original_content", "json", ""),
)
# One row per event about a message (message/events.py), append-only.
EVENTS = Table("event_id", (
    ("event_id", "id", "PRIMARY KEY"),
    ("message_id", "id", "NOT NULL"),
    ("kind", "kind", "NOT NULL"),
    ("fact", "fact", "NOT NULL"),
    ("happened_at", "time", "NOT NULL"),
    ("chat_id", "id", ""),
    ("operator_id", "id", ""),
    ("operator_type", "kind", ""),
    ("msg_type", "kind", ""),
    ("content", "json", ""),
    ("text", "text", ""),
    ("mentions", "json", ""),
    ("emoji", "kind", ""),
    ("recall_type", "kind", ""),
    *ARRIVAL,
), (
    ("message", ("message_id", "happened_at")),
    ("happened", ("happened_at",)),
    ("kind_happened", ("kind", "happened_at")),
), unique=(("fact", ("message_id", "fact")),))

# A partitioned messages table's keys (issue 22): PostgreSQL's unique indexes on a partitioned table
# must hold the partition key (created_at), and one message reaches us with different created_at
# values by different ways in; this table holds each message_id once, written in the batch's
# transaction before the rows (targets/partitions.py), so the message stays one row.
KEYS = Table("message_id", (
    ("message_id", "id", "PRIMARY KEY"),
    ("created_at", "time", "NOT NULL"),
), ())
# Chats under legal hold, and every change to a hold (who, when, why): retention keeps their rows.
HOLDS = Table("chat_id", (
    ("chat_id", "id", "PRIMARY KEY"),
    ("reason", "text", "NOT NULL"),
    ("held_by", "host", "NOT NULL"),
    ("held_at", "time", "NOT NULL"),
), ())
HOLD_AUDIT = Table("chat_id", (
    ("chat_id", "id", "NOT NULL"),
    ("action", "kind", "NOT NULL"),
    ("reason", "text", "NOT NULL"),
    ("done_by", "host", "NOT NULL"),
    ("done_at", "time", "NOT NULL DEFAULT {now}"),
), (("chat", ("chat_id", "done_at")),))
# The stats rollup beside the messages table (`stats` in constant time): how many messages there are
# in all (dim 'all'), per UTC day, chat, sender and type, kept exact by triggers in the transaction
# of every statement that inserts, deletes or retypes rows (targets/), made and filled by init-db. Each
# dim's rows are read by name: 'all', 'day' (UTC), 'chat', 'sender', 'type', 'edited', 'recalled',
# 'relayed' (the UTC minute, 'YYYY-MM-DD HH:MM'), 'event' (by kind) and 'rollup' (its version); on
# PostgreSQL each but 'day' also per month of created_at ('2026-11:chat'), which retention reads to take a
# dropped month out (targets/postgres_read.py).
# What the rollup counts changed with releases: its fill writes ROLLUP_VERSION into it (dim 'rollup'), and
# a rollup without it (an earlier release's triggers) is not read: stats scan until init-db makes it again.
# 2: the minutes rows were relayed in (dim 'relayed'), for "relayed in the last hour" without a scan, and
# (PostgreSQL) the months' own counts.
ROLLUP_VERSION = 2
COUNTS = Table("dim", (
    ("dim", "kind", "NOT NULL"),
    ("name", "id", "NOT NULL"),
    ("n", "bigint", "NOT NULL"),
), (
    ("top", ("dim", "n")),
), unique=(("dim_name", ("dim", "name")),))

COLUMNS = MESSAGES.columns
TARGET_COLUMNS = MESSAGES.written
JSON_COLUMNS = MESSAGES.json_columns
INDEXES = MESSAGES.indexes
EVENT_COLUMNS = EVENTS.written

VERSION_TABLE = "outbox_relay_schema"


def check_table_name(name):
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigError(
            f"table name {name!r} is not valid: use letters, digits and _ (optionally schema.table)")
    return name


def index_name(table, suffix):
    """feishu_messages_chat_created (schema prefix dropped: an index lives in its table's schema)."""
    return check_table_name(table).split(".")[-1] + "_" + suffix


def events_table(table):
    """The events table beside a messages table: feishu_messages -> feishu_message_events (x_messages
    -> x_message_events; any other name gets _events)."""
    schema_part, dot, name = check_table_name(table).rpartition(".")
    name = name[:-len("_messages")] + "_message_events" if name.endswith("_messages") else name + "_events"
    return check_table_name(schema_part + dot + name)


def keys_table(table):
    """feishu_messages -> feishu_messages_keys (a partitioned table's message_ids)."""
    return check_table_name(table + "_keys")


def holds_table(table):
    return check_table_name(table + "_holds")


def hold_audit_table(table):
    return check_table_name(table + "_hold_audit")


def partitioned_messages(db, table):
    """The messages table partitioned by RANGE of created_at (PostgreSQL): the key is (message_id,
    created_at), as the database requires, and message_id is kept unique by the keys table beside it.
    A DEFAULT partition takes what no month's partition does (a message dated 1970 or 2100)."""
    t = db.quote(table)
    columns = [("message_id", "id", "NOT NULL") if c[0] == "message_id" else c for c in MESSAGES.columns]
    body = ",\n".join(column_lines(db, columns) + ["    PRIMARY KEY (message_id, created_at)"])
    statements = [
        f"CREATE TABLE IF NOT EXISTS {t} (\n{body}\n) PARTITION BY RANGE (created_at)",
        f"CREATE TABLE IF NOT EXISTS {db.quote(table + '_default')} PARTITION OF {t} DEFAULT"]
    statements += db.create_table_statements(table, dataclasses.replace(MESSAGES, columns=()))[1:]
    return statements + db.create_table_statements(keys_table(table), KEYS) + one_row_guard(db, table)


def one_row_guard(db, table, keys=None):
    """A trigger that makes the database itself keep a message one row for any writer that does not write
    the keys (an older relay, a relay that has not seen the table become partitioned, a DBA's INSERT): the
    row goes in only if its message_id is new to the keys table. The relay writes the keys itself, a batch
    at a time (faster), and says so for its transaction (outbox_relay.keyed)."""
    function = db.quote(table + "_one_row")
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF current_setting('outbox_relay.keyed', true) = 'on' THEN RETURN NEW; END IF;"
        f" INSERT INTO {db.quote(keys or keys_table(table))} (message_id, created_at)"
        " VALUES (NEW.message_id, NEW.created_at) ON CONFLICT DO NOTHING;"
        " IF FOUND THEN RETURN NEW; END IF; RETURN NULL; END $$",
        f"DROP TRIGGER IF EXISTS one_row ON {db.quote(table)}",
        f"CREATE TRIGGER one_row BEFORE INSERT ON {db.quote(table)} FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]
def counts_table(table):
    """The stats rollup beside a messages table: feishu_messages -> feishu_message_counts."""
    events = events_table(table)
    return check_table_name(events[:-len("_events")] + "_counts")


def column_line(db, column):
    """One column's definition in `db`'s types (a Target class)."""
    name, kind, constraint = column
    constraint = constraint.format(now=db.types["now"], empty=db.types["empty"])
    return f"{name:<12} {db.types[kind]} {constraint}".rstrip()


def column_lines(db, columns=COLUMNS):
    return ["    " + column_line(db, c) for c in columns]


def target_migrations(db, table, existing=None):
    """[[sql, ...], ...]: the statements that take `table` from version i to i+1 in database `db`
    (a Target class: its types, its quoting and its way of creating a table and its indexes).
    `existing`: the messages table's columns now, so that a step half done before (MySQL's DDL is not
    transactional) adds only what it lacks; None: all of them (`schema --sql`)."""
    missing = [c for c in MESSAGE_STATE if existing is None or c[0] not in existing]
    return [
        db.create_table_statements(table, MESSAGES),
        db.add_column_statements(table, missing) + db.create_table_statements(events_table(table), EVENTS),
    ]


def migrations_for(db, table, existing=None, partitioned=False):
    """target_migrations(), the table made partitioned by month in the first step where `partitioned`
    (the `partition` setting, PostgreSQL); the later steps are the same for both layouts."""
    migrations = target_migrations(db, table, existing)
    return [partitioned_messages(db, table)] + migrations[1:] if partitioned else migrations


def schema_sql(db, table, partitioned=False):
    """The whole DDL as one script, for a DBA to read and run."""
    migrations = migrations_for(db, table, partitioned=partitioned)
    lines = [f"-- outbox-relay target schema for {table} ({db.name}), version {len(migrations)}"]
    lines.append(db.version_table_sql() + ";")
    for stmts in migrations:
        lines.extend(s + ";" for s in stmts)
    lines.append(db.record_version_sql(table, len(migrations)) + ";")
    lines.extend(read_side_sql(db, table))
    return "\n".join(lines) + "\n"


def read_side_sql(db, table):
    """What makes search and stats fast at any size, for a DBA: optional (without it they scan)."""
    lines = []
    optional = db.search_index_statements(table)
    if optional:
        lines.append(f"-- Optional, for fast substring search ({db.search_index_note}):")
        lines.extend(s + ";" for s in optional)
    rollup = db.rollup_statements(table)
    if rollup:
        lines.append("-- Optional, for `stats` in constant time: the rollup, its triggers, and its first count"
                     " (which holds off writers while it counts):")
        lines.extend(s + ";" for s in rollup + db.rollup_fill_statements(table))
    return lines
