"""The read side: search and stats over the target, plus what the outbox still holds.

Keywords are always bound parameters and match literally (each database class says how:
`Target.contains`). On PostgreSQL ILIKE '%…%' can use the pg_trgm GIN index that `init-db`
creates where it may; without it the database scans, which is slower but gives the same answer.
"""

import time

from ..errors import TargetError
from ..timeconv import day_start_ms, ms_to_iso, now_ms, parse_when, to_ms

__all__ = ["parse_when", "search_messages", "search_target", "target_stats", "collect_stats"]


def _row(message_id, chat_id, sender_id, msg_type, text, created_ms, source, where):
    return {"message_id": message_id, "chat_id": chat_id, "sender_id": sender_id, "msg_type": msg_type,
            "text": text, "created_at": ms_to_iso(created_ms) if created_ms is not None else None,
            "created_ms": created_ms, "source": source, "where": where}


def search_target(target, keyword, *, chat=None, sender=None, msg_type=None, since_ms=None,
                  until_ms=None, limit=20):
    p = target.param
    condition, pattern = target.contains("text", keyword)
    where, params = [condition], [pattern]
    for column, value in (("chat_id", chat), ("sender_id", sender), ("msg_type", msg_type)):
        if value is not None:
            where.append(f"{column} = {p}")
            params.append(value)
    if since_ms is not None:
        where.append(f"created_at >= {p}")
        params.append(target.created_value(since_ms))
    if until_ms is not None:
        where.append(f"created_at < {p}")
        params.append(target.created_value(until_ms))
    sql = (f"SELECT message_id, chat_id, sender_id, msg_type, text, created_at, source"
           f" FROM {target.quoted} WHERE {' AND '.join(where)}"
           f" ORDER BY created_at DESC LIMIT {p}")
    params.append(limit)
    return [_row(r[0], r[1], r[2], r[3], r[4], to_ms(r[5]), r[6], "target") for r in target.query(sql, params)]


def search_messages(outbox, target, keyword, *, limit=20, **filters):
    """Target and outbox together, newest first; a message in both is shown once (as delivered)."""
    results, target_error = {}, None
    # One more than asked from each side: whether the list was cut at --limit is then known.
    if target is not None:
        try:
            for row in search_target(target, keyword, limit=limit + 1, **filters):
                results[row["message_id"]] = row
        except TargetError as e:
            target_error = str(e)
    for state, m in outbox.search(keyword, limit=limit + 1, **filters):
        if m.message_id not in results:
            results[m.message_id] = _row(m.message_id, m.chat_id, m.sender_id, m.msg_type, m.text,
                                         m.created_at, m.source, f"outbox ({state})")
    ordered = sorted(results.values(), key=lambda r: (r["created_ms"] or 0, r["message_id"]), reverse=True)
    for r in ordered:
        r.pop("created_ms")
    return {"keyword": keyword, "count": min(len(ordered), limit), "results": ordered[:limit],
            "truncated": len(ordered) > limit, "target_error": target_error}


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
        out["relayed_last_hour"] = tx.value(f"SELECT count(*) FROM {t} WHERE relayed_at >= {p}",
                                            (target.created_value(now - 3_600_000),))
    return out


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
