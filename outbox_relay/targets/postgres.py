"""PostgreSQL (RDS for PostgreSQL, PgBouncer in transaction mode, Citus): the real deployment.

A batch is COPYed straight into its tables; where a row is there already, through a temporary table
and INSERT … SELECT … ON CONFLICT DO NOTHING, all inside one transaction, so nothing outlives it
(PgBouncer-safe).
"""

import functools
import io
import re
import urllib.parse

from ..errors import RowRejected, StatementTimeout, TableMissing, TargetUnavailable
from ..logs import mask_url
from ..schema import target as schema
from .base import PooledTarget, unfilled_column
from .partitions import MonthlyLayout, PlainLayout
from .postgres_read import PostgresReadSide, like_escape

# SQLSTATE classes about the data in the rows: retrying the same rows cannot help.
# 22 data exception (bad value, NUL byte, too long), 23 integrity constraint,
# 54 program limit exceeded (e.g. an index row too large for a huge text).
ROW_ERROR_CLASSES = ("22", "23", "54")
# COPY reads its input in chunks of this many characters; psycopg2's default (8 KiB) meant ~100
# calls back into Python a batch, each waiting for the GIL while the relay's other thread encodes
# the next batch.
COPY_CHUNK = 1 << 20


class PostgresTarget(PostgresReadSide, PooledTarget):
    name = "postgresql"
    title = "PostgreSQL"
    param = "%s"
    types = {**PooledTarget.types, "json": "jsonb", "text": "text", "time": "timestamptz", "now": "now()",
             "empty": " DEFAULT ''"}
    several_statements = True
    layouts = {"none": PlainLayout, "month": MonthlyLayout}

    @classmethod
    def connect_args(cls, url):
        """Unknown query parameters pass through to libpq (sslmode, sslrootcert …)."""
        parts = urllib.parse.urlsplit(url)
        kwargs = {
            "database": urllib.parse.unquote(parts.path.lstrip("/")) or "postgres",
            "user": urllib.parse.unquote(parts.username) if parts.username else None,
            "password": urllib.parse.unquote(parts.password) if parts.password else None,
            "host": parts.hostname,
            "port": parts.port,
        }
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.update(urllib.parse.parse_qsl(parts.query))
        return kwargs

    def open_database(self, kwargs, create):
        from playhouse.pool import PooledPostgresqlDatabase
        kwargs.setdefault("connect_timeout", self.connect_timeout)
        kwargs.setdefault("application_name", "outbox-relay")
        # Our rows are Unicode: never let psycopg2 encode them in a non-UTF8 database's encoding
        # (a UnicodeEncodeError inside COPY reads as transient: the queue stalled). The server
        # converts, or refuses that one row (22P05), which isolates it.
        kwargs.setdefault("client_encoding", "UTF8")
        # A dead peer is noticed in about a minute, not in TCP's two hours.
        kwargs.setdefault("keepalives", 1)
        kwargs.setdefault("keepalives_idle", 30)
        kwargs.setdefault("keepalives_interval", 10)
        kwargs.setdefault("keepalives_count", 3)
        kwargs.setdefault("tcp_user_timeout", (self.statement_timeout + 30) * 1000)
        database = kwargs.pop("database")
        # No `options=-c statement_timeout`: PgBouncer refuses unknown startup parameters. The
        # timeout is SET LOCAL inside each write transaction instead.
        return PooledPostgresqlDatabase(
            database, max_connections=self.pool_size, stale_timeout=300, timeout=self.connect_timeout,
            autoconnect=False, autorollback=False, **kwargs)

    def classify_driver_error(self, exc, text):
        sqlstate = getattr(exc, "pgcode", None)
        if not sqlstate:
            return None
        text = f"{text} (SQLSTATE {sqlstate})" if self.error_detail else _reason(exc.diag, sqlstate, text)
        # A batch may go through a temporary copy of a table: name the real one.
        for table in (schema.MESSAGES, schema.EVENTS):
            staging, name = f"outbox_relay_{table.key}_batch", self.name_of(table)
            text = text.replace(f'"{staging}"', self.quote(name)).replace(staging, name)
        column = getattr(getattr(exc, "diag", None), "column_name", None)
        if sqlstate == "23502" and column not in schema.TARGET_COLUMNS + schema.EVENT_COLUMNS:
            return TargetUnavailable(unfilled_column(self.table, column, text), sqlstate)
        if sqlstate[:2] in ROW_ERROR_CLASSES:
            return RowRejected(text, sqlstate)
        if sqlstate == "57014":  # query_canceled: our SET LOCAL statement_timeout (or a DBA's cancel)
            return StatementTimeout(text, sqlstate)
        if sqlstate == "42P01":  # undefined_table
            return TableMissing(text, sqlstate)
        # 08 connection, 53 resources, 57 operator intervention (shutdown, statement timeout),
        # 40 serialization/deadlock, and everything else (42 undefined table, 28 bad password,
        # …): the rows are fine, the target is not; wait it out.
        return TargetUnavailable(text, sqlstate)

    def begin_sql(self, write):
        # One round trip. The statement timeout is per transaction (PgBouncer refuses it as a
        # startup parameter). The outbox marks rows delivered (and prunes them) once COMMIT returns,
        # so the commit must be durable: with synchronous_commit = off on the server, role or
        # database, a server crash right after would lose them. Only `off` is raised; the stronger
        # settings (remote_write, remote_apply) are kept.
        return (f"BEGIN; SET LOCAL statement_timeout = {int(self.statement_timeout * 1000)};"
                " SELECT set_config('synchronous_commit', 'on', true)"
                " WHERE current_setting('synchronous_commit') = 'off'")

    def clean_values(self, table, values):
        # PostgreSQL cannot store U+0000 in text or jsonb: such a message used to go dead forever.
        # It becomes U+FFFD (the replacement character), in the text and inside the JSON columns.
        json_at = _json_positions(table)
        return tuple(_without_nul(v, i in json_at) if isinstance(v, str) else v for i, v in enumerate(values))

    def encode_values(self, table, values):
        return "\t".join(copy_field(v) for v in values) + "\n"

    def insert_rows(self, tx, table, lines):
        """COPY straight into the table: re-sends are rare (a crash between the target's commit and
        the outbox's mark), so the fast path is the plain COPY a DBA would run, in a savepoint. A
        row already there (a unique violation: its key, or the fact an event states) rolls back to
        it and the rows go through a temporary table and INSERT … ON CONFLICT DO NOTHING, which
        skips it. Nothing outlives the transaction (ON COMMIT DROP), so this works through PgBouncer
        too. The savepoint goes out with the COPY (and with the transaction's opening statements)."""
        cols, data, quoted = ", ".join(table.written), "".join(lines), self.quote(self.name_of(table))
        savepoint = f"outbox_relay_{table.key}"
        try:
            with tx.conn.cursor() as cur:
                cur.copy_expert(tx.with_prefix(f"SAVEPOINT {savepoint}; COPY {quoted} ({cols}) FROM STDIN"),
                                io.StringIO(data), size=COPY_CHUNK)
            return len(lines)
        except Exception as e:
            if getattr(e, "pgcode", None) != "23505":
                raise
        tx.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        staging = f"outbox_relay_{table.key}_batch"
        tx.execute(f"CREATE TEMP TABLE {staging} (LIKE {quoted} INCLUDING DEFAULTS) ON COMMIT DROP")
        with tx.conn.cursor() as cur:
            cur.copy_expert(f"COPY {staging} ({cols}) FROM STDIN", io.StringIO(data), size=COPY_CHUNK)
        if table is not schema.MESSAGES:
            tx.execute(f"INSERT INTO {quoted} ({cols}) SELECT {cols} FROM {staging} ON CONFLICT DO NOTHING")
            return tx.rowcount
        # A message already there gets the gaps filled. RETURNING names inserted and filled rows
        # alike; the rows new are those the table did not hold before (the statement's snapshot).
        key, old, new = table.key, (lambda c: f"m.{c}"), (lambda c: f"excluded.{c}")
        sets = ", ".join(f"{c} = {expr}" for c, expr in self.gap_fills(old, new))
        return tx.value(f"WITH written AS (INSERT INTO {quoted} AS m ({cols}) SELECT {cols} FROM {staging}"
                        f" ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {self.gap_found(old, new)}"
                        f" RETURNING m.{key}) SELECT count(*) FROM written w"
                        f" WHERE NOT EXISTS (SELECT 1 FROM {quoted} o WHERE o.{key} = w.{key})")

    def fill_gaps(self, tx, lines):
        """Copies (COPY lines) of messages whose rows are there already: each row gets what it lacks from
        its copy (gap_fills), nothing else; a copy that knows no more changes nothing. A partitioned
        table's way, where the keys table, not a unique index, says a message is there."""
        table, staging = schema.MESSAGES, "outbox_relay_gap_batch"
        cols, quoted = ", ".join(table.written), self.quote(self.name_of(table))
        tx.execute(f"CREATE TEMP TABLE {staging} (LIKE {quoted} INCLUDING DEFAULTS) ON COMMIT DROP")
        with tx.conn.cursor() as cur:
            cur.copy_expert(f"COPY {staging} ({cols}) FROM STDIN", io.StringIO("".join(lines)), size=COPY_CHUNK)
        old, new = (lambda c: f"m.{c}"), (lambda c: f"s.{c}")
        sets = ", ".join(f"{c} = {expr}" for c, expr in self.gap_fills(old, new))
        tx.execute(f"UPDATE {quoted} AS m SET {sets} FROM {staging} AS s"
                   f" WHERE m.{table.key} = s.{table.key} AND {self.gap_found(old, new)}")

    def id_list(self, column, ids):
        return f"{column} = ANY(%s)", [list(ids)]

    def ddl_lock(self, tx):
        tx.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("outbox-relay:" + self.table,))

    def table_exists(self, tx, name):
        # Quoted as the DDL quotes it: to_regclass folds an unquoted name to lower case.
        return tx.value("SELECT to_regclass(%s) IS NOT NULL", (self.quote(name),))

    def table_columns(self, tx):
        schema_name, _, name = self.table.rpartition(".")
        rows = tx.execute("SELECT column_name, is_nullable = 'YES', column_default IS NOT NULL"
                          " FROM information_schema.columns WHERE table_name = %s"
                          " AND table_schema = coalesce(%s, current_schema())", (name, schema_name or None))
        return {n: (nullable, has_default) for n, nullable, has_default in rows}

    def server_info(self, tx):
        (version, user, max_conn, reserved, in_use, role_limit, role_in_use, ours), = tx.execute(
            "SELECT current_setting('server_version'), current_user,"
            " current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
            " (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),"
            " (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user),"
            " (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'outbox-relay')")
        return dict(server_version=version, user=user, max_connections=max_conn,
                    reserved_connections=reserved, connections_in_use=in_use,
                    role_connection_limit=None if role_limit < 0 else role_limit,
                    role_connections_in_use=role_in_use, relay_connections=ours, pool_size=self.pool_size)

    def contains(self, column, keyword):
        return f"{column} ILIKE %s ESCAPE '\\'", "%" + like_escape(keyword) + "%"

    @classmethod
    def day_of(cls, column):
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    @classmethod
    def minute_of(cls, column):
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"

    def read_layout(self, tx):
        # relkind 'p': a partitioned table.
        kind = tx.value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (self.quoted,))
        wanted = MonthlyLayout if kind == "p" else PlainLayout
        return self.layout if type(self.layout) is wanted else wanted()

    def stream_rows(self, tx, sql, params, size):
        # A server-side cursor by DECLARE/FETCH: psycopg2's named cursors refuse a connection in
        # autocommit mode (peewee's), even inside our BEGIN; its withhold=True would copy the whole
        # result on the server at COMMIT.
        tx.execute(f"DECLARE outbox_relay_stream NO SCROLL CURSOR FOR {sql}", params)
        while rows := tx.execute(f"FETCH FORWARD {int(size)} FROM outbox_relay_stream"):
            yield from rows


# A primary message that ends by quoting the value it refused: 'invalid input syntax for type integer: "oc_1"'.
_QUOTED_VALUE = re.compile(r': ".*"$', re.S)
# Where COPY names the column in its CONTEXT line (the line's text follows it: not kept).
_COPY_COLUMN = re.compile(r"^COPY [^,]+, line \d+, column (\w+)", re.M)


def _reason(diag, sqlstate, text):
    """An error as the server gives it, without the row: the primary message (its quoted value
    dropped) and the table, column and constraint it does not name already, never DETAIL ("Failing
    row contains (…)", "Key (message_id)=(…)") nor CONTEXT (COPY's line and values)."""
    primary = _QUOTED_VALUE.sub(': "…"', diag.message_primary or text.split(" DETAIL:")[0].split(" CONTEXT:")[0])
    copy_column = _COPY_COLUMN.search(diag.context or "")
    named = [("table", diag.table_name), ("column", diag.column_name or (copy_column and copy_column.group(1))),
             ("constraint", diag.constraint_name)]
    extra = [f"{what} {name}" for what, name in named if name and f'"{name}"' not in primary]
    return mask_url(f"{' '.join(primary.split())} ({', '.join(extra + [f'SQLSTATE {sqlstate}'])})")[:1000]


# \u0000 as JSON writes it, not preceded by another backslash (an escaped backslash + "u0000").
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


@functools.lru_cache(maxsize=None)
def _json_positions(table):
    return frozenset(table.written.index(c) for c in table.json_columns)


def _without_nul(text, is_json):
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if is_json and "\\u0000" in text:
        text = _JSON_NUL.sub(lambda m: m.group(1) + "\\ufffd", text)
    return text


def copy_field(value):
    if value is None:
        return "\\N"
    # Chained replace, not str.translate: translate with a dict looks every character up in
    # Python and took 60 us for a 1.3 KB payload, a third of the relay's CPU (bench/).
    # Backslash first, so the escapes added after it are not escaped again.
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
