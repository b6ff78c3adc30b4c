"""`search`: the target and what the outbox still holds, newest first.

Keywords are always bound parameters and match literally (each database class says how:
`Target.contains`). On PostgreSQL ILIKE '%…%' can use the pg_trgm GIN index that `init-db`
creates where it may; without it the database scans, which is slower but gives the same answer.
"""

from ..errors import TargetError
from ..timeconv import ms_to_iso, to_ms


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
