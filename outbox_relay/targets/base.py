"""What every target database does the same way: one unit of work per transaction through a small
pool, the batch write, the schema's version, diagnostics. Each database is a subclass that says
only what differs (huey's storage split, peewee's pool mixins): how to connect, the SQL types and
clock, the bulk insert that makes a re-sent batch harmless, and which driver errors mean what.

Driver errors are classified once, here (`classify`): the relay only ever sees TargetUnavailable
(wait and retry, rows stay pending) or RowRejected (the data itself is refused: isolate the row).
Their text goes into logs, `status` and `dead`, so it keeps the server's reason but not what a
server quotes of the row (each database says how it quotes), unless `error_detail` asks for it.

Longer than the subclasses together, on purpose: what is written here once is what they would
otherwise each write again.
"""

import collections
import contextlib
import logging
import socket
import time

from .. import jsonio
from ..errors import ConfigError, RowRejected, TableMissing, TargetError, TargetUnavailable
from ..logs import mask_url
from ..message.events import EDITED, RECALLED
from ..message.model import FILLED_IDS, gap_fills
from ..schema import target as schema
from ..timeconv import ms_to_iso, s_to_iso
from .partitions import PlainLayout

# How often (seconds) a relay whose role could not make the events table looks again for it.
EVENTS_RECHECK = 5.0
# How often (seconds) a relay reads its table's layout again (a conversion under it).
LAYOUT_RECHECK = 60.0

log = logging.getLogger(__name__)


# One encoded row: its schema.Table, the message it is (or is about), and the data the writer takes.
Encoded = collections.namedtuple("Encoded", "table message_id data")


class Tx:
    """One open transaction: `execute` a statement and get its rows (or [] for none)."""

    def __init__(self, conn, prefix=None):
        self.conn = conn  # the raw DB-API connection, for what only a driver can do (COPY)
        self.rowcount = None
        self.prefix = prefix  # statements that open the transaction, sent with the first one
        self.deferred = []  # (sql, params) to run last, before COMMIT (with it, where the driver can)

    def defer(self, sql, params=None):
        self.deferred.append((sql, params))

    def with_prefix(self, sql):
        """`sql` preceded by what is still to be sent before it (one round trip for both)."""
        prefix, self.prefix = self.prefix, None
        return sql if prefix is None else f"{prefix}; {sql}"

    def execute(self, sql, params=None):
        sql = self.with_prefix(sql)
        cur = self.conn.cursor()
        try:
            # None, not (): with any params at all psycopg2 and PyMySQL read % in the SQL as a format.
            cur.execute(sql) if params is None else cur.execute(sql, params)
            self.rowcount = cur.rowcount
            return cur.fetchall() if cur.description is not None else []
        finally:
            cur.close()

    def value(self, sql, params=None):
        """The first column of the first row, or None."""
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None


class Target:
    """One target database. Thread-safe; holds at most `pool_size` connections."""

    name = None              # "postgresql", "sqlite" …: the dialect, in `check` and `status`
    title = None             # the database as people name it, in the log and `init-db`
    param = "?"              # the driver's placeholder
    quote_char = '"'
    # Our column types (schema.COLUMNS) in this database's SQL; "now" is its clock as a column
    # default, "empty" a default of '' on a text column where it may have one.
    types = {}
    search_index_note = ""   # what the optional search index needs, for `schema --sql`
    # A driver that sends several statements in one query: a write transaction's opening statements
    # go out with its first statement, and its last ones with COMMIT. Round trips count far away.
    several_statements = False
    # The layouts (targets/partitions.py) this database can give the messages table, by the `partition`
    # setting's value.
    layouts = {"none": PlainLayout}

    def __init__(self, url, *, table="feishu_messages", pool_size=2, connect_timeout=10,
                 statement_timeout=30, host_name=None, create=True, error_detail=False, partition="none",
                 retention=None):
        self.url = url
        self.table = schema.check_table_name(table)
        self.quoted = self.quote(table)
        self.events_table = schema.events_table(table)
        self._names = {schema.MESSAGES.key: self.table, schema.EVENTS.key: self.events_table}
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.host_name = host_name or socket.gethostname()
        self.error_detail = error_detail  # keep the row's values the server quotes in its errors (debugging)
        if partition not in self.layouts:
            raise ConfigError(f"partition = {partition} is not available on {self.title}: only"
                              f" {', '.join(self.layouts)} (README: The archive at size)")
        self.partition = partition  # the layout a table made here gets; one already made keeps its own
        self.layout = PlainLayout()
        self.retention = retention  # a timeconv.Duration the relay applies once a day, or None
        self.db = self.open_database(self.connect_args(url), create)
        self._schema_checked = False
        # The events table (and the columns it fills) made, so events can be written and applied. A
        # role that may not run the DDL of a new version keeps delivering messages meanwhile, and looks
        # again now and then (EVENTS_RECHECK) for the DBA to have run it.
        self.events_ready = False
        self._events_recheck_at = 0.0
        self._layout_recheck_at = time.monotonic() + LAYOUT_RECHECK

    # -- what each database says for itself --------------------------------------------------

    @classmethod
    def connect_args(cls, url):
        """The URL -> the driver's connect keyword arguments. Raises ConfigError."""
        raise NotImplementedError

    def open_database(self, kwargs, create):
        """A peewee Database (a pool where the database has connections to pool)."""
        raise NotImplementedError

    def describe(self):
        return f"{self.title} {self.display_url} (table {self.table})"

    def classify_driver_error(self, exc, text):
        """A TargetError for what this driver's error means, or None for "transient". `text` is the
        driver's whole text: what the server quotes of the row leaves it here, unless error_detail."""
        return None

    def ddl_lock(self, tx):
        """Serialise schema changes between relays starting at once (where the database can)."""

    def ddl_unlock(self, tx):
        """Release what ddl_lock took, where it outlives the transaction (a session lock)."""

    def table_exists(self, tx, name):
        raise NotImplementedError

    def server_info(self, tx):
        """Server version and connection figures for `check`."""
        raise NotImplementedError

    def table_columns(self, tx):
        """{column: (nullable, has a default)} of our table as the database has it ({} if absent)."""
        raise NotImplementedError

    def setting_problems(self, tx):
        """What in the server's settings keeps a message the outbox accepts out of the table, each a
        sentence naming the setting to change ([] when nothing does), for `check`."""
        return []

    def contains(self, column, keyword):
        """(SQL condition, parameter): `column` holds `keyword` literally, ASCII case ignored."""
        raise NotImplementedError

    @classmethod
    def day_of(cls, column):
        """SQL for the UTC day (YYYY-MM-DD text) of a timestamp column."""
        raise NotImplementedError

    @classmethod
    def minute_of(cls, column):
        """SQL for the UTC minute ('YYYY-MM-DD HH:MM' text, as timeconv.minute_of_ms) of a timestamp column."""
        raise NotImplementedError

    @classmethod
    def search_index_statements(cls, table):
        """Optional DDL for fast substring search, applied where permitted; [] where none exists."""
        return []

    def search_plan(self, tx):
        """{column searched: how its index serves a substring search}, for indexed_contains; {}: none."""
        return {}

    def tune_search(self, tx):
        """Settings for a search's own transaction (each search reads about --limit rows per branch)."""

    def search_shape(self, tx):
        """(the row has edited_at/recalled_at/original_text, the events table is there, search_plan):
        what a search of this archive as it is can ask."""
        columns = self.table_columns(tx)
        state = all(c in columns for c in ("edited_at", "recalled_at", "original_text"))
        return state, state and self.table_exists(tx, self.events_table), self.search_plan(tx)

    def search_grams(self, tx, keyword):
        """What the n-gram index is asked for `keyword` (postgres_read), None: the index's own rule."""
        return None

    def indexed_contains(self, column, keyword, how, grams=None):
        """(SQL condition, [params]): `column` holds `keyword`, through the index `how` names (search_plan);
        `grams`: what search_grams chose to ask that index for."""
        condition, pattern = self.contains(column, keyword)
        return condition, [pattern]

    # -- the stats rollup (schema.COUNTS), kept by triggers --------------------------------------------
    # A trigger, not the relay's own statements: it runs in the transaction of whatever inserts, deletes
    # or changes rows (the relay, a backfill, a DBA's DELETE), sees only rows really inserted (a re-sent
    # batch's duplicates are not), and costs the relay no round trip.
    row_trigger_from = ""      # what a SELECT without a table needs to take a WHERE (MySQL: FROM DUAL)
    upsert_add = None          # SQL that adds the new row's n to the one already there (per database)

    @classmethod
    def rollup_dims(cls, row=""):
        """[(dim SQL, name SQL, condition SQL)] of a row: what one message adds to the rollup. `row`: the
        prefix of its columns in a trigger (NEW., OLD.)."""
        r = row
        return [(f"'{dim}'", name, condition) for dim, name, condition in (
            ("all", "''", None), ("chat", f"COALESCE({r}chat_id, '')", None),
            ("day", cls.day_of(f"{r}created_at"), None), ("sender", f"COALESCE({r}sender_id, '')", None),
            ("type", f"{r}msg_type", None), ("edited", "''", f"{r}edited_at IS NOT NULL"),
            ("recalled", "''", f"{r}recalled_at IS NOT NULL"), ("relayed", cls.minute_of(f"{r}relayed_at"), None))]

    @classmethod
    def rollup_triggers(cls, table):
        """[(trigger name, table, AFTER what, [(row prefix, sign)])]: the triggers that keep it exact;
        the events table's count its kinds."""
        events = schema.events_table(table)
        return [(schema.index_name(table, "counts_insert"), table, "INSERT", [("NEW.", 1)]),
                (schema.index_name(table, "counts_delete"), table, "DELETE", [("OLD.", -1)]),
                (schema.index_name(table, "counts_update"), table, "UPDATE", [("NEW.", 1), ("OLD.", -1)]),
                (schema.index_name(events, "counts_insert"), events, "INSERT", [("NEW.", 1)]),
                (schema.index_name(events, "counts_delete"), events, "DELETE", [("OLD.", -1)])]

    @classmethod
    def _row_deltas(cls, table, on, rows):
        """SELECT d, nm, v rows: what one trigger's row(s) change in the rollup."""
        parts = []
        for prefix, sign in rows:
            dims = cls.rollup_dims(prefix) if on == table else [("'event'", f"{prefix}kind", None)]
            parts += [f"SELECT {dim} AS d, {name} AS nm, {sign} AS v{cls.row_trigger_from}"
                      + (f" WHERE {condition}" if condition else "") for dim, name, condition in dims]
        return " UNION ALL ".join(parts)

    @classmethod
    def rollup_statements(cls, table):
        """The stats rollup table and the row triggers that keep it exact (MySQL's and SQLite's way);
        [] where a database has none. Each trigger is one statement (no DELIMITER needed)."""
        counts = cls.quote(schema.counts_table(table))
        statements = list(cls.create_table_statements(schema.counts_table(table), schema.COUNTS))
        for name, on, when, rows in cls.rollup_triggers(table):
            # GROUP BY: one upsert per rollup row, in the same (dim, name) order in every writer.
            deltas = cls._row_deltas(table, on, rows)
            body = (f"INSERT INTO {counts} (dim, name, n) SELECT d, nm, SUM(v) FROM ({deltas}) AS x"
                    f" GROUP BY d, nm HAVING SUM(v) <> 0 ORDER BY d, nm {cls.upsert_add}")
            statements.append(f"DROP TRIGGER IF EXISTS {cls.quote(name)}")
            statements.append(cls.row_trigger_sql(cls.quote(name), when, cls.quote(on), body))
        return statements

    @classmethod
    def row_trigger_sql(cls, name, when, table, body):
        return f"CREATE TRIGGER {name} AFTER {when} ON {table} FOR EACH ROW {body}"

    @classmethod
    def rollup_fill_statements(cls, table):
        """What counts the rows already there into the new rollup (writers held off meanwhile, where
        the database says how): one INSERT … SELECT per dimension (MySQL's LOCK TABLES lets a
        statement name a locked table only once)."""
        t, events = cls.quote(table), cls.quote(schema.events_table(table))
        counts = cls.quote(schema.counts_table(table))
        selects = [f"SELECT {dim}, {name}, count(*) FROM {t}" + (f" WHERE {condition}" if condition else "")
                   + " GROUP BY 1, 2" for dim, name, condition in cls.rollup_dims()]
        selects.append(f"SELECT 'event', kind, count(*) FROM {events} GROUP BY 2")
        selects.append(f"SELECT 'rollup', 'version', {schema.ROLLUP_VERSION}{cls.row_trigger_from}")
        return [f"DELETE FROM {counts}"] + [f"INSERT INTO {counts} (dim, name, n) {select}" for select in selects]

    def rollup_ready(self, tx):
        """The rollup of this release and all its triggers are there, so its counts are exact (else
        stats scan, and init-db makes it again: an earlier release's counts lack what this one reads)."""
        if not self.rollup_statements(self.table) or not self.table_exists(tx, schema.counts_table(self.table)):
            return False
        names = [name for name, *_ in self.rollup_triggers(self.table)]
        if self.count_triggers(tx, names) != len(names) or not self.rollup_readable(tx):
            return False
        return tx.value(f"SELECT n FROM {self.quote(schema.counts_table(self.table))}"
                        " WHERE dim = 'rollup' AND name = 'version'") == schema.ROLLUP_VERSION

    def rollup_readable(self, tx):
        """This role may read the rollup."""
        return True

    def count_triggers(self, tx, names):
        """How many of the triggers `names` exist (on our tables)."""
        raise NotImplementedError

    def created_value(self, ms):
        """Epoch ms -> what this database takes for a timestamp column (also search bounds)."""
        return ms_to_iso(ms)

    def received_value(self, seconds):
        return s_to_iso(seconds)

    def pool_stats(self):
        """(in use, idle) target connections, or None where nothing is pooled."""
        return None

    def _discard(self):
        """Throw the current connection away (its state is in doubt)."""
        self.db.close()

    def begin_sql(self, write):
        """What opens a transaction (a server may set its per-transaction settings in the same
        round trip: over a long link every round trip of a batch counts). `write`: a batch's."""
        return "BEGIN"

    # -- DDL in this database's words (schema/ decides what the table is) ---------------------

    @classmethod
    def quote(cls, name):
        q = cls.quote_char
        return ".".join(f"{q}{part}{q}" for part in schema.check_table_name(name).split("."))

    @classmethod
    def create_table_statements(cls, table, tdef):
        """CREATE TABLE and its indexes for a schema.Table under the name `table`."""
        t = cls.quote(table)
        unique = [f"    UNIQUE ({', '.join(columns)})" for _, columns in tdef.unique]
        statements = [f"CREATE TABLE IF NOT EXISTS {t} (\n" + ",\n".join(schema.column_lines(cls, tdef.columns)
                                                                        + unique) + "\n)"]
        for suffix, columns in tdef.indexes:
            statements.append(f"CREATE INDEX IF NOT EXISTS {cls.quote(schema.index_name(table, suffix))}"
                              f" ON {t} ({', '.join(columns)})")
        return statements

    @classmethod
    def add_column_statements(cls, table, columns):
        """ALTER TABLE … ADD COLUMN for each (name, type, constraint): nullable columns, which every
        server adds without rewriting the table (PostgreSQL, MySQL 8 and MariaDB: in place)."""
        return [f"ALTER TABLE {cls.quote(table)} ADD COLUMN {schema.column_line(cls, c)}" for c in columns]

    @classmethod
    def version_table_sql(cls):
        return (f"CREATE TABLE IF NOT EXISTS {schema.VERSION_TABLE} (table_name varchar(130) PRIMARY KEY,"
                f" version integer NOT NULL, applied_at {cls.types['time']} NOT NULL"
                f" DEFAULT {cls.types['now']})")

    @classmethod
    def upsert_version_sql(cls, table_literal, version_literal):
        return (f"INSERT INTO {schema.VERSION_TABLE} (table_name, version, applied_at) VALUES"
                f" ({table_literal}, {version_literal}, {cls.types['now']})"
                f" {cls.upsert_clause('table_name', ('version', 'applied_at'))}")

    @classmethod
    def upsert_clause(cls, key, columns):
        """What makes an INSERT overwrite `columns` of the row that already has this `key`."""
        return (f"ON CONFLICT ({key}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in columns))

    @classmethod
    def record_version_sql(cls, table, version):
        return cls.upsert_version_sql(f"'{schema.check_table_name(table)}'", str(int(version)))

    @property
    def display_url(self):
        return mask_url(self.url)

    # -- one unit of work ---------------------------------------------------------------------

    def close(self):
        try:
            self.db.close_all() if hasattr(self.db, "close_all") else self.db.close()
        except Exception:  # closing a broken connection must not hide the real error
            log.debug("closing the target failed", exc_info=True)

    def _checkout(self):
        try:
            self.db.connect(reuse_if_open=True)
            return self.db.connection()
        except Exception as e:
            raise self.classify(e) from None

    def _release(self, error=None):
        """Return the connection to the pool; throw it away when its state is in doubt."""
        if self.db.is_closed():
            return
        try:
            self._discard() if error is not None and error.transient else self.db.close()
        except Exception:
            log.debug("releasing a target connection failed", exc_info=True)
            with contextlib.suppress(Exception):
                self._discard()

    @contextlib.contextmanager
    def transaction(self, timeout=True, write=False):
        """A Tx inside BEGIN … COMMIT on a pooled connection; any failure classified, rolled back,
        and the connection released (or thrown away when its state is in doubt). timeout=False for
        schema changes, which may rightly take longer than a statement of the relay's."""
        conn = self._checkout()
        begin = self.begin_sql(write) if timeout else "BEGIN"
        tx = Tx(conn, prefix=begin if write and self.several_statements else None)
        # peewee keeps its connections in autocommit mode and opens transactions itself; we do the
        # same, explicitly, so a batch is exactly one transaction.
        try:
            if tx.prefix is None:
                tx.execute(begin)
            yield tx
            self._commit(tx)
        except Exception as e:
            error = self.classify(e)
            try:
                if tx.prefix is None:  # else nothing was sent: there is no transaction to end
                    tx.execute("ROLLBACK")
            except Exception:
                # The connection cannot even roll back: it is broken, whatever the first error said.
                error = error if error.transient else TargetUnavailable(str(error), error.sqlstate)
            self._release(error)
            raise error from None
        self._release()

    def _commit(self, tx):
        """The deferred statements, then COMMIT: in one round trip where the driver sends several
        statements at once (the events' update of a batch then costs no round trip of its own)."""
        deferred, tx.deferred = tx.deferred, []
        if deferred and self.several_statements:
            params = [p for _, ps in deferred for p in (ps or ())]
            tx.execute("; ".join(sql for sql, _ in deferred) + "; COMMIT", params or None)
            return
        for sql, params in deferred:
            tx.execute(sql, params)
        tx.execute("COMMIT")

    @contextlib.contextmanager
    def autocommit(self):
        """A Tx outside any transaction (each statement commits on its own): what PostgreSQL's CREATE
        INDEX CONCURRENTLY needs. Failures classified; the connection thrown away when in doubt."""
        conn = self._checkout()
        try:
            yield Tx(conn)
        except Exception as e:
            error = self.classify(e)
            self._release(error)
            raise error from None
        self._release()

    def run(self, fn):
        """fn(raw DB-API connection) inside one transaction; commit; classify any failure."""
        with self.transaction() as tx:
            return fn(tx.conn)

    def query(self, sql, params=None):
        """One statement in a transaction of its own -> its rows."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def classify(self, exc):
        """Any driver error -> TargetUnavailable (transient) or RowRejected (about the rows)."""
        if isinstance(exc, TargetError):
            return exc
        orig = _unwrap(exc)
        text = _error_text(orig)
        return self.classify_driver_error(orig, text) or TargetUnavailable(text)

    # -- writing ----------------------------------------------------------------------------------

    def write(self, rows):
        """rows: [(outbox_id, Message or Event, received_at_epoch_s)]. -> number of messages that were new."""
        return self.write_encoded([self.encode(*row) for row in rows])

    def encode(self, outbox_id, item, received_at):
        """One row as this database's batch writer takes it (column values; PostgreSQL: a COPY
        line) with the table it goes to, made ahead of the write: the relay encodes the next batch
        while this one is sent. Raises RowRejected for a row that cannot be written at all."""
        table = schema.EVENTS if item.outbox_kind == "event" else schema.MESSAGES
        try:
            values = (self._event_values if table is schema.EVENTS else self._values)(outbox_id, item, received_at)
            return Encoded(table, item.message_id, self.encode_values(table, self.clean_values(table, values)))
        except (ValueError, OverflowError, OSError) as e:
            # A row we cannot even turn into column values (a date outside years 1-9999, stored
            # by an older release) is about the data: isolate it. Not the raw error, which the
            # relay would retry forever with every batch stuck behind that row.
            raise RowRejected(f"cannot be written to the target: {e}") from None

    def clean_values(self, table, values):
        """What this database cannot store, made storable (PostgreSQL: U+0000)."""
        return values

    def encode_values(self, table, values):
        return values

    def write_encoded(self, encoded):
        """Rows from encode(), in one transaction: the messages, the events, and the rows of every
        message the batch names brought up to its events. -> how many messages were new."""
        if not encoded:
            return 0
        messages = [e.data for e in encoded if e.table is schema.MESSAGES]
        events = [e.data for e in encoded if e.table is schema.EVENTS]
        try:
            self.layout.before_write(self, messages)
            with self.transaction(write=True) as tx:
                new = self.layout.insert_messages(self, tx, messages) if messages else 0
                if events:
                    self.insert_rows(tx, schema.EVENTS, events)
                if self.events_ready:
                    self.apply_events(tx, list(dict.fromkeys(e.message_id for e in encoded)))
                return new
        except TableMissing:
            self._schema_checked = False  # dropped under us: the relay's next ensure_schema makes it again
            raise

    def insert_rows(self, tx, table, rows):
        """Insert encoded rows of `table` (a schema.Table), keeping the row already there for a key or
        a unique fact: a re-sent batch must be harmless. A message's row already there gets what it
        lacks from the new copy (gap_fills) in the same statement. -> how many were new."""
        raise NotImplementedError

    # One message comes several ways (webhook, OpenClaw's hook, either backfill) and some ways know
    # less: OpenClaw's hook event names no parent, root or thread, and a direct chat only by the
    # sender's ou_ id. The copy that arrives first makes the row; a later copy that knows more fills
    # those gaps, and only those: the words stay as first archived (a change of words is an edit,
    # which the events table records), and nothing a row has is overwritten.
    FILLED_IDS = FILLED_IDS

    def gap_fills(self, old, new):
        """[(column, SQL expression)] that give the row already there what it lacks and the incoming
        copy has; old(c) / new(c) name column c of the row / of the copy in this database's upsert."""
        fills = [(c, f"CASE WHEN {_blank(old(c))} AND NOT {_blank(new(c))} THEN {new(c)} ELSE {old(c)} END")
                 for c in self.FILLED_IDS]
        chat = f"CASE WHEN {self.p2p_gap(old, new)} THEN {new('chat_id')} ELSE {old('chat_id')} END"
        return fills + [("chat_id", chat)]

    def gap_found(self, old, new):
        """SQL: the row already there lacks something the incoming copy has (an UPDATE that would
        change nothing is not made: no new row version, no binlog entry)."""
        ids = [f"({_blank(old(c))} AND NOT {_blank(new(c))})" for c in self.FILLED_IDS]
        return "(" + " OR ".join(ids + [f"({self.p2p_gap(old, new)})"]) + ")"

    @staticmethod
    def p2p_gap(old, new):
        """A direct chat stored under the sender's open id (ou_…, all OpenClaw's hook knows), and a
        copy with the chat's own id (oc_…)."""
        return (f"{old('chat_type')} = 'p2p' AND substr({old('chat_id')}, 1, 3) = 'ou_'"
                f" AND substr({new('chat_id')}, 1, 3) = 'oc_'")

    def name_of(self, table):
        """The name a schema.Table has in this database (the messages table's setting, and the events
        table's beside it)."""
        return self._names[table.key]

    def apply_events(self, tx, message_ids):
        """Bring the rows of these messages up to the events the archive holds for them, whatever
        the order they came in: the latest edit by Feishu's update_time wins (the words it replaced
        first are kept in original_*), the recall (one per message) is final. Deferred to the end of
        the transaction, so a batch's round trips stay as many as without events."""
        ids_sql, ids_params = self.id_list("message_id", message_ids)
        events, t = self.quote(self.events_table), self.quoted

        def latest(kind, columns, order):
            return (f"SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY message_id"
                    f" ORDER BY happened_at {order}) AS n FROM {events} WHERE kind = '{kind}' AND {ids_sql}) x"
                    " WHERE n = 1")
        edit = latest(EDITED, "message_id, happened_at, msg_type, content, text, mentions", "DESC")
        applies = "(m.edited_at IS NULL OR m.edited_at < e.happened_at)"
        # The words first archived are saved, then the edit replaces them: one new row version where
        # the database reads every SET from the row as it was (update_from), two where it may not.
        for sql in self.update_from(t, edit, [
                [("original_text", "COALESCE(m.original_text, m.text)"),
                 ("original_content", "COALESCE(m.original_content, m.content)")],
                [("text", "e.text"), ("content", "e.content"), ("msg_type", "COALESCE(e.msg_type, m.msg_type)"),
                 ("mentions", "e.mentions"), ("edited_at", "e.happened_at")]], applies):
            tx.defer(sql, ids_params)
        recall = latest(RECALLED, "message_id, happened_at, recall_type", "ASC")
        for sql in self.update_from(t, recall, [[("recalled_at", "e.happened_at"), ("recall_type", "e.recall_type")]],
                                    "m.recalled_at IS NULL"):
            tx.defer(sql, ids_params)

    def update_from(self, table, derived, steps, where):
        """[SQL]: UPDATE `table` AS m from the rows of `derived` (AS e, joined on message_id), `steps`
        a list of [(column, SQL expression)] each of which reads the columns the steps before it set
        as they were before. PostgreSQL and SQLite evaluate every SET expression on the row as it
        was: one statement, one new row version (every index entry of the row written once, not once
        a step). MySQL says it its own way."""
        sets = ", ".join(f"{column} = {expr}" for step in steps for column, expr in step)
        return [f"UPDATE {table} AS m SET {sets} FROM ({derived}) AS e WHERE m.message_id = e.message_id AND {where}"]

    def id_list(self, column, ids):
        """(SQL condition, parameters): `column` is one of `ids`."""
        return f"{column} IN ({', '.join([self.param] * len(ids))})", list(ids)

    def _values(self, outbox_id, m, received_at):
        return (m.message_id, m.chat_id, m.chat_type, m.thread_id, m.root_id, m.parent_id,
                m.sender_id, m.sender_type, m.msg_type or "text", _json(m.content), m.text or "",
                _json(m.mentions), self.created_value(m.created_or(received_at)), m.source, _json(m.raw),
                self.received_value(received_at), self.host_name, outbox_id)

    def _event_values(self, outbox_id, e, received_at):
        """An Event's row of the events table, in schema.EVENTS.written order."""
        return (e.event_id, e.message_id, e.kind, e.fact, self.created_value(e.created_or(received_at)),
                e.chat_id, e.operator_id, e.operator_type, e.msg_type, _json(e.content), e.text,
                _json(e.mentions), e.emoji, e.recall_type, e.source, _json(e.raw),
                self.received_value(received_at), self.host_name, outbox_id)

    # -- schema -------------------------------------------------------------------------------------

    def schema_sql(self):
        return schema.schema_sql(type(self), self.table, partitioned=self.partition != "none")

    def read_layout(self, tx):
        """The layout the table has in the catalog (the one this target writes by)."""
        return self.layout

    def adopt_layout(self):
        """Read the table's layout from the catalog and write by it from now on. -> the layout."""
        with self.transaction() as tx:
            self.layout = self.read_layout(tx)
        return self.layout

    def schema_version(self):
        """The applied version of our table, 0 when absent. Raises TargetUnavailable."""
        with self.transaction() as tx:
            return self._version(tx)

    def _version(self, tx):
        """The catalog first: a table a DBA dropped is absent (version 0, or 1 for the events table
        of version 2) whatever our version row says."""
        if not self.table_exists(tx, self.table):
            return 0
        recorded = self._recorded_version(tx)
        return recorded if recorded < 2 or self.table_exists(tx, self.events_table) else 1

    def _recorded_version(self, tx):
        """What outbox_relay_schema says of our table (0: nothing), whether the table is there or not."""
        if not self.table_exists(tx, schema.VERSION_TABLE):
            return 0
        return tx.value(f"SELECT version FROM {schema.VERSION_TABLE} WHERE table_name = {self.param}",
                        (self.table,)) or 0

    def init_db(self, trigram=True, read_side=True):
        """Apply the missing migrations; then the search indexes and the stats rollup where permitted
        (read_side=False: not now, e.g. before a bulk load). -> report dict."""
        with self.transaction(timeout=False) as tx:
            # Two relays starting at once must not both run the DDL: the lock comes first, since
            # even CREATE TABLE IF NOT EXISTS fails (PostgreSQL: 23505 on pg_type) when two race.
            self.ddl_lock(tx)
            with self._ddl_unlocked_after(tx):
                tx.execute(self.version_table_sql())
                current, recorded = self._version(tx), self._recorded_version(tx)
                migrations = schema.migrations_for(type(self), self.table, existing=self.table_columns(tx),
                                                   partitioned=self.partition != "none")
                for stmts in migrations[current:]:
                    for sql in stmts:
                        tx.execute(sql)
                tx.execute(self.upsert_version_sql(self.param, self.param), (self.table, len(migrations)))
                self.layout = self.read_layout(tx)
        if recorded > current:
            log.warning("table %s was dropped: made again (version %s was on record)", self.table, recorded)
        self.layout.after_init(self)
        self.events_ready = True
        report = {"from_version": current, "version": len(migrations), "dropped": recorded > current,
                  "trigram": None, "search": {}, "rollup": None}
        if read_side:
            report.update(self.create_read_side(trigram))
        return report

    def create_read_side(self, trigram=True):
        """What makes search and stats fast (search indexes, the stats rollup), each part where this
        role may: without it they scan, slower but with the same answers. -> init_db's report keys."""
        search = self.create_search_indexes(trigram)
        for name, outcome in search.items():
            if outcome.startswith("not created"):
                log.warning("search index %s %s; search falls back to a scan there", name, outcome)
        rollup = self.create_rollup()
        if rollup and rollup.startswith("not created"):
            log.warning("stats rollup %s; stats count by scanning the table", rollup)
        trgm = [v for k, v in search.items() if k.endswith("text_trgm") or k == "pg_trgm"]
        return {"search": search, "rollup": rollup,
                "trigram": next((v for v in trgm if v != "created"), "created") if trgm else None}

    def create_search_indexes(self, trigram=True):
        """The search DDL in one step. -> {"search index": "created" | "not created: why"}, {} if none."""
        statements = self.search_index_statements(self.table)
        return {"search index": self._ddl_step(statements)} if statements else {}

    def create_rollup(self):
        """The stats rollup, made and filled where missing: "exists" | "created" | "not created: why" |
        None (this database has none)."""
        statements = self.rollup_statements(self.table)
        if not statements:
            return None
        with self.transaction() as tx:
            if self.rollup_ready(tx):
                return "exists"
        return self._ddl_step(statements + self.rollup_fill_statements(self.table))

    def _ddl_step(self, statements):
        """Statements in one transaction under the DDL lock -> "created" or "not created: why" (a role
        without the right, an extension the server lacks). A target that is down is raised."""
        try:
            with self.transaction(timeout=False) as tx:
                self.ddl_lock(tx)  # CREATE EXTENSION / CREATE TRIGGER race like CREATE TABLE
                with self._ddl_unlocked_after(tx):
                    for sql in statements:
                        tx.execute(sql)
            return "created"
        except TargetError as e:
            if e.transient and e.sqlstate is None:
                raise
            return f"not created: {e}"

    @contextlib.contextmanager
    def _ddl_unlocked_after(self, tx):
        try:
            yield
        finally:
            try:
                self.ddl_unlock(tx)
            except Exception:  # a broken connection has lost its session lock with it
                log.debug("releasing the DDL lock failed", exc_info=True)

    def ensure_schema(self):
        """Create or migrate the table when we may; when we may not, say what the DBA must run.
        Once it has succeeded (or told the DBA), later calls return False at once: the relay
        calls it before every batch, so a target that was down at start-up gets its table, and
        one whose table was dropped (write_encoded met TableMissing) gets it again."""
        if self._schema_checked:
            if not self.events_ready and time.monotonic() >= self._events_recheck_at:
                self._recheck_events()
            if time.monotonic() >= self._layout_recheck_at:
                # A table converted under a running relay (`partition --convert`) is written its new way.
                self._layout_recheck_at = time.monotonic() + LAYOUT_RECHECK
                self.adopt_layout()
            return False
        migrations = schema.target_migrations(type(self), self.table)
        try:
            # The version table may be unreadable too: a DBA who ran the DDL often grants
            # the app role only what it needs on the messages table.
            if self.schema_version() >= len(migrations):
                self.adopt_layout()
                self._checked(events_ready=True)
                return False
            self.init_db(trigram=True)
        except TargetUnavailable as e:
            if e.sqlstate and e.sqlstate.startswith("42"):
                log.warning("cannot check or create %s (%s): ask the DBA to run `outbox-relay schema --sql`",
                            self.table, e)
                with contextlib.suppress(TargetError):  # a DBA's partitioned table is written its way
                    self.adopt_layout()
                self._checked(events_ready=self._events_table_ready())
                return False
            raise
        self._checked(events_ready=True)
        return True

    def _checked(self, events_ready):
        self._schema_checked, self.events_ready = True, events_ready
        self._events_recheck_at = time.monotonic() + EVENTS_RECHECK
        if not events_ready:
            log.warning("%s is not made yet, or this role may not write it (this version's DDL and grants:"
                        " `outbox-relay schema --sql`): messages are delivered, edits, recalls and reactions"
                        " wait in the outbox until it is", self.events_table)

    def _recheck_events(self):
        self._events_recheck_at = time.monotonic() + EVENTS_RECHECK
        if self._events_table_ready():
            self.events_ready = True
            log.info("%s is ready: edits, recalls and reactions are delivered", self.events_table)

    def _events_table_ready(self):
        """Can this role write events and apply them (a role without DDL, after a DBA ran schema --sql
        and granted it)? Asked of the server with statements that touch no row: each needs the
        table, the columns and the privilege a batch will need."""
        events, columns = self.quote(self.events_table), ", ".join(schema.EVENTS.written)
        state = schema.MESSAGE_STATE[0][0]
        try:
            with self.transaction() as tx:
                tx.execute(f"INSERT INTO {events} ({columns}) SELECT {columns} FROM {events} WHERE 1 = 0")
                tx.execute(f"UPDATE {self.quoted} SET {state} = {state} WHERE 1 = 0")
            return True
        except TargetError:
            return False

    # -- reading and diagnostics ---------------------------------------------------------------------

    def ping(self):
        """Round trip in seconds. Raises TargetUnavailable."""
        with self.transaction() as tx:
            start = time.perf_counter()
            tx.execute("SELECT 1")
            return time.perf_counter() - start

    def check(self):
        """Reachability, server version, latency, connections in use vs the server's and the role's limit."""
        latency = min(self.ping() for _ in range(3))
        result = {"dialect": self.name, "latency_ms": round(latency * 1000, 2), **self.connections()}
        try:
            result["schema_version"] = self.schema_version()
            result["table_problems"] = self.table_problems()
            with self.transaction() as tx:
                result["setting_problems"] = self.setting_problems(tx)
        except TargetError as e:
            result["schema_version"] = f"unknown: {e}"
        result["table"] = self.table
        try:
            result["read_problems"] = self.read_problems()
        except TargetError as e:
            result["read_problems"] = [f"unknown: {e}"]
        return result

    # What a keyword search that no index serves costs, per 100,000 rows, measured (README): in `check`.
    scan_ms_per_100k = None

    def estimated_rows(self, tx):
        """The table's row count as the server's statistics have it (no scan)."""
        return tx.value(f"SELECT count(*) FROM {self.quoted}")

    def read_problems(self):
        """What makes search or stats scan the table here, each a sentence with what it costs and the fix."""
        problems = []
        with self.transaction() as tx:
            if not self.table_exists(tx, self.table):
                return []
            rows = self.estimated_rows(tx) or 0
            plan = self.search_plan(tx)
            rollup = self.rollup_ready(tx)
        cost = (f" (about {rows * self.scan_ms_per_100k / 100_000 / 1000:.1f} s at its {rows:,} rows)"
                if self.scan_ms_per_100k else "")
        if self.search_index_statements(self.table) and "text" not in plan:
            problems.append(f"no n-gram search index: a keyword that matches few messages scans the table{cost};"
                            " `init-db` makes it where the role may, else ask the DBA to run"
                            " `outbox-relay schema --sql --search`")
        elif not self.search_index_statements(self.table) and self.scan_ms_per_100k:
            problems.append(f"{self.title} has no index for substring search: a keyword that matches few messages"
                            f" scans the table{cost}; --chat, --sender, --type and --since narrow it through their"
                            " indexes (README: Search on MySQL / MariaDB)")
        if self.rollup_statements(self.table) and not rollup:
            problems.append("no stats rollup of this release (or a trigger of it is missing): `stats` counts by"
                            " scanning the table; `init-db` makes it where the role may, else"
                            " `outbox-relay schema --sql --search`")
        return problems

    def connections(self):
        """server_info() in a transaction of its own: what `stats` shows of the connections."""
        with self.transaction() as tx:
            return self.server_info(tx)

    def table_problems(self):
        """What stops the relay writing into the table as it is now (a DBA's change, a table made by
        hand): columns we write that it lacks, NOT NULL columns we do not fill, the table itself
        dropped. [] when it is fine, None when there is no table yet (the relay creates it where
        it may)."""
        with self.transaction() as tx:
            columns = self.table_columns(tx)
            recorded = 0 if columns else self._recorded_version(tx)
            events = bool(columns) and self.table_exists(tx, self.events_table)
        if recorded:
            return [f"table {self.table} does not exist, though outbox-relay made it (version {recorded} is on"
                    " record in outbox_relay_schema): it was dropped; `init-db`, or a running relay, makes it"
                    " again where the role may"]
        if not columns:
            return None
        needed = schema.TARGET_COLUMNS + tuple(c for c, _, _ in schema.MESSAGE_STATE)
        problems = [f"table {self.table} lacks column {c}" for c in needed if c not in columns]
        if not events:
            problems.append(f"table {self.events_table} (edits, recalls, reactions) does not exist")
        problems += [unfilled_column(self.table, c) for c, (nullable, has_default) in columns.items()
                     if c not in needed and c != "relayed_at" and not nullable and not has_default]
        return problems

    def count(self):
        return self.query(f"SELECT count(*) FROM {self.quoted}")[0][0]

    def held(self, items):
        """The keys of `items` (Messages, Events) the archive holds already: a message by its id, an
        event by the fact it states (a recall the webhook brought and the same recall a backfill
        found are one)."""
        messages = [i for i in items if i.outbox_kind == "message"]
        events = [i for i in items if i.outbox_kind != "message"]
        rows = self._existing_rows([m.message_id for m in messages]) if messages else {}
        # A message whose row lacks what this copy knows is not held: the copy goes out, and the
        # target's upsert fills the row (gap_fills).
        held = {m.message_id for m in messages if m.message_id in rows and not gap_fills(rows[m.message_id], m)}
        if events:
            facts = self._existing_facts({e.message_id for e in events})
            held.update(e.key for e in events if (e.message_id, e.fact) in facts)
        return held

    def _existing_facts(self, message_ids):
        return {tuple(row) for row in self._in_chunks(
            f"SELECT message_id, fact FROM {self.quote(self.events_table)} WHERE message_id IN ({{marks}})",
            list(message_ids))}

    def _in_chunks(self, sql, values, size=500):
        """The rows of `sql` ({marks}: a chunk of `values` as parameters), over all of `values`."""
        rows = []
        with self.transaction() as tx:
            for start in range(0, len(values), size):
                chunk = values[start:start + size]
                rows += tx.execute(sql.format(marks=", ".join([self.param] * len(chunk))), chunk)
        return rows

    def _existing_rows(self, message_ids):
        """{message_id: {chat_id, chat_type, parent_id, root_id, thread_id}} of the rows already here."""
        columns = ("message_id", "chat_id", "chat_type", *FILLED_IDS)
        return {row[0]: dict(zip(columns, row)) for row in self._in_chunks(
            f"SELECT {', '.join(columns)} FROM {self.quoted} WHERE message_id IN ({{marks}})",
            list(dict.fromkeys(message_ids)))}

    def existing_ids(self, message_ids):
        """The subset of `message_ids` already in the target table (backfills skip those)."""
        return {row[0] for row in self._in_chunks(f"SELECT message_id FROM {self.quoted} WHERE message_id IN"
                                                  " ({marks})", list(dict.fromkeys(message_ids)))}

    def chat_ids(self):
        """Every chat_id the target holds a message of (backfills read these chats too)."""
        rows = self.query(f"SELECT DISTINCT chat_id FROM {self.quoted} WHERE chat_id IS NOT NULL")
        return sorted(r[0] for r in rows)

    def recent_chats(self, since_ms):
        """{chat_id: messages created at or after since_ms}: the chats the reconciler checks, and how busy."""
        rows = self.query(f"SELECT chat_id, count(*) FROM {self.quoted} WHERE created_at >= {self.param}"
                          " AND chat_id IS NOT NULL GROUP BY chat_id", (self.created_value(since_ms),))
        return {chat_id: n for chat_id, n in rows}

    def delete(self, message_id):
        """Remove one row (the end-to-end test's own message). Raises TargetError where not allowed."""
        self.query(f"DELETE FROM {self.quoted} WHERE message_id = {self.param}", (message_id,))

    # -- reading in constant memory (export) -----------------------------------------------------

    @contextlib.contextmanager
    def streamed(self, sql, params=None, size=1000):
        """The rows of one query as an iterator that holds `size` of them at a time (a server-side
        cursor where the database has one), inside one transaction: a consistent snapshot where the
        database gives one. No statement timeout: a whole archive may rightly take longer."""
        failed = None
        with self.transaction(timeout=False) as tx:
            rows = self.stream_rows(tx, sql, params, size)
            try:
                yield rows
            except OSError as e:  # the reader's side (a pipe closed, a disk full), not the database's
                failed = e
            finally:
                rows.close()  # its cursor, while the connection is still ours
        if failed is not None:
            raise failed

    def stream_cursor(self, tx):
        """A cursor that steps through a result as it is read (SQLite's own does)."""
        return tx.conn.cursor()

    def stream_rows(self, tx, sql, params, size):
        cur = self.stream_cursor(tx)
        try:
            cur.execute(sql) if params is None else cur.execute(sql, params)
            while rows := cur.fetchmany(size):
                yield from rows
        finally:
            cur.close()


class PooledTarget(Target):
    """A database server reached through peewee's pool (peewee's pool mixins are the model): a
    connection in doubt is thrown away, not returned."""

    # What the servers name alike; each says its JSON, text, time and clock.
    types = {"id": "varchar(128)", "kind": "varchar(64)", "source": "varchar(32)", "host": "varchar(255)",
             "bigint": "bigint", "fact": "varchar(255)"}

    def _discard(self):
        self.db.manual_close()

    def pool_stats(self):
        # peewee's pool keeps these as a dict and a heap; len() of either is atomic.
        return len(self.db._in_use), len(self.db._connections)


def unfilled_column(table, column, error=None):
    """The sentence for a column a DBA added that makes every insert fail."""
    return (f"table {table} has a NOT NULL column {column} without a default, which outbox-relay does not"
            f" fill: every message is refused (add a default or drop NOT NULL)"
            + (f": {error}" if error else ""))


def _blank(sql):
    return f"({sql} IS NULL OR {sql} = '')"


def _json(value):
    return None if value is None else jsonio.dumps(value)


def _unwrap(exc):
    """peewee wraps driver errors (its ExceptionWrapper): the driver's own error says more. peewee
    keeps it as `orig` (connect errors), not as the cause."""
    import peewee
    seen = set()
    while isinstance(exc, peewee.PeeweeException) and id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or getattr(exc, "orig", None)
        if inner is None:
            break
        exc = inner
    return exc


def _error_text(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return mask_url(text)[:1000]
