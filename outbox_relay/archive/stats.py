"""`stats`: totals, messages per day, top chats and senders, by type, over the target; and the outbox."""

import time

from ..errors import TargetError
from ..message.events import KINDS
from ..timeconv import day_start_ms, ms_to_iso, now_ms, to_ms
from .search import archive_shape


def target_stats(target, *, days=7, top=10, now=None):
    t, p = target.quoted, target.param
    now = now_ms(now)
    start_ms = day_start_ms(now) - (days - 1) * 86_400_000
    with target.transaction() as tx:
        out = {}
        (total, first, last), = tx.execute(f"SELECT count(*), min(created_at), max(created_at) FROM {t}")
        out["total"] = total
        out["first_message"] = ms_to_iso(to_ms(first)) if first is not None else None
        out["last_message"] = ms_to_iso(to_ms(last)) if last is not None else None
        day = target.day_of("created_at")
        per_day = dict(tx.execute(f"SELECT {day} AS day, count(*) FROM {t} WHERE created_at >= {p}"
                                  " GROUP BY day ORDER BY day", (target.created_value(start_ms),)))
        days_iso = [ms_to_iso(start_ms + i * 86_400_000)[:10] for i in range(days)]
        out["per_day"] = [{"day": d, "count": per_day.get(d, 0)} for d in days_iso]
        for key, column in (("top_chats", "chat_id"), ("top_senders", "sender_id")):
            rows = tx.execute(f"SELECT {column}, count(*) AS n FROM {t} GROUP BY {column}"
                              f" ORDER BY n DESC, {column} LIMIT {p}", (top,))
            out[key] = [{column: k, "count": n} for k, n in rows]
        rows = tx.execute(f"SELECT msg_type, count(*) AS n FROM {t} GROUP BY msg_type ORDER BY n DESC, msg_type")
        out["by_type"] = [{"msg_type": k, "count": n} for k, n in rows]
        out["history"] = _history(target, tx)
        out["relayed_last_hour"] = tx.value(f"SELECT count(*) FROM {t} WHERE relayed_at >= {p}",
                                            (target.created_value(now - 3_600_000),))
    return out


def _history(target, tx):
    """Edits, recalls and reactions archived, and the messages they marked; None where the archive has
    no history yet (a role that could not run this version's DDL)."""
    state, events = archive_shape(target, tx)
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
