"""`export`: the archive (or a chat, a sender, a time range of it) as a file, in constant memory.

One query streams every message joined to its history, in order of (created_at, message_id); the rows
of one message are consecutive, so a line is written as soon as its message's last event has been read
and nothing else is held (the target's server-side cursor: targets/ `streamed`). JSON lines are the
format `put` reads back (message/exported.py, the one home of the line); CSV is the same fields for a
spreadsheet, each message's history as a JSON array in one cell.
"""

import csv
import itertools
import json

from .. import jsonio
from ..message import exported
from ..progress import NO_PROGRESS, NoProgress
from ..timeconv import to_ms

FORMATS = ("jsonl", "csv")
BOM = "\ufeff"  # what makes Excel read a CSV file as UTF-8 (Chinese text) instead of the locale's code page
# The CSV's columns: a message's fields (its raw event left out: a spreadsheet cell holds 32,767
# characters, and raw is for machines, which take the JSON lines), then its history.
CSV_FIELDS = tuple(f for f in exported.MESSAGE_FIELDS if f != "raw") + (exported.HISTORY,)
_JSON_FIELDS = frozenset(("content", "mentions", "raw", "original_content"))


def export(target, out, *, fmt="jsonl", chats=(), senders=(), since_ms=None, until_ms=None, bom=False,
           progress=NO_PROGRESS):
    """Write the messages the filters select to `out` (a text stream opened with newline=""), oldest
    first. -> {"messages": n, "events": n, "history": whether the events table was there}."""
    where, params = _filters(target, chats, senders, since_ms, until_ms)
    with target.transaction() as tx:
        history = target.table_exists(tx, target.events_table)
    total = None if isinstance(progress, NoProgress) else _count(target, where, params)
    task = progress.task("export", total=total)
    write = _csv_writer(out, bom) if fmt == "csv" else _jsonl_writer(out)
    counts = {"messages": 0, "events": 0, "history": history}
    with target.streamed(_select(target, where, history), params) as rows:
        for _, group in itertools.groupby(rows, key=lambda r: r[0]):
            message, events = _message(group, history)
            write(exported.line(message, events))
            counts["messages"] += 1
            counts["events"] += len(events)
            task.advance()
    return counts


def _filters(target, chats, senders, since_ms, until_ms):
    where, params = [], []
    for column, values in (("m.chat_id", chats), ("m.sender_id", senders)):
        if values:
            sql, ps = target.id_list(column, list(values))
            where.append(sql)
            params += ps
    for op, ms in ((">=", since_ms), ("<", until_ms)):
        if ms is not None:
            where.append(f"m.created_at {op} {target.param}")
            params.append(target.created_value(ms))
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _select(target, where, history):
    columns = [f"m.{c}" for c in exported.MESSAGE_FIELDS]
    if not history:
        return f"SELECT {', '.join(columns)} FROM {target.quoted} m{where} ORDER BY m.created_at, m.message_id"
    columns += [f"e.{c}" for c in exported.EVENT_FIELDS]
    return (f"SELECT {', '.join(columns)} FROM {target.quoted} m LEFT JOIN {target.quote(target.events_table)} e"
            f" ON e.message_id = m.message_id{where} ORDER BY m.created_at, m.message_id, e.happened_at, e.event_id")


def _count(target, where, params):
    return target.query(f"SELECT count(*) FROM {target.quoted} m{where}", params or None)[0][0]


def _message(group, history):
    """The rows of one message (one per event, or one with NULL events) -> (message, [event])."""
    n = len(exported.MESSAGE_FIELDS)
    message, events = None, []
    for row in group:
        if message is None:
            message = _values(exported.MESSAGE_FIELDS, row[:n])
        if history and row[n] is not None:
            events.append(_values(exported.EVENT_FIELDS, row[n:]))
    return message, events


def _values(names, values):
    out = {}
    for name, value in zip(names, values):
        if name in exported.TIME_FIELDS:
            value = to_ms(value)
        elif name in _JSON_FIELDS and isinstance(value, str):
            value = json.loads(value)  # SQLite and MySQL hand JSON back as text
        out[name] = value
    return out


def _jsonl_writer(out):
    def write(line):
        out.write(jsonio.dumps(line))
        out.write("\n")
    return write


def _csv_writer(out, bom):
    if bom:
        out.write(BOM)
    writer = csv.writer(out)  # quotes what holds a comma, a quote or a line break; lines end \r\n (RFC 4180)
    writer.writerow(CSV_FIELDS)

    def write(line):
        row = line[exported.KEY]
        writer.writerow([_cell(row[f]) for f in CSV_FIELDS[:-1]] + [jsonio.dumps(line[exported.HISTORY])])
    return write


def _cell(value):
    if value is None:
        return ""
    return value if isinstance(value, str) else jsonio.dumps(value)
