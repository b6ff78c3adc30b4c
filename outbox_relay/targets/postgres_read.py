"""What makes PostgreSQL fast to read at any size: the n-gram search index and the stats rollup.

Search. Chinese has no word breaks and its keywords are often one or two characters, which pg_trgm
cannot index (a trigram needs three). Three ways, the best one the server allows:
- pg_bigm (RDS offers it), where the extension is installed or may be created: a GIN index over
  lower(text) with gin_bigm_ops, queried with lower(text) LIKE lower(pattern).
- Otherwise our own, needing no extension at all: an IMMUTABLE SQL function giving a text's distinct
  characters and pairs of characters (lower case) as a text[], with a GIN index over it. A keyword
  of one character asks for that character (`@>`), a longer one for all its pairs; the literal
  ILIKE rechecks every candidate, so the answer is exactly the scan's.
- pg_trgm's GIN index as before, where the extension may be created: the planner takes it where it
  is the better one (three characters and more, in a locale that gives CJK trigrams).
The edits' words (the events table) and the words first sent (original_text) get the same index,
partial: each branch of a search (archive/search.py) has its own. msg_type gets (msg_type,
created_at) beside the chat and sender ones, so every filter has an index.

An existing archive gets these with CREATE INDEX CONCURRENTLY (no lock that stops the relay's
inserts); an index a concurrent build left INVALID is dropped and built again.

Stats. A rollup table (schema.COUNTS: per day, chat, sender and type, and the total) kept exact by
statement-level triggers with transition tables, in the transaction of the statement that inserts,
deletes or retypes rows (the relay's COPY, a backfill, a DBA's DELETE): only rows really inserted
are in the transition table, so a re-sent batch's duplicates count nothing. Made and filled by
init-db in one transaction that holds off writers meanwhile (SHARE ROW EXCLUSIVE), so the fill and
the triggers never miss or double a row.
"""

import time

from ..errors import TargetError
from ..schema import target as schema

GRAMS_FUNCTION = "outbox_relay_grams"
QUERY_GRAMS_FUNCTION = "outbox_relay_query_grams"

# (suffix, column, table is the events table, partial WHERE): the n-gram indexes, one per search branch.
GRAM_INDEXES = (
    ("text_grams", "text", False, None),
    ("original_grams", "original_text", False, "original_text IS NOT NULL"),
    ("text_grams", "text", True, "kind = 'edited'"),
)


class PostgresReadSide:
    """Mixed into PostgresTarget: the search indexes and the rollup, and how search and stats use them."""

    search_index_note = ("no extension needed for the n-gram index; pg_trgm and pg_bigm are used where"
                         " the server has them")

    # -- names ------------------------------------------------------------------------------------

    @classmethod
    def _in_schema(cls, table, name):
        """`name` in the schema of `table` (a function beside its table), quoted."""
        schema_part = schema.check_table_name(table).rpartition(".")[0]
        return cls.quote(f"{schema_part}.{name}" if schema_part else name)

    # -- DDL --------------------------------------------------------------------------------------

    @classmethod
    def gram_function_statements(cls, table):
        grams, query = cls._in_schema(table, GRAMS_FUNCTION), cls._in_schema(table, QUERY_GRAMS_FUNCTION)
        # One expression of built-in C functions (12 us a message; a generate_series version took 3 times
        # that), IMMUTABLE and STRICT so an index may use it. PL/pgSQL (built in, no extension) and COST
        # 1000, not an inlined SQL function: the planner must know that evaluating it row by row, as a
        # filter along created_at, is dear (it chose that plan, 250 ms at 1 M rows, when it did not).
        # A keyword's grams (the second function) fold into a constant the planner's statistics judge. The pairs: the
        # text cut after every second character from the first, and from the second (U+E000 marks the
        # cuts; a pair holding U+E000 itself is lost, so a keyword holding it asks for nothing, `{}`,
        # and the recheck alone decides). Duplicates stay: GIN keeps each key once. A keyword's grams
        # are its pairs only (a sub-SELECT is fine there: the planner evaluates it once, for the constant).
        def pairs(text):
            return f"string_to_array(regexp_replace({text}, '(..)', '\\1' || chr(57344), 'g'), chr(57344))"
        both = f"{pairs('lower(t)')} || {pairs('substr(lower(t), 2)')}"
        return [
            f"CREATE OR REPLACE FUNCTION {grams}(t text) RETURNS text[] LANGUAGE plpgsql IMMUTABLE STRICT"
            f" PARALLEL SAFE COST 1000 AS $$ BEGIN RETURN array_remove(string_to_array(lower(t), NULL) || {both},"
            f" ''); END $$",
            f"CREATE OR REPLACE FUNCTION {query}(t text) RETURNS text[] LANGUAGE sql IMMUTABLE STRICT"
            f" PARALLEL SAFE AS $$ SELECT CASE WHEN length(t) = 1 THEN ARRAY[lower(t)]"
            f" WHEN strpos(t, chr(57344)) > 0 THEN '{{}}'::text[] ELSE ARRAY(SELECT DISTINCT g FROM"
            f" unnest({both}) AS g WHERE length(g) = 2) END $$",
        ]

    @classmethod
    def search_indexes(cls, table, bigm=False):
        """[(index name, its table, CREATE INDEX … body after the name)]: every search index."""
        events = schema.events_table(table)
        grams = cls._in_schema(table, GRAMS_FUNCTION)
        out = [(schema.index_name(table, "type_created"), table, "(msg_type, created_at)")]
        for suffix, column, on_events, where in GRAM_INDEXES:
            owner = events if on_events else table
            using = f"USING gin (lower({column}) gin_bigm_ops)" if bigm else f"USING gin ({grams}({column}))"
            suffix = suffix.replace("grams", "bigm") if bigm else suffix
            out.append((schema.index_name(owner, suffix), owner, using + (f" WHERE {where}" if where else "")))
        return out

    @classmethod
    def search_index_statements(cls, table, concurrently=False, bigm=False, trigram=True):
        """The search DDL for a DBA (`schema --sql --search`) and init-db: functions, then indexes."""
        how = "CONCURRENTLY " if concurrently else ""
        statements = [] if bigm else cls.gram_function_statements(table)
        if bigm:
            statements.append("CREATE EXTENSION IF NOT EXISTS pg_bigm")
        statements += [f"CREATE INDEX {how}IF NOT EXISTS {cls.quote(name)} ON {cls.quote(owner)} {body}"
                       for name, owner, body in cls.search_indexes(table, bigm)]
        if trigram:
            statements += cls.trigram_statements(table, how)
        return statements

    @classmethod
    def trigram_statements(cls, table, how=""):
        return ["CREATE EXTENSION IF NOT EXISTS pg_trgm",
                f"CREATE INDEX {how}IF NOT EXISTS {cls.quote(schema.index_name(table, 'text_trgm'))}"
                f" ON {cls.quote(table)} USING gin (text gin_trgm_ops)"]

    @classmethod
    def rollup_statements(cls, table):
        """The rollup table, and per trigger a function and the statement-level trigger (transition
        tables: one upsert per statement, however many rows it wrote). Each statement idempotent."""
        counts = cls.quote(schema.counts_table(table))
        statements = list(cls.create_table_statements(schema.counts_table(table), schema.COUNTS))
        for name, on, when, rows in cls.rollup_triggers(table):
            tables = [("new_rows" if prefix == "NEW." else "old_rows", sign) for prefix, sign in rows]
            dims = cls.rollup_dims() if on == table else [("'event'", "kind", None)]
            body = f"BEGIN {cls._rollup_add(counts, tables, dims)}; RETURN NULL; END"
            fn = cls._in_schema(table, name)
            refs = " ".join(f"{'NEW' if t == 'new_rows' else 'OLD'} TABLE AS {t}" for t, _ in tables)
            # SECURITY DEFINER: the relay's role (often granted only the two tables by a DBA) needs no
            # right on the rollup; the function runs as its owner, with the search_path it was made with.
            statements += [f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
                           f" SET search_path FROM CURRENT AS $${body}$$",
                           f"DROP TRIGGER IF EXISTS {cls.quote(name)} ON {cls.quote(on)}",
                           f"CREATE TRIGGER {cls.quote(name)} AFTER {when} ON {cls.quote(on)} REFERENCING {refs}"
                           f" FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"]
        return statements

    @classmethod
    def _rollup_add(cls, counts, sources, dims):
        """The upsert that adds to the rollup what the rows of each (rows, sign) of `sources` count for, by
        `dims` (rollup_dims); the rollup's rows locked in one order (dim, name) by every writer, so two
        batches never deadlock on them."""
        deltas = " UNION ALL ".join(
            f"SELECT {dim} AS d, {expr} AS nm, {'-' if sign < 0 else ''}count(*) AS v FROM {rows}"
            + (f" WHERE {condition}" if condition else "") + " GROUP BY 1, 2"
            for rows, sign in sources for dim, expr, condition in dims)
        return (f"INSERT INTO {counts} (dim, name, n) SELECT d, nm, sum(v) FROM ({deltas}) AS x"
                f" GROUP BY d, nm HAVING sum(v) <> 0 ORDER BY d, nm {cls._rollup_on_conflict(counts)}")

    @staticmethod
    def _rollup_on_conflict(counts):
        return f"ON CONFLICT (dim, name) DO UPDATE SET n = {counts}.n + excluded.n"

    @classmethod
    def rollup_dims(cls, row=""):
        # Each count also kept per month of created_at ('2026-11:chat', …; the days are already), so that
        # retention takes a month's partition out of the rollup by reading the rollup, not the month's rows
        # (a million of them: 8.7 s, against the DROP's second).
        dims = super().rollup_dims(row)
        month = f"to_char({row}created_at AT TIME ZONE 'UTC', 'YYYY-MM')"
        return dims + [(f"{month} || ':' || {dim}", name, condition) for dim, name, condition in dims if dim != "'day'"]

    def month_dims(self, month_name):
        """The names of the dims that hold one month's own counts ('2026-11'), as the triggers write them."""
        return [f"{month_name}:{dim.strip(chr(39))}" for dim, _, _ in super().rollup_dims() if dim != "'day'"]

    def rollup_take_out(self, tx, month, source, held):
        """Take partition `source`, the month (year, month) (or what is left of it: its held rows), out of
        the rollup, but for the rows of `held` chats, which stay: a DETACH or DROP fires no DELETE trigger.
        The month's own counts come off the totals and go, then the held rows' are counted back in (few:
        read by the chat index). The caller holds the partition locked, so no writer changes it meanwhile."""
        if not self.rollup_ready(tx):
            return
        month_name = "%04d-%02d" % month  # as the triggers' to_char(created_at, 'YYYY-MM') writes it
        counts, own = self.quote(schema.counts_table(self.table)), self.month_dims(month_name)
        tx.execute(f"INSERT INTO {counts} (dim, name, n) SELECT d, nm, -n FROM (SELECT split_part(dim, ':', 2) AS d,"
                   f" name AS nm, n FROM {counts} WHERE dim = ANY(%s) UNION ALL SELECT dim, name, n FROM {counts}"
                   f" WHERE dim = 'day' AND name LIKE %s) AS x WHERE n <> 0 ORDER BY d, nm"
                   f" {self._rollup_on_conflict(counts)}", (own, month_name + "-%"))
        tx.execute(f"DELETE FROM {counts} WHERE dim = ANY(%s)", (own,))
        if held:
            tx.execute(f"WITH staying AS (SELECT * FROM {source} WHERE chat_id = ANY(%s)) "
                       + self._rollup_add(counts, [("staying", 1)], self.rollup_dims()), (held,))

    @classmethod
    def rollup_fill_statements(cls, table):
        """Writers held off (SHARE ROW EXCLUSIVE, till the end of init-db's transaction), then counted."""
        lock = f"LOCK TABLE {cls.quote(table)}, {cls.quote(schema.events_table(table))} IN SHARE ROW EXCLUSIVE MODE"
        return [lock] + super().rollup_fill_statements(table)

    # -- what the server has -----------------------------------------------------------------------

    def bigm_available(self, tx):
        """pg_bigm installed in this database, or installable by CREATE EXTENSION (RDS lists it)."""
        return bool(tx.value("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_bigm'"))

    def valid_indexes(self, tx, names):
        """Those of `names` that exist and are valid (a failed CONCURRENTLY build leaves one invalid)."""
        rows = tx.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                          " WHERE c.relname = ANY(%s) AND i.indisvalid AND c.relnamespace ="
                          " coalesce(to_regnamespace(%s), current_schema()::regnamespace)",
                          (list(names), self.table.rpartition(".")[0] or None))
        return {r[0] for r in rows}

    def invalid_indexes(self, tx, names):
        rows = tx.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                          " WHERE c.relname = ANY(%s) AND NOT i.indisvalid", (list(names),))
        return {r[0] for r in rows}

    def _gram_index_names(self):
        """{index name: (the branch's column, 'bigm' | 'grams')} of every n-gram index there may be."""
        names = {}
        for bigm in (True, False):
            for (name, _owner, _), (_, column, on_events, _) in zip(
                    self.search_indexes(self.table, bigm)[1:], GRAM_INDEXES):
                names[name] = ("events.text" if on_events else column, "bigm" if bigm else "grams")
        return names

    def _plan_of(self, valid):
        names, plan = self._gram_index_names(), {}
        for name in sorted((n for n in valid if n in names), key=lambda n: names[n][1] != "bigm"):
            plan.setdefault(names[name][0], names[name][1])  # pg_bigm first where both are
        return plan

    def search_plan(self, tx):
        """{column or 'events.text': 'bigm' | 'grams'}: which n-gram index serves each branch."""
        return self._plan_of(self.valid_indexes(tx, self._gram_index_names()))

    def tune_search(self, tx):
        # Parallel workers take 15-20 ms to start (measured at 1 M rows, 2 cores): more than a whole
        # search that reads about --limit rows per branch.
        tx.execute("SET LOCAL max_parallel_workers_per_gather = 0")

    def search_shape(self, tx):
        """In one round trip of the catalog (a search's only overhead): the row's state columns,
        the events table, and the valid indexes of both."""
        (state, events, valid), = tx.execute(
            "SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND NOT attisdropped"
            " AND attname IN ('edited_at', 'recalled_at', 'original_text')) = 3, to_regclass(%s) IS NOT NULL,"
            " ARRAY(SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid IN (to_regclass(%s), to_regclass(%s)) AND i.indisvalid)",
            (self.quoted, self.quote(self.events_table), self.quoted, self.quote(self.events_table)))
        return state, state and events, self._plan_of(valid)

    scan_ms_per_100k = 60  # README: a keyword no index serves, on this machine

    def estimated_rows(self, tx):
        return max(int(tx.value("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (self.quoted,)) or 0), 0)

    def rollup_readable(self, tx):
        # A role the DBA granted only the two tables cannot read the rollup: stats scan instead.
        return tx.value("SELECT has_table_privilege(%s, 'SELECT')", (self.quote(schema.counts_table(self.table)),))

    def count_triggers(self, tx, names):
        # On our two tables only: a table renamed away (partition --convert keeps the old one) keeps its
        # triggers, which count for nothing here.
        return tx.value("SELECT count(*) FROM pg_trigger WHERE tgname = ANY(%s) AND NOT tgisinternal"
                        " AND tgrelid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)",
                        (list(names), [self.quoted, self.quote(self.events_table)]))

    # -- applying it --------------------------------------------------------------------------------

    def create_search_indexes(self, trigram=True):
        """init-db's search step: each index on its own, CONCURRENTLY (an archive in use keeps taking
        rows), as far as this role may. -> {index or step: "created" | "exists" | "not created: why"}."""
        with self.transaction() as tx:
            bigm = self.bigm_available(tx)
            encoding = tx.value("SELECT pg_encoding_to_char(encoding) FROM pg_database"
                                " WHERE datname = current_database()")
        report = {}
        if encoding != "UTF8":
            # The grams function cuts the text with chr(57344), which only UTF-8 has: in SQL_ASCII or
            # LATIN1 every insert would fail and stall the queue. Such a database searches by scanning.
            report["n-gram index"] = f"not created: the database's encoding is {encoding}, the n-gram index needs UTF8"
            bigm = False
        elif bigm:
            report["pg_bigm"] = self._ddl_step(["CREATE EXTENSION IF NOT EXISTS pg_bigm"])
            bigm = report["pg_bigm"] == "created"
        if not bigm and encoding == "UTF8":
            report["functions"] = self._ddl_step(self.gram_function_statements(self.table))
        for name, owner, body in self.search_indexes(self.table, bigm):
            if encoding == "UTF8" or "gin" not in body:
                report[name] = self._concurrent_index(name, owner, body)
        if trigram:
            extension, index = self.trigram_statements(self.table, "CONCURRENTLY ")
            report["pg_trgm"] = self._ddl_step([extension])
            if report["pg_trgm"] == "created":
                name = schema.index_name(self.table, "text_trgm")
                report[name] = self._concurrent_index(name, self.table, "USING gin (text gin_trgm_ops)")
        return report

    def _concurrent_index(self, name, owner, body):
        """One index, CONCURRENTLY: outside a transaction, so under a session-level advisory lock."""
        key = ("outbox-relay-index:" + self.table,)
        try:
            with self.autocommit() as tx:
                # Waited for between statements, never inside one: a build waits for every snapshot
                # older than its own, so a relay blocked in pg_advisory_lock would block it in turn.
                while not tx.value("SELECT pg_try_advisory_lock(hashtext(%s))", key):
                    time.sleep(0.2)
                try:
                    # A partitioned table takes no CONCURRENTLY: its index is built on every partition at
                    # once, holding off writers meanwhile (instant on a new table; on a big one, run init-db
                    # when a pause of the relay is acceptable: README "The archive at size").
                    partitioned = tx.value("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                                           (self.quote(owner),)) == "p"
                    how = "" if partitioned else "CONCURRENTLY "
                    if self.invalid_indexes(tx, [name]):  # an earlier build was interrupted: start again
                        tx.execute(f"DROP INDEX {how}IF EXISTS {self._in_schema(owner, name)}")
                    tx.execute(f"CREATE INDEX {how}IF NOT EXISTS {self.quote(name)} ON {self.quote(owner)} {body}")
                finally:
                    tx.execute("SELECT pg_advisory_unlock(hashtext(%s))", key)
            return "created"
        except TargetError as e:
            if e.transient and e.sqlstate is None:
                raise
            return f"not created: {e}"

    # -- reading with them --------------------------------------------------------------------------

    def search_grams(self, tx, keyword):
        """For a keyword of three characters or more: the one pair of its characters that the fewest
        messages hold, by the n-gram index's own statistics (a pair not among its most common elements
        is rarer than all of them). Asking the index for every pair makes the planner multiply their
        frequencies as if independent (they are not: 罕见词 is 罕见 and 见词 together), guess a handful of
        rows, and fetch every match in the table (69 ms at 10 M rows for 测试环境上午, measured); asked
        for the rarest pair, it knows how many rows that is and ANDs the index with the created_at
        range of the window (15 ms). The literal recheck keeps the answer exact. None: no statistics
        yet (ANALYZE has not run), every pair is asked as before."""
        if len(keyword) < 3:
            return None
        query = self._in_schema(self.table, QUERY_GRAMS_FUNCTION)
        (pairs, elems, freqs), = tx.execute(
            f"SELECT q.g, s.most_common_elems::text::text[], s.most_common_elem_freqs FROM (SELECT {query}(%s) AS g) q"
            " LEFT JOIN pg_stats s ON s.tablename = %s AND s.schemaname = coalesce(%s, current_schema())",
            (keyword, schema.index_name(self.table, "text_grams").rpartition(".")[2],
             self.table.rpartition(".")[0] or None))
        if not pairs or not elems:
            return None
        seen = dict(zip(elems, freqs))
        return [min(pairs, key=lambda pair: (seen.get(pair, 0.0), pair))]

    def indexed_contains(self, column, keyword, how, grams=None):
        """(SQL condition, params): `column` holds `keyword` (ILIKE, literal), through the n-gram
        index `how` says this column has ('bigm', 'grams' or None: ILIKE alone, pg_trgm's or a scan)."""
        pattern = "%" + like_escape(keyword) + "%"
        if how == "bigm":
            return f"lower({column}) LIKE lower(%s) ESCAPE '\\'", [pattern]
        if how == "grams":
            # The recheck is strpos on lower() (what ILIKE does in any locale), not ILIKE itself: the planner
            # then judges how common the keyword is by the index's statistics alone and, for a common one,
            # walks created_at newest first and stops at --limit instead of fetching every match.
            function, query = (self._in_schema(self.table, f) for f in (GRAMS_FUNCTION, QUERY_GRAMS_FUNCTION))
            asked, params = (f"{query}(%s)", [keyword]) if grams is None else ("%s::text[]", [grams])
            return (f"{function}({column}) @> {asked} AND strpos(lower({column}), lower(%s)) > 0",
                    params + [keyword])
        return f"{column} ILIKE %s ESCAPE '\\'", [pattern]


def like_escape(keyword):
    return keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
