"""Legal holds: chats whose messages retention keeps, whatever their age. Stored in the target beside the
archive (feishu_messages_holds: the chats held now; feishu_messages_hold_audit: every add and removal,
who, when and why, never deleted), so every relay and every operator sees the same holds."""

import getpass

from ..errors import ConfigError
from ..schema import target as schema
from ..timeconv import ms_to_iso, now_ms, to_ms

ADD, REMOVE = "add", "remove"


def who(by=None):
    """The person a change is recorded as: --by, else the OS user."""
    return by or getpass.getuser()


def _make_tables(target, tx):
    for sql in (target.create_table_statements(schema.holds_table(target.table), schema.HOLDS)
                + target.create_table_statements(schema.hold_audit_table(target.table), schema.HOLD_AUDIT)):
        tx.execute(sql)


def add_hold(target, chat_id, reason, by=None):
    """Hold `chat_id` (again, with this reason, if held already). -> the hold as recorded."""
    _check(chat_id, reason)
    p, by, at = target.param, who(by), target.created_value(now_ms())
    holds = target.quote(schema.holds_table(target.table))
    with target.transaction(timeout=False) as tx:
        _make_tables(target, tx)
        tx.execute(f"INSERT INTO {holds} (chat_id, reason, held_by, held_at) VALUES ({p}, {p}, {p}, {p})"
                   f" {target.upsert_clause('chat_id', ('reason', 'held_by', 'held_at'))}", (chat_id, reason, by, at))
        _audit(target, tx, chat_id, ADD, reason, by, at)
    return {"chat_id": chat_id, "reason": reason, "by": by, "at": ms_to_iso(to_ms(at))}


def remove_hold(target, chat_id, reason, by=None):
    """End the hold on `chat_id`; the audit keeps that it was held and who ended it. ConfigError when the
    chat is not held."""
    _check(chat_id, reason)
    p, by, at = target.param, who(by), target.created_value(now_ms())
    with target.transaction(timeout=False) as tx:
        _make_tables(target, tx)
        tx.execute(f"DELETE FROM {target.quote(schema.holds_table(target.table))} WHERE chat_id = {p}", (chat_id,))
        if not tx.rowcount:
            raise ConfigError(f"chat {chat_id} is not under hold (`outbox-relay hold list`)")
        _audit(target, tx, chat_id, REMOVE, reason, by, at)
    return {"chat_id": chat_id, "reason": reason, "by": by, "at": ms_to_iso(to_ms(at))}


def list_holds(target):
    """{"holds": [chat held now], "audit": [every change, oldest first]}; empty where none was ever made."""
    with target.transaction() as tx:
        if not target.table_exists(tx, schema.holds_table(target.table)):
            return {"holds": [], "audit": []}
        holds = tx.execute(f"SELECT chat_id, reason, held_by, held_at FROM"
                           f" {target.quote(schema.holds_table(target.table))} ORDER BY chat_id")
        audit = tx.execute(f"SELECT chat_id, action, reason, done_by, done_at FROM"
                           f" {target.quote(schema.hold_audit_table(target.table))} ORDER BY done_at, chat_id")
    return {"holds": [{"chat_id": c, "reason": r, "by": b, "at": ms_to_iso(to_ms(a))} for c, r, b, a in holds],
            "audit": [{"chat_id": c, "action": x, "reason": r, "by": b, "at": ms_to_iso(to_ms(a))}
                      for c, x, r, b, a in audit]}


def held_chats(target, tx):
    """The chat_ids under hold now (inside the caller's transaction)."""
    if not target.table_exists(tx, schema.holds_table(target.table)):
        return []
    return [r[0] for r in tx.execute(f"SELECT chat_id FROM {target.quote(schema.holds_table(target.table))}")]


def _audit(target, tx, chat_id, action, reason, by, at):
    p = target.param
    tx.execute(f"INSERT INTO {target.quote(schema.hold_audit_table(target.table))} (chat_id, action, reason,"
               f" done_by, done_at) VALUES ({p}, {p}, {p}, {p}, {p})", (chat_id, action, reason, by, at))


def _check(chat_id, reason):
    if not chat_id or not chat_id.strip():
        raise ConfigError("a hold names a chat_id")
    if not reason or not reason.strip():
        raise ConfigError("--reason is required: a hold's audit says why")
