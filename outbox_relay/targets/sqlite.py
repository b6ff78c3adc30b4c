"""A local SQLite archive: the embedded default, so `outbox-relay run` works on a fresh machine
with no database server. The same table and the same answers as the servers give."""

import json
import os
import sqlite3

from ..errors import ConfigError, RowRejected, TableMissing, TargetUnavailable
from ..schema import target as schema
from .base import Target

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"


class SqliteTarget(Target):
    name = "sqlite"
    title = "SQLite archive"
    param = "?"
    types = {"id": "TEXT", "kind": "TEXT", "fact": "TEXT", "source": "TEXT", "host": "TEXT", "json": "TEXT",
             "text": "TEXT",
             "time": "TEXT", "bigint": "INTEGER", "now": _NOW, "empty": " DEFAULT ''"}

    @classmethod
    def connect_args(cls, url):
        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy and peewee read them.
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        if not path or path == ":memory:":
            raise ConfigError("a sqlite target needs a file path, e.g. sqlite:///data/archive.db")
        return {"database": path}

    def open_database(self, kwargs, create):
        import peewee
        path = kwargs["database"]
        # Reading commands (status, search …) pass create=False: a mistyped path must read as
        # "does not exist", not as a new empty archive that looks healthy.
        self._must_exist = None if create else path
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return peewee.SqliteDatabase(
            path, autoconnect=False, timeout=self.connect_timeout,
            # synchronous=full: the outbox prunes what this commit acknowledged, so the commit
            # must survive power loss (WAL + normal may roll it back), as the outbox's does.
            pragmas={"journal_mode": "wal", "synchronous": "full",
                     "busy_timeout": self.connect_timeout * 1000})

    @property
    def path(self):
        return os.path.abspath(self.db.database)

    def describe(self):
        return f"{self.title} {self.path} (table {self.table})"  # the file itself, not the URL

    def _checkout(self):
        if self._must_exist and not os.path.exists(self._must_exist):
            raise TargetUnavailable(f"the SQLite archive {self.path} does not exist "
                                    "(nothing relayed here yet, or a wrong --target)")
        return super()._checkout()

    def classify_driver_error(self, exc, text):
        if isinstance(exc, sqlite3.IntegrityError):
            return RowRejected(text)
        if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table"):
            return TableMissing(text)
        return None

    def insert_rows(self, tx, table, rows):
        marks, quoted = ", ".join("?" * len(table.written)), self.quote(self.name_of(table))
        insert = f"INSERT INTO {quoted} ({', '.join(table.written)}) VALUES ({marks})"
        if table is not schema.MESSAGES:
            # The cursor's rowcount, not total_changes: that one also counts what triggers change.
            return tx.conn.executemany(insert + " ON CONFLICT DO NOTHING", rows).rowcount
        # total_changes would count a gap filled as a change too: the rows new are the batch's ids
        # the table did not hold before (in this write transaction, nobody else's can appear).
        ids = [row[0] for row in rows]
        held = tx.value(f"SELECT count(*) FROM {quoted} WHERE message_id IN (SELECT value FROM json_each(?))",
                        (json.dumps(ids),))
        old, new = (lambda c: f"{quoted}.{c}"), (lambda c: f"excluded.{c}")
        sets = ", ".join(f"{c} = {expr}" for c, expr in self.gap_fills(old, new))
        tx.conn.executemany(f"{insert} ON CONFLICT ({table.key}) DO UPDATE SET {sets}"
                            f" WHERE {self.gap_found(old, new)}", rows)
        return len(set(ids)) - held

    def id_list(self, column, ids):
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(ids)]

    def table_exists(self, tx, name):
        return bool(tx.value("SELECT count(*) FROM sqlite_master WHERE name = ?", (name,)))

    def table_columns(self, tx):
        rows = tx.execute(f"PRAGMA table_info({self.quoted})")
        # (cid, name, type, notnull, dflt_value, pk): an INTEGER PRIMARY KEY fills itself.
        return {r[1]: (not r[3], r[4] is not None or (r[5] and r[2].upper() == "INTEGER")) for r in rows}

    def server_info(self, tx):
        return {"server_version": "SQLite " + tx.value("SELECT sqlite_version()"), "path": self.path}

    upsert_add = "ON CONFLICT (dim, name) DO UPDATE SET n = n + excluded.n"

    @classmethod
    def row_trigger_sql(cls, name, when, table, body):
        return f"CREATE TRIGGER {name} AFTER {when} ON {table} FOR EACH ROW BEGIN {body}; END"

    def count_triggers(self, tx, names):
        return tx.value(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN"
                        f" ({', '.join('?' * len(names))})", list(names))

    def contains(self, column, keyword):
        return f"instr(lower({column}), lower(?)) > 0", keyword

    @classmethod
    def day_of(cls, column):
        return f"substr({column}, 1, 10)"

    @classmethod
    def minute_of(cls, column):
        return f"replace(substr({column}, 1, 16), 'T', ' ')"  # ISO text in UTC, as _NOW writes it
