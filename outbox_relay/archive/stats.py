"""`stats`: totals, messages per day, top chats and senders, by type, over the target; and the outbox."""

import time

from ..errors import TargetError
from ..message.events import KINDS
from ..schema import target as schema
from ..timeconv import day_start_ms, iso_to_ms, minute_of_ms, minute_start_ms, ms_to_iso, now_ms, to_ms


def target_stats(target, *, days=7, top=10, now=None):
    """From the rollup where init-db made it (a few index reads, whatever the table's size), else by
    scanning the table; the same answer either way."""
    now = now_ms(now)
    start_ms = day_start_ms(now) - (days - 1) * 86_400_000
    # "In the last hour" to the minute: the rollup counts the minutes rows were relayed in.
    hour_ago = minute_start_ms(now - 3_600_000)
    with target.transaction() as tx:
        rollup = target.rollup_ready(tx)
        counts = _from_rollup if rollup else _by_scan
        out = counts(target, tx, start_ms, top, hour_ago)
        days_iso = [ms_to_iso(start_ms + i * 86_400_000)[:10] for i in range(days)]
        per_day = out.pop("per_day")
        out["per_day"] = [{"day": d, "count": per_day.get(d, 0)} for d in days_iso]
        out["counted_by"] = "rollup" if rollup else "scan"
        out["history"] = _history(target, tx, rollup)
    return out


def _range(target, tx, first_day=None, last_day=None):
    """The first and last message: the ends of the created_at index. Where the rollup names the first and
    last day, each end is read within its day alone, which a table partitioned by month prunes to one
    partition (min() over all of one opens every partition's index: 7 ms at 37 months against 0.3 ms)."""
    t, p = target.quoted, target.param
    if first_day is None:
        (first, last), = tx.execute(f"SELECT min(created_at), max(created_at) FROM {t}")
    else:
        within = f"FROM {t} WHERE created_at >= {p} AND created_at < {p}"
        (first, last), = tx.execute(f"SELECT (SELECT min(created_at) {within}), (SELECT max(created_at) {within})",
                                    [target.created_value(ms) for day in (first_day, last_day)
                                     for ms in (iso_to_ms(day), iso_to_ms(day) + 86_400_000)])
    return {"first_message": ms_to_iso(to_ms(first)) if first is not None else None,
            "last_message": ms_to_iso(to_ms(last)) if last is not None else None}


def _from_rollup(target, tx, start_ms, top, hour_ago):
    counts, p = target.quote(schema.counts_table(target.table)), target.param

    def read(dim, order="n DESC, name", limit=None, since=None):
        sql = f"SELECT name, n FROM {counts} WHERE dim = {p} AND n > 0"
        params = [dim]
        if since is not None:
            sql += f" AND name >= {p}"
            params.append(since)
        sql += f" ORDER BY {order}" + (f" LIMIT {p}" if limit else "")
        return tx.execute(sql, params + ([limit] if limit else []))
    out = {"total": next((n for _, n in read("all")), 0),
           "per_day": dict(read("day", order="name", since=ms_to_iso(start_ms)[:10])),
           "relayed_last_hour": sum(n for _, n in read("relayed", since=minute_of_ms(hour_ago)))}
    (first_day, last_day), = tx.execute(f"SELECT min(name), max(name) FROM {counts} WHERE dim = 'day' AND n > 0")
    out.update(_range(target, tx, first_day, last_day))
    # The rollup keeps a missing chat or sender as '': shown as null, as the table's GROUP BY does.
    for key, column, dim in (("top_chats", "chat_id", "chat"), ("top_senders", "sender_id", "sender")):
        out[key] = [{column: name or None, "count": n} for name, n in read(dim, limit=top)]
    out["by_type"] = [{"msg_type": name, "count": n} for name, n in read("type")]
    return out


def _by_scan(target, tx, start_ms, top, hour_ago):
    t, p = target.quoted, target.param
    out = {"total": tx.value(f"SELECT count(*) FROM {t}"), **_range(target, tx)}
    day = target.day_of("created_at")
    out["per_day"] = dict(tx.execute(f"SELECT {day} AS day, count(*) FROM {t} WHERE created_at >= {p}"
                                     " GROUP BY day ORDER BY day", (target.created_value(start_ms),)))
    for key, column in (("top_chats", "chat_id"), ("top_senders", "sender_id")):
        rows = tx.execute(f"SELECT {column}, count(*) AS n FROM {t} GROUP BY {column}"
                          f" ORDER BY n DESC, {column} LIMIT {p}", (top,))
        out[key] = [{column: k, "count": n} for k, n in rows]
    rows = tx.execute(f"SELECT msg_type, count(*) AS n FROM {t} GROUP BY msg_type ORDER BY n DESC, msg_type")
    out["by_type"] = [{"msg_type": k, "count": n} for k, n in rows]
    out["relayed_last_hour"] = tx.value(f"SELECT count(*) FROM {t} WHERE relayed_at >= {p}",
                                        (target.created_value(hour_ago),))
    return out


def _history(target, tx, rollup):
    """Edits, recalls and reactions archived, and the messages they marked; None where the archive has
    no history yet (a role that could not run this version's DDL)."""
    if rollup:
        rows = tx.execute(f"SELECT dim, name, n FROM {target.quote(schema.counts_table(target.table))}"
                          f" WHERE dim IN ('event', 'edited', 'recalled')")
        counts = {name: n for dim, name, n in rows if dim == "event"}
        marked = {dim: n for dim, _, n in rows if dim != "event"}
        edited, recalled = marked.get("edited", 0), marked.get("recalled", 0)
        return {**{kind: counts.get(kind, 0) for kind in KINDS}, "messages_edited": edited,
                "messages_recalled": recalled}
    _, events, _ = target.search_shape(tx)
    if not events:
        return None
    counts = dict(tx.execute(f"SELECT kind, count(*) FROM {target.quote(target.events_table)} GROUP BY kind"))
    edited, recalled = tx.execute(f"SELECT count(edited_at), count(recalled_at) FROM {target.quoted}")[0]
    return {**{kind: counts.get(kind, 0) for kind in KINDS}, "messages_edited": edited, "messages_recalled": recalled}


def collect_stats(outbox, target, *, days=7, top=10):
    result = {"target": target.display_url if target else None, "table": target.table if target else None}
    try:
        result.update(target_stats(target, days=days, top=top))
        result["target_error"] = None
    except TargetError as e:
        result["target_error"] = str(e)
    try:
        info = target.connections()
        result["connections"] = {k: info.get(k) for k in (
            "connections_in_use", "max_connections", "role_connection_limit", "role_connections_in_use",
            "relay_connections", "pool_size")} if "max_connections" in info else None
    except TargetError:
        result["connections"] = None
    age = outbox.oldest_pending_age()
    result["outbox"] = {"path": outbox.path, "counts": outbox.counts(),
                        "oldest_pending_age_s": round(age, 3) if age is not None else None,
                        "delivered_last_hour": outbox.delivered_since(time.time() - 3600)}
    return result
