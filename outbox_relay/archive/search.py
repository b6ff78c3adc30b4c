"""`search`: the target and what the outbox still holds, newest first.

A message is found by any version of its words: the text the chat shows now, the words first archived
(`original_text`, kept when an edit replaced them) and every edit's words (the events table: edits in
between are only there). Each version is one branch of a UNION, each newest first with its own LIMIT,
so every branch can be served by its own index and the query never reads more than --limit rows per
branch once an index finds them. An archive whose events table (or its columns) a role could not make
is searched by what it has.

Keywords are always bound parameters and match literally (each database class says how:
`Target.indexed_contains`, through the search index `init-db` made where it may: on PostgreSQL an
n-gram GIN index, pg_bigm's or pg_trgm's, see targets/postgres_read.py); without one the database
scans, which is slower but gives the same answer.
"""

from ..errors import TargetError
from ..message.events import EDITED
from ..timeconv import ms_to_iso, to_ms

COLUMNS = ("message_id", "chat_id", "sender_id", "msg_type", "text", "created_at", "source", "edited_at",
           "recalled_at")


def _row(message_id, chat_id, sender_id, msg_type, text, created_ms, source, where, edited_ms=None,
         recalled_ms=None):
    return {"message_id": message_id, "chat_id": chat_id, "sender_id": sender_id, "msg_type": msg_type,
            "text": text, "created_at": _iso(created_ms), "created_ms": created_ms, "source": source,
            "where": where, "edited_at": _iso(edited_ms), "recalled_at": _iso(recalled_ms)}


def _iso(ms):
    return ms_to_iso(ms) if ms is not None else None


def search_target(target, keyword, *, limit=20, **filters):
    with target.transaction() as tx:
        sql, params = search_query(target, tx, keyword, limit=limit, **filters)
        rows = tx.execute(sql, params)
    return [_row(*r[:5], to_ms(r[5]), r[6], "target", to_ms(r[7]) if r[7] is not None else None,
                 to_ms(r[8]) if r[8] is not None else None) for r in rows]


def search_query(target, tx, keyword, *, chat=None, sender=None, msg_type=None, since_ms=None, until_ms=None,
                 limit=20):
    """(sql, params) of a search in this archive as it is (its columns, its events table, its indexes)."""
    p = target.param
    filters, filter_params = [], []
    for column, value in (("chat_id", chat), ("sender_id", sender), ("msg_type", msg_type)):
        if value is not None:
            filters.append(f"{column} = {p}")
            filter_params.append(value)
    if since_ms is not None:
        filters.append(f"created_at >= {p}")
        filter_params.append(target.created_value(since_ms))
    if until_ms is not None:
        filters.append(f"created_at < {p}")
        filter_params.append(target.created_value(until_ms))
    state, events, indexes = target.search_shape(tx)
    columns = ", ".join(c if state or not c.endswith("ed_at") else f"NULL AS {c}" for c in COLUMNS)
    branches = [target.indexed_contains("text", keyword, indexes.get("text"))]
    if state:
        branches.append(target.indexed_contains("original_text", keyword, indexes.get("original_text")))
    if events:
        condition, params = target.indexed_contains("text", keyword, indexes.get("events.text"))
        branches.append((f"message_id IN (SELECT message_id FROM {target.quote(target.events_table)}"
                         f" WHERE kind = {p} AND {condition})", [EDITED] + params))
    sql, params = [], []
    for n, (condition, condition_params) in enumerate(branches):
        sql.append(f"SELECT * FROM (SELECT {columns} FROM {target.quoted}"
                   f" WHERE {' AND '.join([condition] + filters)} ORDER BY created_at DESC LIMIT {p}) AS v{n}")
        params += condition_params + filter_params + [limit]
    return " UNION ".join(sql) + f" ORDER BY created_at DESC LIMIT {p}", params + [limit]


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
        if m.message_id in results:
            continue
        if m.outbox_kind == "message":
            results[m.message_id] = _row(m.message_id, m.chat_id, m.sender_id, m.msg_type, m.text,
                                         m.created_at, m.source, f"outbox ({state})")
        else:  # an edit not yet delivered: its words, found before the relay brings them over
            results[m.message_id] = _row(m.message_id, m.chat_id, m.operator_id, m.msg_type, m.text,
                                         m.happened_at, m.source, f"outbox ({state} edit)", edited_ms=m.happened_at)
    ordered = sorted(results.values(), key=lambda r: (r["created_ms"] or 0, r["message_id"]), reverse=True)
    for r in ordered:
        r.pop("created_ms")
    return {"keyword": keyword, "count": min(len(ordered), limit), "results": ordered[:limit],
            "truncated": len(ordered) > limit, "target_error": target_error}
