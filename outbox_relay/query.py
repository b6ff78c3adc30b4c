"""The read side: search and stats over the target, plus what the outbox still holds.

Keywords are always bound parameters. On PostgreSQL, LIKE's own wildcards are
escaped so `%` and `_` match literally, and ILIKE '%…%' can use the pg_trgm GIN
index that `init-db` creates where it may; without it PostgreSQL scans, which
is slower but gives the same answer.
"""

import datetime as dt
import re
import time

from .errors import TargetError

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value, option="--since", now=None):
    """'7d', '12h', '2026-11-01', '2026-11-01T08:00' (UTC unless an offset is given) -> epoch ms."""
    if value is None:
        return None
    now = time.time() if now is None else now
    m = _RELATIVE.match(value)
    if m:
        return int((now - int(m.group(1)) * _UNITS[m.group(2).lower()]) * 1000)
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} {value!r}: use a date (2026-11-01), a date-time "
                         "(2026-11-01T08:00) or an age (30m, 12h, 7d, 2w)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)


def _iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


def like_escape(keyword):
    return keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _ms(value):
    """A created_at from either dialect (datetime or ISO text) -> epoch ms."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp() * 1000)


def _row(message_id, chat_id, sender_id, msg_type, text, created_ms, source, where):
    return {"message_id": message_id, "chat_id": chat_id, "sender_id": sender_id, "msg_type": msg_type,
            "text": text, "created_at": _iso(created_ms) if created_ms is not None else None,
            "created_ms": created_ms, "source": source, "where": where}


def search_target(target, keyword, *, chat=None, sender=None, msg_type=None, since_ms=None,
                  until_ms=None, limit=20):
    pg = target.dialect == "postgresql"
    mark = "%s" if pg else "?"
    if pg:
        where = [f"text ILIKE {mark} ESCAPE '\\'"]
        params = ["%" + like_escape(keyword) + "%"]
    else:
        where = [f"instr(lower(text), lower({mark})) > 0"]
        params = [keyword]
    for column, value in (("chat_id", chat), ("sender_id", sender), ("msg_type", msg_type)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if since_ms is not None:
        where.append(f"created_at >= {mark}")
        params.append(_iso(since_ms))
    if until_ms is not None:
        where.append(f"created_at < {mark}")
        params.append(_iso(until_ms))
    sql = (f"SELECT message_id, chat_id, sender_id, msg_type, text, created_at, source"
           f" FROM {target.quoted} WHERE {' AND '.join(where)}"
           f" ORDER BY created_at DESC LIMIT {mark}")
    params.append(limit)

    def run(conn):
        cur = conn.cursor()
        cur.execute(sql, params)
        rows = cur.fetchall()
        cur.close()
        return rows
    return [_row(r[0], r[1], r[2], r[3], r[4], _ms(r[5]), r[6], "target") for r in target.run(run)]


def search_messages(outbox, target, keyword, *, limit=20, **filters):
    """Target and outbox together, newest first; a message in both is shown once (as delivered)."""
    results, target_error = {}, None
    if target is not None:
        try:
            for row in search_target(target, keyword, limit=limit, **filters):
                results[row["message_id"]] = row
        except TargetError as e:
            target_error = str(e)
    local = outbox.search(keyword, chat=filters.get("chat"), sender=filters.get("sender"),
                          msg_type=filters.get("msg_type"), since_ms=filters.get("since_ms"),
                          until_ms=filters.get("until_ms"), limit=limit)
    for state, m in local:
        if m.message_id not in results:
            results[m.message_id] = _row(m.message_id, m.chat_id, m.sender_id, m.msg_type, m.text,
                                         m.created_at, m.source, f"outbox ({state})")
    ordered = sorted(results.values(), key=lambda r: (r["created_ms"] or 0, r["message_id"]), reverse=True)
    for r in ordered:
        r.pop("created_ms")
    return {"keyword": keyword, "count": min(len(ordered), limit), "results": ordered[:limit],
            "target_error": target_error}


def target_stats(target, *, days=7, top=10, now=None):
    pg = target.dialect == "postgresql"
    t = target.quoted
    mark = "%s" if pg else "?"
    now = time.time() if now is None else now
    start_day = dt.datetime.fromtimestamp(now, dt.timezone.utc).date() - dt.timedelta(days=days - 1)
    start_iso = dt.datetime.combine(start_day, dt.time(), dt.timezone.utc).isoformat(timespec="milliseconds")
    hour_ago = _iso(int((now - 3600) * 1000))
    day_expr = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')" if pg else "substr(created_at, 1, 10)"

    def run(conn):
        cur = conn.cursor()
        out = {}
        cur.execute(f"SELECT count(*), min(created_at), max(created_at) FROM {t}")
        total, first, last = cur.fetchone()
        out["total"] = total
        out["first_message"] = _iso(_ms(first)) if first is not None else None
        out["last_message"] = _iso(_ms(last)) if last is not None else None
        cur.execute(f"SELECT {day_expr} AS day, count(*) FROM {t} WHERE created_at >= {mark}"
                    " GROUP BY day ORDER BY day", (start_iso,))
        per_day = dict(cur.fetchall())
        out["per_day"] = [{"day": (start_day + dt.timedelta(days=i)).isoformat(),
                           "count": per_day.get((start_day + dt.timedelta(days=i)).isoformat(), 0)}
                          for i in range(days)]
        for key, column in (("top_chats", "chat_id"), ("top_senders", "sender_id")):
            cur.execute(f"SELECT {column}, count(*) AS n FROM {t} GROUP BY {column}"
                        f" ORDER BY n DESC, {column} LIMIT {mark}", (top,))
            out[key] = [{column: k, "count": n} for k, n in cur.fetchall()]
        cur.execute(f"SELECT msg_type, count(*) AS n FROM {t} GROUP BY msg_type ORDER BY n DESC, msg_type")
        out["by_type"] = [{"msg_type": k, "count": n} for k, n in cur.fetchall()]
        cur.execute(f"SELECT count(*) FROM {t} WHERE relayed_at >= {mark}", (hour_ago,))
        out["relayed_last_hour"] = cur.fetchone()[0]
        cur.close()
        return out
    return target.run(run)


def collect_stats(outbox, target, *, days=7, top=10):
    result = {"target": target.display_url if target else None, "table": target.table if target else None}
    try:
        result.update(target_stats(target, days=days, top=top))
        result["target_error"] = None
    except TargetError as e:
        result["target_error"] = str(e)
    try:
        info = target.check() if target.dialect == "postgresql" else {}
        result["connections"] = {k: info.get(k) for k in (
            "connections_in_use", "max_connections", "role_connection_limit", "role_connections_in_use",
            "relay_connections", "pool_size")} if info else None
    except TargetError:
        result["connections"] = None
    age = outbox.oldest_pending_age()
    result["outbox"] = {"path": outbox.path, "counts": outbox.counts(),
                        "oldest_pending_age_s": round(age, 3) if age is not None else None,
                        "delivered_last_hour": outbox.delivered_since(time.time() - 3600)}
    return result
