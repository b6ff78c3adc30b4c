"""Retention: whole months older than the horizon go, by DETACH + DROP of their partitions (a catalog
change: no row is deleted one by one, nothing bloats, the time does not grow with the rows), except the
rows of chats under legal hold (holds.py). A month that holds some is replaced, in one transaction, by a
partition of the same range holding only them: the held rows stay where every reader finds them.

What a dropped month's messages leave: their keys (the partitioned layout's message_ids) stay, so a
backfill that reads that far back does not bring them back; their history rows (the events table, not
partitioned: it is a fraction of the size) are deleted with them, in the same transaction.
Rows in DEFAULT (a message dated 1970) are not touched: retention only ever drops whole months.
"""

import datetime as dt
import logging

from ..timeconv import UTC, month_range
from .holds import held_chats

log = logging.getLogger(__name__)


def apply_retention(target, keep, dry_run=False, now=None):
    """Drop (or, dry_run, list) the months wholly older than `keep` (a timeconv.Duration) before `now`.
    -> {"horizon", "months": [{month, partition, rows?, chats?, held, action}], "default_rows"}. Raises
    ConfigError on a plain table."""
    now = now or dt.datetime.now(UTC)
    horizon = keep.before(now)
    layout = target.layout
    old = [(y, m, name) for y, m, name in layout.partitions(target) if y is not None
           and month_range((y, m))[1] <= horizon]
    with target.transaction() as tx:
        held = held_chats(target, tx)
    report = {"keep": str(keep), "horizon": horizon.isoformat(), "held_chats": held, "dry_run": dry_run,
              "months": [], "default_rows": layout.rows_before(target, target.table + "_default", horizon)}
    for y, m, name in old:
        entry = {"month": f"{y:04d}-{m:02d}", "partition": name}
        if dry_run:
            entry.update(_what_goes(layout.chats_in(target, name), held))
        else:
            entry.update(layout.drop_month(target, (y, m), name, held))
            log.info("retention: %s %s (%s held rows kept)", entry["action"], name, entry["held"])
        report["months"].append(entry)
    return report


def _what_goes(counts, held):
    """[(chat_id, rows)] of a month -> what would go (by chat) and what stays."""
    chats = {c: n for c, n in counts if c not in held}
    kept = sum(n for c, n in counts if c in held)
    return {"rows": sum(chats.values()), "chats": chats, "held": kept,
            "action": "kept (only held rows)" if not chats else ("replaced by its held rows" if kept else "dropped")}
