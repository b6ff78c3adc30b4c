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


# Where a search index exists, a search reads first the newest WALK messages (after the filters) in
# created_at order: a keyword in at least --limit of them is answered by that walk alone. A rarer one
# goes to the n-gram index, newest first, over a window of time sized by what the walk found (the
# walk's span x 2 x limit / matches: about twice --limit matches expected), widened eightfold until
# --limit are found or the window is all. So it fetches about --limit rows however common the keyword:
# the planner cannot tell a common keyword from a rare one well enough to do this itself (it takes a
# keyword's pairs of characters as independent, and they are not), and fetching all the matches of a
# common one costs seconds at 10 M rows.
WALK = 2_000
WIDEN = 8


def search_target(target, keyword, *, limit=20, **filters):
    with target.transaction() as tx:
        target.tune_search(tx)
        shape = search_shape(target, tx, keyword)
        if shape[2].get("text"):
            rows = tx.execute(*walk_query(target, keyword, limit=limit, **filters))
            if len(rows) < limit:
                rows = _by_windows(target, tx, keyword, limit, shape, filters, found=len(rows))
        else:
            rows = tx.execute(*search_query(target, tx, keyword, limit=limit, shape=shape, parts=("text",),
                                            **filters))
        sql, params = search_query(target, tx, keyword, limit=limit, shape=shape, parts=("versions",), **filters)
        if sql:  # the words first sent and the edits' words: their own (small, indexed) branches
            rows = sorted(set(rows) | set(tx.execute(sql, params)), key=lambda r: (r[5], r[0]), reverse=True)
    return [_row(*r[:5], to_ms(r[5]), r[6], "target", to_ms(r[7]) if r[7] is not None else None,
                 to_ms(r[8]) if r[8] is not None else None) for r in rows[:limit]]


def search_shape(target, tx, keyword):
    """What one search of `keyword` in this archive asks, found once for all its queries: the target's
    search_shape (state columns, events table, index plan) and what the n-gram index is asked for."""
    state, events, indexes = target.search_shape(tx)
    grams = target.search_grams(tx, keyword) if "grams" in indexes.values() else None
    return state, events, indexes, grams


def _by_windows(target, tx, keyword, limit, shape, filters, found):
    where, params = _filters(target, **filters)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    (newest, walked), = tx.execute(
        f"SELECT max(created_at), min(created_at) FROM (SELECT created_at FROM {target.quoted}{condition}"
        f" ORDER BY created_at DESC LIMIT {target.param}) AS walked", params + [WALK])
    if newest is None:
        return []
    first = to_ms(tx.value(f"SELECT min(created_at) FROM {target.quoted}{condition}", params or None))
    newest, since = to_ms(newest), max(filters.get("since_ms") or first, first)
    window = max(newest - to_ms(walked), 1000) * 2 * limit / max(found, 1)
    while True:
        bound = int(newest - window)
        last = bound <= since  # the window reaches the first message (or --since): nothing is left out
        rows = tx.execute(*search_query(target, tx, keyword, limit=limit, shape=shape, parts=("text",),
                                        **dict(filters, since_ms=filters.get("since_ms") if last else bound)))
        if len(rows) >= limit or last:
            return rows
        window *= WIDEN


def _filters(target, chat=None, sender=None, msg_type=None, since_ms=None, until_ms=None):
    p = target.param
    filters, params = [], []
    for column, value in (("chat_id", chat), ("sender_id", sender), ("msg_type", msg_type)):
        if value is not None:
            filters.append(f"{column} = {p}")
            params.append(value)
    if since_ms is not None:
        filters.append(f"created_at >= {p}")
        params.append(target.created_value(since_ms))
    if until_ms is not None:
        filters.append(f"created_at < {p}")
        params.append(target.created_value(until_ms))
    return filters, params


def walk_query(target, keyword, *, limit=20, **filters):
    """(sql, params): the newest matches among the newest WALK messages the filters allow (their
    indexes with created_at serve the walk), by the words they show now."""
    where, params = _filters(target, **filters)
    condition, pattern = target.contains("text", keyword)
    state_columns = ", ".join(COLUMNS)
    return (f"SELECT {state_columns} FROM (SELECT {state_columns} FROM {target.quoted}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY created_at DESC LIMIT {target.param}) AS recent WHERE {condition}"
            f" ORDER BY created_at DESC LIMIT {target.param}", params + [WALK, pattern, limit])


def search_query(target, tx, keyword, *, limit=20, shape=None, parts=("text", "versions"), **filters):
    """(sql, params) of a search in this archive as it is (its columns, its events table, its indexes):
    one branch per version of the words, each through its own index. parts: "text" (the words now),
    "versions" (the words first sent, each edit's); (None, None) where the archive has none of them."""
    p = target.param
    where, filter_params = _filters(target, **filters)
    state, events, indexes, grams = shape or search_shape(target, tx, keyword)
    columns = ", ".join(c if state or not c.endswith("ed_at") else f"NULL AS {c}" for c in COLUMNS)
    branches = [target.indexed_contains("text", keyword, indexes.get("text"), grams)] if "text" in parts else []
    if state and "versions" in parts:
        condition, params = target.indexed_contains("original_text", keyword, indexes.get("original_text"), grams)
        # Said outright, not left to be implied: the planner then counts this branch's rows from the
        # column's null fraction (only edited messages have words first sent) and reads them through
        # their partial index. Without it, it guessed one row in 600 and walked created_at through all
        # 10 M rows for none (1.7 s a search, measured).
        condition = f"original_text IS NOT NULL AND {condition}"
        if events and not indexes.get("original_text"):
            # No index on it: only edited messages have words first sent, and the events table's index
            # names them (else this branch alone would read the whole table: 0.25 s per 100,000 on MariaDB).
            condition = (f"message_id IN (SELECT message_id FROM {target.quote(target.events_table)}"
                         f" WHERE kind = {p}) AND {condition}")
            params = [EDITED] + params
        branches.append((condition, params))
    if events and "versions" in parts:
        condition, params = target.indexed_contains("text", keyword, indexes.get("events.text"), grams)
        branches.append((f"message_id IN (SELECT message_id FROM {target.quote(target.events_table)}"
                         f" WHERE kind = {p} AND {condition})", [EDITED] + params))
    if not branches:
        return None, None
    sql, params = [], []
    for n, (condition, condition_params) in enumerate(branches):
        sql.append(f"SELECT * FROM (SELECT {columns} FROM {target.quoted}"
                   f" WHERE {' AND '.join([condition] + where)} ORDER BY created_at DESC LIMIT {p}) AS v{n}")
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
