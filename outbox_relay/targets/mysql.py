"""MySQL and MariaDB (RDS for MySQL, PolarDB for MySQL, a local MariaDB) through PyMySQL.

A batch is multi-row INSERT … ON DUPLICATE KEY UPDATE statements of up to 1 MiB each, all inside
one transaction, and never more than the server's max_allowed_packet (read once per connection;
MySQL 5.7's default is 4 MiB, and a DBA may set 64 KiB): a statement over it is refused with
error 1153 and the connection closed, so one too big would stop every batch behind it. A row that
cannot fit even alone goes dead when it is encoded, with its size and the server's limit.

LOAD DATA LOCAL INFILE into a staging table measured 10-20 % faster on the write alone (about 5 %
of a drain, bench/mysql_relay.py) and is not used: it stays strict only through a staging table of
LONGTEXT columns, needs `local_infile` (off by default in MySQL 8; on the client it
lets a hostile server read the relay host's files), the CREATE TEMPORARY TABLES privilege, and a file
on disk per batch. Never INSERT IGNORE: it turns data errors into warnings.

Every session runs in strict SQL mode and UTC (`init_command`), so a value the column cannot hold is
refused (the row goes dead with the server's words) instead of being truncated, and DATETIME
columns hold UTC as on the other targets.

Collations, per column: the table is utf8mb4 with `utf8mb4_bin`, so message_id and the other ids
compare exactly ('om_A' and 'om_a' are two messages). `utf8mb4_bin` is a PAD SPACE collation on
every server version, though: 'om_1' and 'om_1 ' are equal to the unique key. The duplicate clause
therefore keeps the existing row only when its id is byte-for-byte the one being written, and
otherwise sets message_id to NULL, which strict mode refuses: that row goes dead with an
explanation instead of being silently taken for a duplicate (the same guard covers a unique key a
DBA may have added on another column). Search folds case with LOWER() on both sides and compares
in `utf8mb4_bin`: literal, with ASCII (and other) case ignored, as on PostgreSQL; a `_ci`
collation would also equate accents and, in utf8mb4_general_ci/unicode_ci, every emoji.
"""

import hashlib
import os
import re
import ssl
import urllib.parse
import weakref

from ..errors import ConfigError, RowRejected, StatementTimeout, TableMissing, TargetUnavailable
from ..logs import mask_url
from ..message import MAX_MESSAGE_BYTES
from ..schema import target as schema
from ..timeconv import ms_to_datetime, s_to_datetime
from .base import PooledTarget, unfilled_column

SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
URL_OPTIONS = ("ssl_mode", "ssl_ca", "ssl_cert", "ssl_key", "charset")

# SQLSTATE classes about the data (22 data exception, 23 integrity constraint), and the errnos
# about the row that some servers label otherwise (HY000, or 08S01 for the packet size).
ROW_SQLSTATE_CLASSES = ("22", "23")
ROW_ERRNOS = {
    1048,  # column cannot be null (also: our duplicate guard, see the module docstring)
    1062,  # duplicate entry on a unique key other than message_id
    1153,  # a statement bigger than max_allowed_packet: a limit lowered under us (we cut INSERTs by it)
    1264, 1690,  # out of range
    1265, 1406,  # data truncated / too long for the column
    1292, 1366, 1367, 1411,  # incorrect value (datetime, string for the charset, …)
    1300,  # invalid character string
    1451, 1452, 1216, 1217,  # foreign keys
    3140,  # invalid JSON text (MySQL's native JSON)
    3819, 4025,  # CHECK constraint (MySQL, MariaDB)
}
# A statement past its time: MariaDB's max_statement_time, which every session sets (1969), and
# MySQL's max_execution_time (3024, SELECTs only): transient, and the relay cuts its batches.
STATEMENT_TIMEOUT_ERRNOS = {1969, 3024}
# Everything else is transient, the rows stay pending: lost connection / gone away (2006, 2013,
# 2003, 2055), too many connections (1040, 1203), lock wait timeout (1205), deadlock (1213),
# read-only after a failover (1290, 1792), shutdown (1053), and schema or grant problems (1146,
# 1054, 1142, …) the DBA must fix: the rows themselves are fine.


class MySQLTarget(PooledTarget):
    name = "mysql"
    title = "MySQL"
    param = "%s"
    quote_char = "`"
    # `json` is MySQL's native JSON and MariaDB's alias for LONGTEXT with a JSON_VALID check: the
    # same DDL works on both. No DEFAULT '' on text: MySQL < 8.0.13 allows none on TEXT columns,
    # and the relay always writes the column.
    types = {**PooledTarget.types, "json": "json", "text": "longtext", "time": "datetime(3)",
             "now": "CURRENT_TIMESTAMP(3)", "empty": ""}

    @classmethod
    def connect_args(cls, url):
        """mysql://user:pass@host:3306/db?ssl_mode=REQUIRED (ssl_ca, ssl_cert, ssl_key). Raises ConfigError."""
        parts = urllib.parse.urlsplit(url)
        database = urllib.parse.unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigError("a mysql target needs a database name: mysql://user:password@host:3306/DATABASE")
        options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - set(URL_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} in the mysql URL (known: {', '.join(URL_OPTIONS)})")
        if options.pop("charset", "utf8mb4").lower() != "utf8mb4":
            raise ConfigError("the mysql connection charset is always utf8mb4 (every emoji and CJK character);"
                              " remove charset= from the URL")
        kwargs = {"host": parts.hostname or "localhost", "port": parts.port or 3306, "database": database,
                  "user": urllib.parse.unquote(parts.username) if parts.username else None,
                  "password": urllib.parse.unquote(parts.password) if parts.password else None}
        kwargs.update(_tls_options(options))
        return {k: v for k, v in kwargs.items() if v is not None}

    def open_database(self, kwargs, create):
        try:
            import pymysql  # noqa: F401 - imported here, so only a mysql:// target loads the driver
        except ImportError:
            raise ConfigError("a mysql:// target needs PyMySQL: pip install 'outbox-relay[mysql]'") from None
        from playhouse.pool import PooledMySQLDatabase
        # Each connection's max_allowed_packet (_max_packet), and the last one read, by which
        # encode_values refuses a row too big before it is sent.
        self._packets, self.max_packet = weakref.WeakKeyDictionary(), None
        database = kwargs.pop("database")
        kwargs.update(_ssl_arguments(kwargs.pop("ssl_mode"), kwargs.pop("ssl_ca", None),
                                     kwargs.pop("ssl_cert", None), kwargs.pop("ssl_key", None)))
        t = self.statement_timeout
        # Per session, so a server or role default cannot weaken it: strict mode (refuse, never
        # truncate), UTC for CURRENT_TIMESTAMP, and the statement timeout as the lock waits (row and
        # metadata locks: an INSERT behind a DBA's ALTER) plus MariaDB's max_statement_time (a
        # comment that only MariaDB executes; MySQL limits only SELECTs that way).
        kwargs["init_command"] = (f"SET time_zone = '+00:00', sql_mode = '{SQL_MODE}',"
                                  f" innodb_lock_wait_timeout = {t}, lock_wait_timeout = {t}"
                                  f" /*M!100108 , max_statement_time = {t} */")
        # The socket timeout is the backstop for a dead peer or a MySQL statement past the above
        # (PostgreSQL's tcp_user_timeout): the connection is then thrown away, the rows stay pending.
        kwargs.update(charset="utf8mb4", connect_timeout=self.connect_timeout, read_timeout=t + 30,
                      write_timeout=t + 30, program_name="outbox-relay")
        return PooledMySQLDatabase(
            database, max_connections=self.pool_size, stale_timeout=300, timeout=self.connect_timeout,
            autoconnect=False, autorollback=False, **kwargs)

    def created_value(self, ms):
        return _datetime_text(ms_to_datetime(ms))

    def received_value(self, seconds):
        return _datetime_text(s_to_datetime(seconds))

    # -- errors ------------------------------------------------------------------------------------

    def classify_driver_error(self, exc, text):
        if not type(exc).__module__.startswith("pymysql") or len(exc.args) < 2 or not isinstance(exc.args[0], int):
            return None
        errno, message = exc.args[0], " ".join(str(exc.args[1]).split()) or type(exc).__name__
        if not self.error_detail:
            message = _without_values(message)
        state = getattr(exc, "sqlstate", None)
        if errno in (1142, 1143) and message.startswith("UPDATE command denied"):
            message += (" (INSERT … ON DUPLICATE KEY UPDATE, which makes a re-sent batch harmless, needs it:"
                        f" GRANT SELECT, INSERT, UPDATE ON {self.table} and on {self.events_table} TO the relay's"
                        " user: a message's row is also brought up to its edits and recall)")
        if errno == 1048 and "'message_id'" in message:
            message += (" (another row's message_id is equal to this one in the table's collation but not"
                        " identical, e.g. the same id without trailing spaces, or this row collides with"
                        " it on another unique key)")
        text = mask_url(f"{message} (MySQL error {errno}{f', SQLSTATE {state}' if state else ''})")[:1000]
        code = state if state and state != "HY000" else f"mysql:{errno}"
        if errno == 1364:  # Field 'x' doesn't have a default value: a column the DBA added
            return TargetUnavailable(unfilled_column(self.table, message.split("'")[1], text), code)
        if errno in ROW_ERRNOS or (state or "")[:2] in ROW_SQLSTATE_CLASSES:
            return RowRejected(text, code)
        if errno in STATEMENT_TIMEOUT_ERRNOS:
            return StatementTimeout(text, code)
        if errno == 1146:  # Table '…' doesn't exist
            return TableMissing(text, code)
        return TargetUnavailable(text, code)

    # -- writing -------------------------------------------------------------------------------------

    def encode_values(self, table, values):
        # Bytes, as they go on the wire: statements are measured against max_allowed_packet in bytes
        # (400 Chinese characters are 1,200), and PyMySQL sends bytes as they are.
        row = ("(" + ", ".join(map(sql_literal, values)) + ")").encode("utf-8")
        if self.max_packet is not None:  # known once a connection has said it: refused here, not bisected
            self._check_fits(table, row, self.max_packet)
        return row

    def insert_rows(self, tx, table, rows):
        limit = self._max_packet(tx.conn)
        for row in rows:  # rows encoded before the limit was known, or with another connection's
            self._check_fits(table, row, limit)
        head, tail, new = self._insert_head(table), self._insert_tail(table), 0
        with tx.conn.cursor() as cur:
            for sql in _statements(head, tail, rows, min(MAX_STATEMENT_BYTES, limit - 1)):
                cur.execute(sql)  # no parameters: PyMySQL leaves the bytes (and any %) alone
                new += _inserted(cur)
        return new

    def _insert_tail(self, table):
        """INSERT_TAILS[key], and for a message the gaps a later copy fills (base.gap_fills): in ON
        DUPLICATE KEY UPDATE a bare column is the row's, VALUES(c) the incoming copy's. Assignments run
        left to right, each seeing the ones before: every fill reads only its own column and
        chat_type, which none sets."""
        tail = INSERT_TAILS[table.key]
        if table is not schema.MESSAGES:
            return tail
        fills = self.gap_fills(lambda c: c, lambda c: f"VALUES({c})")
        return tail + "".join(f", {c} = {expr}" for c, expr in fills).encode()

    def _insert_head(self, table):
        return f"INSERT INTO {self.quote(self.name_of(table))} ({', '.join(table.written)}) VALUES ".encode()

    def update_from(self, table, derived, steps, where):
        # MySQL's multi-table UPDATE: a JOIN, the columns it sets named with their table, and a
        # statement a step, since MySQL does not promise the order of its assignments (an expression
        # may read a column another assignment of the statement has already set).
        return [f"UPDATE {table} AS m JOIN ({derived}) AS e ON m.message_id = e.message_id"
                f" SET {', '.join(f'm.{column} = {expr}' for column, expr in step)} WHERE {where}" for step in steps]

    def _checkout(self):
        # Asked as a connection is first used, so before the relay's first batch is encoded
        # (ensure_schema comes first) and a row too big is refused there, not found by bisecting.
        conn = super()._checkout()
        try:
            self._max_packet(conn)
        except Exception as e:
            error = self.classify(e)
            self._release(error)
            raise error from None
        return conn

    def _max_packet(self, conn):
        """This connection's max_allowed_packet, asked once: a session keeps the value the server had
        when it connected, so a DBA's SET GLOBAL reaches new connections only."""
        limit = self._packets.get(conn)
        if limit is None:
            with conn.cursor() as cur:
                cur.execute("SELECT @@SESSION.max_allowed_packet")
                limit = self._packets[conn] = self.max_packet = int(cur.fetchone()[0])
        return limit

    def _check_fits(self, table, row, limit):
        """RowRejected for a row whose INSERT alone is over max_allowed_packet (with the command byte)."""
        size = len(self._insert_head(table)) + len(row) + len(self._insert_tail(table)) + 1
        if size > limit:
            raise RowRejected(f"MySQL error 1153 (Got a packet bigger than 'max_allowed_packet' bytes): this row is"
                              f" {size:,} bytes as SQL, the server's max_allowed_packet is {limit:,} (raise it,"
                              f" then `outbox-relay replay` the row)", "08S01")

    def largest_statement(self):
        """Bytes of the INSERT of a message of the largest input the outbox accepts, at worst: `raw`
        is that input (MAX_MESSAGE_BYTES of JSON), `content` and `mentions` are parts of it, `text` is
        at most as long, and SQL escaping at most doubles a byte: six times the input, plus the
        other columns (ids of at most 128 characters, kinds, times, the host: ROW_FIXED)."""
        head, tail = self._insert_head(schema.MESSAGES), self._insert_tail(schema.MESSAGES)
        return len(head) + 6 * MAX_MESSAGE_BYTES + ROW_FIXED + len(tail) + 1

    def setting_problems(self, tx):
        limit, need = self._max_packet(tx.conn), self.largest_statement()
        if need <= limit:
            return []
        at_least = -(-need // (1 << 20))  # MiB, rounded up
        return [f"the server's max_allowed_packet is {limit:,} bytes, and a message of the largest size outbox-relay"
                f" accepts ({MAX_MESSAGE_BYTES:,} bytes) can be up to {need:,} bytes as SQL: such a message would go"
                f" dead; raise max_allowed_packet to at least {at_least}M (SET GLOBAL max_allowed_packet ="
                f" {at_least << 20}, or the parameter of that name in the RDS console)"]

    # -- DDL ---------------------------------------------------------------------------------------

    @classmethod
    def create_table_statements(cls, table, tdef):
        # Indexes inline: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
        keys = [f"    {kind}KEY {cls.quote(schema.index_name(table, suffix))} ({', '.join(columns)})"
                for kind, keyset in (("", tdef.indexes), ("UNIQUE ", tdef.unique)) for suffix, columns in keyset]
        return [f"CREATE TABLE IF NOT EXISTS {cls.quote(table)} (\n"
                + ",\n".join(schema.column_lines(cls, tdef.columns) + keys)
                + "\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"]

    @classmethod
    def upsert_clause(cls, key, columns):
        return "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in columns)

    def _ddl_lock_name(self):
        # GET_LOCK names are server-wide and at most 64 characters.
        return "outbox-relay:" + hashlib.sha1(f"{self.db.database}.{self.table}".encode()).hexdigest()

    def ddl_lock(self, tx):
        # DDL commits implicitly in MySQL, so no transaction-scoped lock survives it: a session lock,
        # released by ddl_unlock (or by the session's end).
        if tx.value("SELECT GET_LOCK(%s, %s)", (self._ddl_lock_name(), self.statement_timeout)) != 1:
            raise TargetUnavailable(f"another relay has been changing the schema of {self.table} for more"
                                    f" than {self.statement_timeout} s")

    def ddl_unlock(self, tx):
        tx.execute("DO RELEASE_LOCK(%s)", (self._ddl_lock_name(),))

    def table_columns(self, tx):
        database, _, table = self.table.rpartition(".")
        rows = tx.execute("SELECT column_name, is_nullable = 'YES', column_default IS NOT NULL OR extra LIKE %s"
                          " FROM information_schema.columns WHERE table_schema = COALESCE(%s, DATABASE())"
                          " AND table_name = %s", ("%auto_increment%", database or None, table))
        return {n: (bool(nullable), bool(has_default)) for n, nullable, has_default in rows}

    def table_exists(self, tx, name):
        database, _, table = name.rpartition(".")
        return bool(tx.value("SELECT count(*) FROM information_schema.tables"
                             " WHERE table_schema = COALESCE(%s, DATABASE()) AND table_name = %s",
                             (database or None, table)))

    # -- reading and diagnostics --------------------------------------------------------------------

    def server_info(self, tx):
        # @@SESSION.max_user_connections is the account's MAX_USER_CONNECTIONS where it has one (else
        # the global limit), readable by every user, unlike mysql.user.
        (version, user, max_conn, user_limit, flush, p_s), = tx.execute(
            "SELECT VERSION(), CURRENT_USER(), @@GLOBAL.max_connections, @@SESSION.max_user_connections,"
            " @@GLOBAL.innodb_flush_log_at_trx_commit, @@GLOBAL.performance_schema")
        in_use = int(tx.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")[0][1])
        # Without the PROCESS privilege the process list shows only this user's own sessions.
        user_in_use = tx.value("SELECT count(*) FROM information_schema.processlist WHERE user = %s",
                               (user.rpartition("@")[0],))
        return dict(server_version=version, user=user, max_connections=max_conn, connections_in_use=in_use,
                    role_connection_limit=user_limit or None, role_connections_in_use=user_in_use,
                    relay_connections=self._relay_connections(tx) if p_s else None, pool_size=self.pool_size,
                    innodb_flush_log_at_trx_commit=int(flush))

    def _relay_connections(self, tx):
        """Sessions that connected as program_name=outbox-relay (performance_schema), None where unreadable."""
        try:
            return tx.value("SELECT count(*) FROM performance_schema.session_connect_attrs"
                            " WHERE attr_name = 'program_name' AND attr_value = 'outbox-relay'")
        except Exception:  # noqa: BLE001 - a grant we lack: not knowing is an answer here
            return None

    # -- the stats rollup: row triggers (base.py), made under LOCK TABLES -------------------------

    row_trigger_from = " FROM DUAL"
    upsert_add = "ON DUPLICATE KEY UPDATE n = n + VALUES(n)"

    @classmethod
    def rollup_statements(cls, table):
        # DDL commits on its own here: the tables are locked from before the triggers exist until the
        # first count is in, so no row is missed or counted twice (the triggers are made under the lock).
        statements = super().rollup_statements(table)
        tables = (table, schema.events_table(table), schema.counts_table(table))
        lock = "LOCK TABLES " + ", ".join(f"{cls.quote(t)} WRITE" for t in tables)
        return statements[:1] + [lock] + statements[1:]

    @classmethod
    def rollup_fill_statements(cls, table):
        return super().rollup_fill_statements(table) + ["UNLOCK TABLES"]

    scan_ms_per_100k = 250  # README: MariaDB 10.11 scanning text in memory, this machine

    def estimated_rows(self, tx):
        database, _, table = self.table.rpartition(".")
        return tx.value("SELECT table_rows FROM information_schema.tables WHERE table_schema ="
                        " COALESCE(%s, DATABASE()) AND table_name = %s", (database or None, table))

    def read_problems(self):
        """Also what full-text machinery the server has: MySQL's ngram parser, MariaDB's Mroonga engine.
        Neither is used by `search` on its own (README: Search on MySQL / MariaDB says why); named here so
        an operator of a large archive knows what the server offers."""
        problems = super().read_problems()
        with self.transaction() as tx:
            ngram = tx.value("SELECT count(*) FROM information_schema.plugins WHERE plugin_name = 'ngram'"
                             " AND plugin_status = 'ACTIVE'")
            mroonga = tx.value("SELECT count(*) FROM information_schema.engines WHERE engine = 'Mroonga'"
                               " AND support IN ('YES', 'DEFAULT')")
        offers = [name for name, present in (("the ngram full-text parser", ngram), ("the Mroonga engine", mroonga))
                  if present]
        if problems and offers:
            problems.append(f"this server has {' and '.join(offers)}: see the README for an index a DBA may add")
        return problems

    def count_triggers(self, tx, names):
        return tx.value(f"SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()"
                        f" AND trigger_name IN ({', '.join(['%s'] * len(names))})", list(names))

    def contains(self, column, keyword):
        # '!' as the escape character: the same in every sql_mode (NO_BACKSLASH_ESCAPES or not).
        return f"LOWER({column}) LIKE LOWER(%s) COLLATE utf8mb4_bin ESCAPE '!'", "%" + like_escape(keyword) + "%"

    @classmethod
    def day_of(cls, column):
        # The session is UTC; no DATE_FORMAT, whose % signs PyMySQL would read as placeholders.
        return f"CAST(DATE({column}) AS CHAR(10))"

    @classmethod
    def minute_of(cls, column):
        return f"SUBSTRING(CAST({column} AS CHAR), 1, 16)"  # the session is UTC: 'YYYY-MM-DD HH:MM:SS.fff'

    def stream_cursor(self, tx):
        # An unbuffered cursor: rows come off the socket as they are read. The server gives up on a
        # reader slower than net_write_timeout (60 s): a person's disk or pipe may be.
        import pymysql.cursors
        tx.execute("SET SESSION net_write_timeout = 3600")
        return tx.conn.cursor(pymysql.cursors.SSCursor)


# Bytes of one multi-row INSERT at most (less where the server's max_allowed_packet is less):
# bigger statements save nothing measurable, a round trip per MiB being nothing beside the bytes.
MAX_STATEMENT_BYTES = 1 << 20
# The columns of a row other than raw, content, mentions and text, as SQL, at most (generously).
ROW_FIXED = 16 * 1024
# What keeps the row already there, per table's key (the module's docstring says why message_id is
# guarded). An event already there by its id or by the fact it states: kept as it is.
INSERT_TAILS = {
    "message_id": (b" ON DUPLICATE KEY UPDATE message_id ="
                   b" IF(CAST(message_id AS BINARY) = CAST(VALUES(message_id) AS BINARY), message_id, NULL)"),
    "event_id": b" ON DUPLICATE KEY UPDATE event_id = event_id",
}


_DUPLICATES = re.compile(rb"Duplicates: (\d+)")


def _inserted(cur):
    """Rows an INSERT … ON DUPLICATE KEY UPDATE added. Its affected rows count 1 per row inserted, 2
    per row a gap fill changed and 0 per duplicate left as it was (PyMySQL does not set
    CLIENT_FOUND_ROWS); a multi-row INSERT's info line ("Records: 5  Duplicates: 2  Warnings: 0")
    counts the changed ones as Duplicates, a one-row INSERT has no such line (2 then is a change)."""
    result = getattr(cur, "_result", None)
    info = _DUPLICATES.search(getattr(result, "message", None) or b"")
    changed = int(info.group(1)) if info else int(cur.rowcount == 2)
    return cur.rowcount - 2 * changed


def _statements(head, tail, rows, limit):
    """Multi-row INSERTs of the rows' SQL literals (encode_values), each at most `limit` bytes
    (a row alone is never over it: _check_fits saw to that)."""
    chunk, size = [], len(head) + len(tail)
    for row in rows:
        if chunk and size + len(row) + 1 > limit:
            yield head + b",".join(chunk) + tail
            chunk, size = [], len(head) + len(tail)
        chunk.append(row)
        size += len(row) + 1  # the comma
    if chunk:
        yield head + b",".join(chunk) + tail


# The server's messages that quote the row's data: the value goes, the server's words stay.
# Anchored at both ends, so a value holding "' for column" cannot end the match early.
_QUOTED_VALUES = [re.compile(pattern, re.S) for pattern in (
    r"^(.*? value: )'.*'( for column \S+ at row \d+)$",  # 1366, 1292: Incorrect string value: '\xF0…'
    r"^(Duplicate entry )'.*'( for key \S+)$",           # 1062
    r"^(Truncated incorrect .*? value: )'.*'()$",        # 1292
    r"^(Invalid \S+ character string: )'.*'()$",         # 1300
)]


def _without_values(message):
    """message without the row's values a MySQL/MariaDB error quotes ('…' in their place)."""
    for pattern in _QUOTED_VALUES:
        message, found = pattern.subn(r"\1'…'\2", message)
        if found:
            break
    return message


def sql_literal(value):
    """A value as a MySQL literal, escaped as mysql_real_escape_string does. Ours, not PyMySQL's
    executemany: its str.translate over a dict took a third of the drain's time (bench/mysql_relay.py);
    chained replace is 3.4x faster (47 -> 14 us a row). Safe because every session runs in utf8mb4
    (no multi-byte character ends in a backslash byte) and in our sql_mode, without
    NO_BACKSLASH_ESCAPES."""
    if value is None:
        return "NULL"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\n", "\\n")
    return "'" + text.replace("\r", "\\r").replace("\0", "\\0").replace("\x1a", "\\Z") + "'"


def _datetime_text(value):
    """An aware UTC datetime -> DATETIME(3) text. DATETIME has no zone: naive UTC (the session's
    time_zone is UTC too)."""
    return value.replace(tzinfo=None).isoformat(" ", "milliseconds")


def like_escape(keyword):
    return keyword.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _tls_options(options):
    """The URL's TLS options, checked. ssl_ca alone means VERIFY_CA, as in MySQL's own client."""
    ca, cert, key = options.get("ssl_ca") or None, options.get("ssl_cert") or None, options.get("ssl_key") or None
    mode = (options.get("ssl_mode") or ("VERIFY_CA" if ca else "PREFERRED")).upper().replace("-", "_")
    if mode not in SSL_MODES:
        raise ConfigError(f"ssl_mode={options['ssl_mode']!r} is not one of {', '.join(SSL_MODES)}")
    if ca and mode not in ("VERIFY_CA", "VERIFY_IDENTITY"):
        raise ConfigError(f"ssl_ca is only used with ssl_mode=VERIFY_CA or VERIFY_IDENTITY, not {mode}")
    if (cert or key) and mode in ("DISABLED", "PREFERRED"):
        raise ConfigError(f"ssl_cert/ssl_key need ssl_mode=REQUIRED or stricter, not {mode}")
    if bool(cert) != bool(key):
        raise ConfigError("ssl_cert and ssl_key go together")
    return {"ssl_mode": mode, "ssl_ca": ca, "ssl_cert": cert, "ssl_key": key}


def _ssl_arguments(mode, ca, cert, key):
    """PyMySQL's arguments for an ssl_mode, with the meanings of MySQL's own client."""
    if mode == "DISABLED":
        return {"ssl_disabled": True}
    if mode == "PREFERRED":
        return {}  # PyMySQL's default: TLS when the server offers it, unverified
    for path in (ca, cert, key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path} does not exist (from the mysql URL)")
    try:
        if mode == "REQUIRED":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # encrypted, server not verified
        else:
            ctx = ssl.create_default_context(cafile=ca)  # the system's CAs when no ssl_ca is given
            ctx.check_hostname = mode == "VERIFY_IDENTITY"
        if cert:
            ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot use the TLS files of the mysql URL: {e}") from None
    # An SSLContext makes PyMySQL refuse a server without TLS instead of falling back to plain text.
    return {"ssl": ctx}
