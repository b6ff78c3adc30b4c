"""How the messages table is laid out (issue 22): plain (one table: every database), or partitioned
by month of created_at (PostgreSQL's declarative partitioning). What differs between the two is a
method here; a target holds one layout, read from the catalog (`Target.read_layout`), never from the
setting alone: a partitioned table written as a plain one would take a message twice.

Exactly once on a partitioned table: PostgreSQL's unique indexes there must hold created_at, and the
same message reaches us with different created_at values (the webhook's create_time, the hook's
context.timestamp, a backfill's item). So the batch's transaction first inserts the message_ids into
the keys table (message_id PRIMARY KEY) with ON CONFLICT DO NOTHING RETURNING, then COPYs only the
rows whose key was new: one more round trip than the plain layout, no temporary table.
"""

import datetime as dt
import logging
import time

from ..errors import LayoutError, TargetError
from ..schema import target as schema
from ..timeconv import UTC, add_months, month_range, ms_to_datetime

log = logging.getLogger(__name__)

LAYOUTS = ("none", "month")
# Months of their own: from this many months before now to AHEAD after it, made on demand when a batch
# holds a message of one; anything else (a clock at 1970, a date in 2100) goes to DEFAULT.
BEHIND = 12 * 20
AHEAD = 3
HELD_SUFFIX = "_held"  # a month's partition that retention left holding only the rows of held chats
MAINTAIN_EVERY = 86_400.0  # seconds between the relay's runs of maintain(): months ahead, retention
_CREATED = schema.MESSAGES.written.index("created_at")


class PlainLayout:
    """One table: the database's unique key on message_id keeps a message one row."""

    name = "none"
    partitioned = False

    def before_write(self, target, lines):
        """What a batch needs made before its transaction (a partition)."""

    def insert_messages(self, target, tx, lines):
        return target.insert_rows(tx, schema.MESSAGES, lines)

    def maintain(self, target):
        """The relay's daily work on the table."""

    def maintain_if_due(self, target):
        """maintain() when a day has passed since the last time: before a batch, and while the relay
        idles (an archive with no traffic for days still has its retention applied)."""

    def after_init(self, target):
        """What init-db does beyond the DDL (the months around now)."""

    def partitions(self, target):
        if "month" not in target.layouts:
            raise LayoutError(f"{target.title} has no partitioned layout yet (README: Partitions on MySQL / MariaDB):"
                              " retention drops whole months, and a plain table has none")
        raise LayoutError(f"table {target.table} is not partitioned: convert it first (`outbox-relay partition"
                          " --convert`); retention drops whole months, and a plain table has none")


class MonthlyLayout(PlainLayout):
    """PostgreSQL: RANGE partitions of created_at, one a month, and a DEFAULT one."""

    name = "month"
    partitioned = True

    def __init__(self):
        self.months = set()  # (year, month) partitions known to exist
        self.maintained_at = None

    # -- writing --------------------------------------------------------------------------------

    def before_write(self, target, lines):
        now = time.time()
        self.maintain_if_due(target)
        wanted = {month for month in map(_month_of, lines) if _own_partition(month, now)} - self.months
        if wanted:
            self.make_months(target, sorted(wanted))

    def insert_messages(self, target, tx, lines):
        """The keys first, then the rows whose key was new (COPY, routed to their partitions)."""
        keys = [_key_of(line) for line in lines]
        new = {r[0] for r in tx.execute(
            "SELECT set_config('outbox_relay.keyed', 'on', true);"
            f" INSERT INTO {target.quote(schema.keys_table(target.table))} (message_id, created_at)"
            " SELECT * FROM unnest(%s::text[], %s::timestamptz[]) ON CONFLICT DO NOTHING RETURNING message_id",
            ([k for k, _ in keys], [c for _, c in keys]))}
        fresh, again = [], []
        for line, (key, _) in zip(lines, keys):
            if key in new:  # once: a batch may hold one message twice (two ways in, two created_at)
                new.discard(key)
                fresh.append(line)
            else:
                again.append(line)
        inserted = target.insert_rows(tx, schema.MESSAGES, fresh) if fresh else 0
        if again:  # a later copy of a message already there fills its row's gaps, as on a plain table
            target.fill_gaps(tx, again)
        return inserted

    def maintain_if_due(self, target):
        if self.maintained_at is None or time.time() - self.maintained_at >= MAINTAIN_EVERY:
            self.maintain(target)

    # -- partitions -----------------------------------------------------------------------------

    def after_init(self, target):
        self.make_ahead(target)

    def make_ahead(self, target):
        """The months around now (last month to AHEAD ahead), where they are not made yet."""
        self.months = {(y, m) for y, m, _ in self.partitions(target) if m}
        now = dt.datetime.now(UTC)
        ahead = [add_months((now.year, now.month), k) for k in range(-1, AHEAD + 1)]
        self.make_months(target, [m for m in ahead if m not in self.months])

    def maintain(self, target):
        """The months around now made ahead (the relay at start and once a day), and retention where set."""
        self.maintained_at = time.time()
        self.make_ahead(target)
        if target.retention is not None:
            from ..archive.retention import apply_retention
            try:
                apply_retention(target, target.retention)
            except TargetError as e:  # tried again tomorrow; the batches go on meanwhile
                log.warning("retention (%s) not applied: %s", target.retention, e)

    def make_months(self, target, months):
        """Each month's partition, where it is not there yet. A role that may not make one (the DBA made
        the table) is told once a day: the month's rows go to DEFAULT meanwhile, nothing waits."""
        for month in months:
            name = partition_name(target.table, month)
            try:
                with target.transaction(timeout=False) as tx:
                    target.ddl_lock(tx)
                    made = not target.table_exists(tx, name)
                    if made:
                        self.make_month(target, tx, month)
            except TargetError as e:
                if not (e.sqlstate or "").startswith("42"):
                    raise
                log.warning("cannot make partition %s (%s): its rows go to %s_default until the DBA makes it",
                            name, e, target.table)
                made = False
            self.months.add(month)
            if made:
                log.info("made partition %s", name)

    def make_month(self, target, tx, month, name=None, parent=None):
        """A month's partition, with what DEFAULT already holds of it moved in (a partition may not be
        attached while DEFAULT holds rows of its range)."""
        parent = parent or target.table
        t, default = target.quote(parent), target.quote(parent + "_default")
        part = target.quote(name or partition_name(parent, month))
        low, high = month_range(month)
        tx.execute(f"CREATE TABLE {part} (LIKE {t} INCLUDING DEFAULTS)")
        tx.execute(f"WITH moved AS (DELETE FROM {default} WHERE created_at >= %s AND created_at < %s RETURNING *)"
                   f" INSERT INTO {part} SELECT * FROM moved", (low, high))
        tx.execute(f"ALTER TABLE {t} ATTACH PARTITION {part} FOR VALUES FROM (%s) TO (%s)", (low, high))

    # -- retention (archive/retention.py decides; these say it in PostgreSQL's words) -------------

    def chats_in(self, target, name):
        """[(chat_id, rows)] of one partition."""
        return target.query(f"SELECT chat_id, count(*) FROM {target.quote(name)} GROUP BY chat_id ORDER BY chat_id")

    def rows_before(self, target, name, before):
        with target.transaction() as tx:
            if not target.table_exists(tx, name):
                return 0
            return tx.value(f"SELECT count(*) FROM {target.quote(name)} WHERE created_at < %s", (before,))

    def drop_month(self, target, month, name, held):
        """One month: in one transaction the rows of `held` chats copied into a new partition of the same
        range, the other messages' events deleted, the month DETACHed (and renamed retired_…) and the new
        partition attached; a relay's batch waits for that, never longer. The retired table is DROPped in
        a transaction of its own: giving its files back takes time that grows with its size (about half a
        second for 200 MB here), and only it is locked meanwhile. One a crash left is dropped next time."""
        t, part, events = target.quoted, target.quote(name), target.quote(target.events_table)
        self.drop_retired(target)
        retired = retired_name(target.table, name)
        with target.transaction(timeout=False) as tx:
            # Writers of this month wait till it is gone (a late message, an edit): what the held chats'
            # copy keeps and the rollup is told leaves are then exactly what the month holds. Other
            # months' writers do not wait. A batch that meets this lock with a message of the month
            # (older than the horizon) while holding the table's lock, which the DETACH waits for, is a
            # deadlock PostgreSQL breaks by failing one of the two: the batch is retried, nothing lost
            # (TargetUnavailable), or retention fails and runs again next time.
            tx.execute(f"LOCK TABLE {part} IN SHARE ROW EXCLUSIVE MODE")
            kept = tx.value(f"SELECT count(*) FROM {part} WHERE chat_id = ANY(%s)", (held,)) if held else 0
            if kept and not tx.value(f"SELECT count(*) FROM {part} WHERE NOT chat_id = ANY(%s) OR chat_id IS NULL",
                                     (held,)):
                return {"held": kept, "action": "kept (only held rows)"}
            keeper = None
            if kept:
                base = partition_name(target.table, month)
                keeper = target.quote(base if name.endswith(HELD_SUFFIX) else base + HELD_SUFFIX)
                tx.execute(f"CREATE TABLE {keeper} (LIKE {t} INCLUDING DEFAULTS)")
                tx.execute(f"INSERT INTO {keeper} SELECT * FROM {part} WHERE chat_id = ANY(%s)", (held,))
            if target.table_exists(tx, target.events_table):
                # Driven from the (small) events table: each event's message looked up in the month by its
                # key, not the month's million rows read to find the few with history.
                tx.execute(f"DELETE FROM {events} e WHERE EXISTS (SELECT 1 FROM {part} m WHERE m.message_id ="
                           " e.message_id AND (m.chat_id IS NULL OR NOT m.chat_id = ANY(%s)))", (held,))
            target.rollup_take_out(tx, month, part, held)
            tx.execute(f"ALTER TABLE {t} DETACH PARTITION {part}")
            tx.execute(f"ALTER TABLE {part} RENAME TO {target.quote(retired.split('.')[-1])}")
            if keeper:
                low, high = month_range(month)
                tx.execute(f"ALTER TABLE {t} ATTACH PARTITION {keeper} FOR VALUES FROM (%s) TO (%s)", (low, high))
        self.drop_retired(target)
        if keeper is None:
            self.months.discard(month)
        return {"held": kept, "action": "replaced by its held rows" if keeper else "dropped"}

    def drop_retired(self, target):
        """DROP the months retention has detached (retired_…), each in a transaction of its own."""
        schema_name, _, name = target.table.rpartition(".")
        rows = target.query("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE n.nspname = coalesce(%s, current_schema()) AND c.relkind = 'r'"
                            " AND c.relname LIKE %s",
                            (schema_name or None, (name + "_retired_").replace("_", "\\_") + "%"))
        for (relname,) in rows:
            with target.transaction(timeout=False) as tx:
                tx.execute(f"DROP TABLE IF EXISTS {target.quote((schema_name + '.' if schema_name else '') + relname)}")

    def partitions(self, target):
        """[(year, month, name)] of the table's partitions, oldest first; DEFAULT as (None, None, name)."""
        schema_name, _, name = target.table.rpartition(".")
        rows = target.query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid ="
            " i.inhrelid WHERE i.inhparent = to_regclass(%s)", (target.quoted,))
        out = []
        for relname, bound in rows:
            low = _bound_month(bound)
            out.append((low[0], low[1], relname) if low else (None, None, relname))
        return sorted(out, key=lambda p: (p[0] is not None, p[0] or 0, p[1] or 0))


def retired_name(table, partition):
    """feishu_messages_p2023_01 -> feishu_messages_retired_p2023_01: a month retention has detached."""
    return f"{table}_retired{partition.split('.')[-1][len(table.split('.')[-1]):]}"


def partition_name(table, month):
    return f"{table}_p{month[0]:04d}_{month[1]:02d}"


def _bound_month(bound):
    """"FOR VALUES FROM ('2026-11-01 00:00:00+00') TO (…)" -> (2026, 11); DEFAULT -> None."""
    if "FROM ('" not in bound:
        return None
    text = bound.split("FROM ('", 1)[1]
    return int(text[0:4]), int(text[5:7])


def _key_of(line):
    """A COPY line -> (message_id, created_at text). Ids hold no control characters (message/fields.py),
    so a backslash is the only escape COPY can have put in one."""
    fields = line.split("\t", _CREATED + 1)
    return fields[0].replace("\\\\", "\\"), fields[_CREATED]


def _month_of(line):
    created = line.split("\t", _CREATED + 1)[_CREATED]
    return int(created[0:4]), int(created[5:7])


def _own_partition(month, now):
    today = ms_to_datetime(int(now * 1000))
    here = today.year * 12 + today.month
    return here - BEHIND <= month[0] * 12 + month[1] <= here + AHEAD
