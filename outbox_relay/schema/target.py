"""The target's table, versioned: every database in targets/ holds the same columns. The version lives
in `outbox_relay_schema`, one row per table; `target_migrations(db, table)[i]` takes the table from i
to i+1. The columns are declared once here and each database class maps their types to its own SQL.
`outbox-relay schema --sql` prints them for a DBA (on RDS the application user often may not run
DDL); `outbox-relay init-db` applies what is missing.

Identifiers are the only thing ever formatted into SQL here, and only after
`check_table_name` has held them to [A-Za-z_][A-Za-z0-9_]* (optionally
schema-qualified). Values always go through bind parameters.
"""

import re

from ..errors import ConfigError

_TABLE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")

# The target table, in COPY order: (column, type, constraint). Types are words of our own that each
# database class maps to its SQL type (`Target.types`); {now} is the database's clock and
# {empty} a default of '' where the database allows one on a text column. `relayed_at` is not
# written by the relay (its default is the server's clock), so it is not in TARGET_COLUMNS.
COLUMNS = (
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
    ("source", "source", "NOT NULL"),
    ("raw", "json", ""),
    ("received_at", "time", "NOT NULL"),
    ("relayed_at", "time", "NOT NULL DEFAULT {now}"),
    ("outbox_host", "host", ""),
    ("outbox_id", "bigint", ""),
)
TARGET_COLUMNS = tuple(name for name, _, _ in COLUMNS if name != "relayed_at")
JSON_COLUMNS = tuple(name for name, kind, _ in COLUMNS if kind == "json")
# (index name suffix, columns): what search and stats filter and sort on.
INDEXES = (
    ("chat_created", ("chat_id", "created_at")),
    ("created", ("created_at",)),
    ("sender_created", ("sender_id", "created_at")),
    ("relayed", ("relayed_at",)),
)

VERSION_TABLE = "outbox_relay_schema"


def check_table_name(name):
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigError(
            f"table name {name!r} is not valid: use letters, digits and _ (optionally schema.table)")
    return name


def index_name(table, suffix):
    """feishu_messages_chat_created (schema prefix dropped: an index lives in its table's schema)."""
    return check_table_name(table).split(".")[-1] + "_" + suffix


def column_lines(db):
    """The column definitions of the target table in `db`'s types (a Target class)."""
    lines = []
    for name, kind, constraint in COLUMNS:
        constraint = constraint.format(now=db.types["now"], empty=db.types["empty"])
        lines.append(f"    {name:<12} {db.types[kind]} {constraint}".rstrip())
    return lines


def target_migrations(db, table):
    """[[sql, ...], ...]: the statements that take `table` from version i to i+1 in database `db`
    (a Target class: its types, its quoting and its way of creating a table and its indexes)."""
    return [db.create_table_statements(table)]


def schema_sql(db, table):
    """The whole DDL as one script, for a DBA to read and run."""
    migrations = target_migrations(db, table)
    lines = [f"-- outbox-relay target schema for {table} ({db.name}), version {len(migrations)}"]
    lines.append(db.version_table_sql() + ";")
    for stmts in migrations:
        lines.extend(s + ";" for s in stmts)
    optional = db.search_index_statements(table)
    if optional:
        lines.append(f"-- Optional, for fast substring search ({db.search_index_note}):")
        lines.extend(s + ";" for s in optional)
    lines.append(db.record_version_sql(table, len(migrations)) + ";")
    return "\n".join(lines) + "\n"
