"""`partition --convert` (PostgreSQL): a plain messages table T becomes the partitioned layout while relays
keep delivering into it.

1. start (one short transaction): T_converting, partitioned, with its keys, the months T's rows span, and
   a trigger on T that mirrors every insert, update (an event applied) and delete into it;
2. copy: T's rows in order of message_id, a batch a transaction, each recording how far it got (the
   progress table) in the same transaction: a kill -9 loses at most the batch in flight, which the next
   run copies again; the keys table makes a row copied twice (by the copy and by the mirror) one row;
3. swap (one short transaction, the table locked for it: a relay's batch waits, no longer): the mirror
   dropped, T renamed T_plain (kept, with every row, until the operator drops it), T_converting and
   everything named after it renamed to T's names; the stats rollup's triggers move with the rows (the
   counts stay exact, stats keep reading them).

Each step is found from the catalog, so running the command again after any kill goes on from where the
last one stopped. A relay that started before the swap keeps writing the plain way into the new table:
its trigger (schema.one_row_guard) keeps each message one row, and the relay reads the layout again
within a minute (Target.ensure_schema).
"""

import datetime as dt
import logging

from ..errors import LayoutError, TargetError
from ..schema import target as schema
from .partitions import _own_partition, partition_name

log = logging.getLogger(__name__)

SUFFIX = "_converting"
COLUMNS = tuple(c[0] for c in schema.MESSAGES.columns) + tuple(c[0] for c in schema.MESSAGE_STATE)


class Conversion:
    """One table's conversion; `run()` does what is left of it."""

    def __init__(self, target, batch=5000, progress=None):
        self.target, self.batch, self.progress = target, batch, progress
        self.table = target.table
        self.new = schema.check_table_name(self.table + SUFFIX)
        self.old = schema.check_table_name(self.table + "_plain")
        self.state = schema.check_table_name(self.new + "_progress")

    def q(self, name):
        return self.target.quote(name)

    def run(self):
        """-> {"copied": rows copied by this run, "swapped": bool, "old": the plain table's new name}."""
        if "month" not in self.target.layouts:
            raise LayoutError(f"{self.target.title} has no partitioned layout yet (README: Partitions on MySQL /"
                              " MariaDB)")
        if self.target.adopt_layout().partitioned and not self._exists(self.new):
            raise LayoutError(f"table {self.table} is partitioned already")
        self.start()
        copied = self.copy()
        self.swap()
        self.target.adopt_layout()
        return {"copied": copied, "swapped": True, "old": self.old}

    def _exists(self, name):
        with self.target.transaction() as tx:
            return self.target.table_exists(tx, name)

    # -- 1. start ---------------------------------------------------------------------------------

    def start(self):
        t, db = self.target, type(self.target)
        with t.transaction(timeout=False) as tx:
            t.ddl_lock(tx)
            if t.table_exists(tx, self.new):
                return
            if t.table_exists(tx, self.old):
                raise LayoutError(f"{self.old} exists (an earlier conversion's plain table): drop or rename it first")
            for sql in schema.partitioned_messages(db, self.new) + db.add_column_statements(
                    self.new, schema.MESSAGE_STATE):
                tx.execute(sql)
            low, high = tx.execute(f"SELECT min(created_at), max(created_at) FROM {t.quoted}")[0]
            for month in _months(low, high):
                _make_month(t, tx, self.new, month)
            tx.execute(f"CREATE TABLE {self.q(self.state)} (copied_to varchar(128))")
            tx.execute(f"INSERT INTO {self.q(self.state)} VALUES (NULL)")
            tx.execute(self._mirror_function())
            tx.execute(f"CREATE TRIGGER outbox_relay_mirror AFTER INSERT OR UPDATE OR DELETE ON {t.quoted}"
                       f" FOR EACH ROW EXECUTE FUNCTION {self.q(self.new + '_mirror')}()")
        log.info("converting %s: %s made, every change to %s mirrored into it", self.table, self.new, self.table)
        try:
            with t.transaction(timeout=False) as tx:
                for sql in t.search_index_statements(self.new):
                    tx.execute(sql)
        except TargetError as e:
            log.warning("search index not created on %s (%s); search falls back to a plain scan", self.new, e)

    def _mirror_function(self):
        cols = ", ".join(COLUMNS)
        new = ", ".join(f"NEW.{c}" for c in COLUMNS)
        target = self.q(self.new)
        return (f"CREATE OR REPLACE FUNCTION {self.q(self.new + '_mirror')}() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN"
                f" IF TG_OP = 'INSERT' THEN INSERT INTO {target} ({cols}) VALUES ({new});"
                f" ELSIF TG_OP = 'UPDATE' THEN UPDATE {target} SET ({cols}) = ROW({new})"
                " WHERE message_id = OLD.message_id;"
                f" ELSE DELETE FROM {target} WHERE message_id = OLD.message_id; END IF;"
                " RETURN NULL; END $$")

    # -- 2. copy ----------------------------------------------------------------------------------

    def copy(self):
        """T's rows into the new table, a batch a transaction. -> rows taken by this run."""
        t, cols, done = self.target, ", ".join(COLUMNS), 0
        task = self.progress.task("convert", total=t.count()) if self.progress else None
        while True:
            with t.transaction(timeout=False) as tx:
                after = tx.value(f"SELECT copied_to FROM {self.q(self.state)}")
                (upto, n), = tx.execute(f"SELECT max(message_id), count(*) FROM (SELECT message_id FROM {t.quoted}"
                                        " WHERE message_id > coalesce(%s, '') ORDER BY message_id LIMIT %s) x",
                                        (after, self.batch))
                if not n:
                    return done
                # FOR SHARE: a relay's update of a row being copied waits for this copy, so the mirror's
                # update then finds the row here (else the copy could take the version before it).
                tx.execute(f"INSERT INTO {self.q(self.new)} ({cols}) SELECT {cols} FROM {t.quoted}"
                           " WHERE message_id > coalesce(%s, '') AND message_id <= %s FOR SHARE", (after, upto))
                tx.execute(f"UPDATE {self.q(self.state)} SET copied_to = %s", (upto,))
            done += n
            if task:
                task.advance(n)

    # -- 3. swap ----------------------------------------------------------------------------------

    def swap(self):
        t, db = self.target, type(self.target)
        with t.transaction(timeout=False) as tx:
            t.ddl_lock(tx)
            if not t.table_exists(tx, self.new):
                return
            tx.execute(f"LOCK TABLE {t.quoted} IN ACCESS EXCLUSIVE MODE")
            counted = t.rollup_ready(tx)
            tx.execute(f"DROP TRIGGER outbox_relay_mirror ON {t.quoted}")
            tx.execute(f"DROP FUNCTION {self.q(self.new + '_mirror')}()")
            tx.execute(f"DROP TABLE {self.q(self.state)}")
            schema_name = self.table.rpartition(".")[0] or None
            self._rename_all(tx, self.table, self.old, schema_name, plain=True)
            self._rename_all(tx, self.new, self.table, schema_name)
            for sql in schema.one_row_guard(db, self.table):
                tx.execute(sql)
            tx.execute(f"DROP FUNCTION {self.q(self.new + '_one_row')}()")
            if counted:
                self._move_rollup(tx)
        log.info("converted %s: partitioned by month; the plain table is kept as %s until you drop it",
                 self.table, self.old)

    def _move_rollup(self, tx):
        """The stats rollup's triggers go with the rows: off the plain table, onto the partitioned one,
        which holds the same rows (the mirror), so the counts stay exact without counting again and
        stats keep reading the rollup (not a scan until the next init-db)."""
        t = self.target
        for sql in t.rollup_statements(self.table):  # idempotent: the counts table and functions are kept
            tx.execute(sql)
        for name, on, *_ in t.rollup_triggers(self.table):
            if on == self.table:
                tx.execute(f"DROP TRIGGER IF EXISTS {self.q(name)} ON {self.q(self.old)}")

    def _rename_all(self, tx, prefix, into, schema_name, plain=False):
        """Rename the table `prefix` and every relation named after it to start with `into`. plain: only
        the table and its own indexes (partitions of a partitioned table start with the same prefix)."""
        bare, into_bare = prefix.split(".")[-1], into.split(".")[-1]
        where = ("(c.oid = to_regclass(%s) OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid ="
                 " to_regclass(%s)))") if plain else "(c.relname = %s OR c.relname LIKE %s)"
        params = (self.q(prefix), self.q(prefix)) if plain else (bare, bare.replace("_", "\\_") + "\\_%")
        rows = tx.execute("SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                          f" WHERE n.nspname = coalesce(%s, current_schema()) AND {where}", (schema_name, *params))
        for name, kind in rows:
            if not name.startswith(bare):
                continue
            renamed = (into_bare + name[len(bare):])[:63]
            what = "INDEX" if kind in ("i", "I") else "TABLE"
            qualified = (schema_name + "." if schema_name else "") + name
            tx.execute(f"ALTER {what} {self.q(qualified)} RENAME TO {self.q(renamed)}")


def _months(low, high):
    """The (year, month)s from low to high (datetimes; None: none) that get partitions of their own."""
    if low is None:
        return []
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    months, (y, m) = [], (low.year, low.month)
    while (y, m) <= (high.year, high.month):
        if _own_partition((y, m), now):
            months.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return months


def _make_month(target, tx, parent, month):
    from .partitions import MonthlyLayout
    MonthlyLayout().make_month(target, tx, month, name=partition_name(parent, month), parent=parent)
