"""What operators run every day: status, health, the end-to-end test, and human tables.

`status` asks the databases, never in-memory counters: outbox counts come from
SQLite, the relay's heartbeat from the row it writes there, reachability from a
real round trip to the target; health.judge() says what it all means.
"""

import time
import uuid

from . import health
from ..errors import OutboxRelayError, RelayLocked, TargetError
from ..intake.spool import Spool, spool_warnings
from ..sync.relay import Relay, RelayLock


def collect_status(cfg, outbox, target):
    """What the outbox holds, what the relay says of itself, whether the target answers, and the
    health judge's verdict over all of it."""
    now = time.time()
    view = health.outbox_view(outbox, cfg, now)
    facts = health.outbox_facts(outbox, health.Facts(relay=view))
    counts, age = facts.counts, facts.oldest_pending_age
    beat = view.heartbeat or health.Heartbeat()
    report = {
        "outbox": {"path": outbox.path, "counts": counts,
                   "oldest_pending_age_s": round(age, 3) if age is not None else None,
                   "problem": facts.outbox_problem,
                   "schema_version": outbox.schema_version() if counts is not None else None,
                   "max_pending": outbox.max_pending, "overflow": outbox.overflow, **outbox.sizes()},
        "relay": {"running": view.running,
                  "heartbeat_age_s": round(beat.age(now), 3) if beat.beat_at else None,
                  "last_success": beat.last_success, "last_error": beat.last_error,
                  "last_error_at": beat.last_error_at, "unavailable_since": beat.unavailable_since,
                  "pid": beat.pid},
        "target": None,
        "spool": Spool(cfg.spool).status(now),
    }
    if target is not None:
        entry = {"url": target.display_url, "table": target.table, "dialect": target.name}
        try:
            entry["latency_ms"] = round(target.ping() * 1000, 2)
            entry["reachable"] = True
        except TargetError as e:
            entry["reachable"], entry["error"] = False, str(e)
            facts.target_error = str(e)
        report["target"] = entry
    facts.warnings.extend(spool_warnings(report["spool"], view.running))
    verdict = health.judge(facts, cfg, expect_relay=False, now=now)
    report["health"] = {"level": verdict.level, "reasons": verdict.reasons}
    report["warnings"] = verdict.reasons
    return report


def health_verdict(report):
    """(exit code, one line) of a status report: 0 healthy, 1 degraded, 2 down."""
    verdict = health.Verdict(report["health"]["level"], report["health"]["reasons"])
    if verdict.level != health.OK:
        return verdict.code, verdict.line()
    counts, target = report["outbox"]["counts"], report.get("target")
    latency = f", target {target['latency_ms']} ms" if target and target["reachable"] else ""
    return verdict.code, f"OK: {counts['pending']} pending, {counts['delivered']} delivered (kept){latency}"


def end_to_end_test(cfg, outbox, target, timeout):
    """Put one test message and wait for it in the target. (ok, line).

    With a relay running we only watch the target; without one we relay it
    ourselves (holding the relay lock), so the command works on its own too.
    """
    message_id = f"outbox-relay-test-{uuid.uuid4().hex}"
    started = time.monotonic()
    outbox.put({"message_id": message_id, "chat_id": "outbox-relay-test", "sender_id": "outbox-relay",
                "msg_type": "text", "text": "outbox-relay end-to-end test message"})
    deadline = started + timeout
    lock = None
    try:
        try:
            lock = RelayLock(cfg.outbox).acquire()
        except RelayLocked:
            lock = None
        if lock is not None:
            relay = Relay(outbox, target, batch_size=cfg.batch_size, backoff_max=max(1.0, timeout / 4))
            last_error = None
            while time.monotonic() < deadline:
                try:
                    relay.step()
                    if _in_target(target, message_id):
                        return True, _reached(target, message_id, started)
                except (TargetError, OutboxRelayError) as e:
                    last_error = str(e)
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            why = f": {last_error}" if last_error else ""
            return False, (f"FAILED: test message not in the target after {timeout:g} s{why} "
                           "(it stays in the outbox and is delivered when the target is back)")
        while time.monotonic() < deadline:
            try:
                if _in_target(target, message_id):
                    return True, _reached(target, message_id, started, " (via the running relay)")
            except TargetError:
                pass
            time.sleep(0.05)
        return False, (f"FAILED: test message not in the target after {timeout:g} s "
                       "(the running relay has not delivered it; see `outbox-relay status`)")
    finally:
        if lock is not None:
            lock.release()


def _reached(target, message_id, started, how=""):
    """The OK line (the test row removed from the target, where we may)."""
    return (f"OK: test message {message_id} reached {target.describe()} in"
            f" {(time.monotonic() - started) * 1000:.0f} ms{how}{_remove(target, message_id)}")


def _remove(target, message_id):
    """Delete the test row so it does not count in stats; many RDS roles may not delete: say so."""
    try:
        target.delete(message_id)
        return "; test row removed"
    except TargetError:
        return "; test row kept (no DELETE privilege), chat_id outbox-relay-test"


def _in_target(target, message_id):
    return bool(target.existing_ids([message_id]))


# -- human output -----------------------------------------------------------------------

def format_table(headers, rows):
    """Aligned columns; width measured in terminal cells (CJK characters take two)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _width(text):
    import unicodedata
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _clock(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def _age(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(report):
    o, r = report["outbox"], report["relay"]
    lines = [f"outbox   {o['path']} (schema {o['schema_version']}; {_bytes(o['file'])}, WAL {_bytes(o['wal'])},"
             f" {_bytes(o['free_bytes'])} free; max_pending {o['max_pending']}, overflow {o['overflow']})"]
    if o["counts"] is not None:
        lines.append(format_table(["state", "rows"], [[k, v] for k, v in o["counts"].items()]))
        lines.append(f"oldest pending: {_age(o['oldest_pending_age_s'])}")
    else:
        lines.append(f"OUTBOX UNREADABLE: {o['problem']}")
    lines.append(f"relay    {'running' if r['running'] else 'not running'}"
                 f"{' (pid %s)' % r['pid'] if r['running'] and r['pid'] else ''}; "
                 f"last success {_clock(r['last_success'])}; heartbeat {_age(r['heartbeat_age_s'])} ago")
    if r["last_error"]:
        lines.append(f"         last error {_clock(r['last_error_at'])}: {r['last_error']}")
    t = report.get("target")
    if t is not None:
        state = f"reachable ({t['latency_ms']} ms)" if t["reachable"] else f"UNREACHABLE: {t['error']}"
        lines.append(f"target   {t['url']} table {t['table']}: {state}")
    sp = report.get("spool")
    if sp is not None:
        lines.append(f"spool    {sp['path']}: " + (sp["error"] or f"{sp['waiting']} waiting (oldest "
                     f"{_age(sp['oldest_waiting_age_s'])}), {sp['rejected']} set aside, {sp['writing']} being written"))
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _bytes(n):
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_check(info):
    keys = [("target", "target"), ("server_version", "server"), ("user", "user"),
            ("latency_ms", "round trip ms"), ("connections_in_use", "connections in use"),
            ("max_connections", "server max_connections"), ("reserved_connections", "reserved for superusers"),
            ("role_connection_limit", "role connection limit"), ("role_connections_in_use", "role connections"),
            ("relay_connections", "outbox-relay connections"), ("pool_size", "our pool_size"),
            ("table", "table"), ("schema_version", "schema version"), ("path", "path")]
    unknown = {"role_connection_limit": "none", "relay_connections": "unknown"}  # what None means there
    rows = [[label, unknown.get(k) if info.get(k) is None else info.get(k)] for k, label in keys if k in info]
    if "table_problems" in info:
        problems = info["table_problems"]
        rows.append(["table columns", "; ".join(problems) if problems else "ok" if problems is not None
                     else "no table yet (`run` creates it where allowed; else `schema --sql` for the DBA)"])
    return format_table(["check", "value"], rows)


def _or(value, instead):
    return instead if value is None else value


def format_search(result):
    lines = []
    if result.get("target_error"):
        lines.append(f"warning: the target could not be searched ({result['target_error']}); "
                     "showing the outbox only")
    if not result["results"]:
        lines.append(f"no message contains {result['keyword']!r}")
        return "\n".join(lines)
    rows = [[r["created_at"][:19].replace("T", " ") if r["created_at"] else "", r["chat_id"], r["sender_id"],
             r["msg_type"], r["where"], " ".join((r["text"] or "").split())[:60]] for r in result["results"]]
    lines.append(format_table(["created (UTC)", "chat", "sender", "type", "where", "text"], rows))
    lines.append(f"{result['count']} message(s)" + (f", the newest {result['count']}: more match (raise --limit)"
                                                     if result["truncated"] else ""))
    return "\n".join(lines)


def format_stats(s):
    lines = []
    if s.get("target_error"):
        lines.append(f"warning: the target could not be read: {s['target_error']}")
    else:
        lines.append(f"target   {s['target']} table {s['table']}: {s['total']} messages "
                     f"({s['first_message'] or '-'} .. {s['last_message'] or '-'}); "
                     f"{s['relayed_last_hour']} relayed in the last hour")
        lines.append("")
        lines.append(format_table(["day (UTC)", "messages"], [[d["day"], d["count"]] for d in s["per_day"]]))
        lines.append("")
        lines.append(format_table(["top chat", "messages"], [[r["chat_id"], r["count"]] for r in s["top_chats"]]))
        lines.append("")
        lines.append(format_table(["top sender", "messages"],
                                  [[r["sender_id"], r["count"]] for r in s["top_senders"]]))
        lines.append("")
        lines.append(format_table(["type", "messages"], [[r["msg_type"], r["count"]] for r in s["by_type"]]))
    o = s["outbox"]
    lines.append("")
    lines.append(f"outbox   {o['path']}: " + ", ".join(f"{k} {v}" for k, v in o["counts"].items())
                 + f"; oldest pending {_age(o['oldest_pending_age_s'])}")
    if s.get("connections"):
        c = s["connections"]
        lines.append(f"connections: {c['connections_in_use']} in use of {c['max_connections']} on the server; "
                     f"outbox-relay holds {_or(c['relay_connections'], 'an unknown number')}"
                     f" (pool_size {c['pool_size']}); role limit "
                     f"{c['role_connection_limit'] if c['role_connection_limit'] is not None else 'none'}")
    return "\n".join(lines)
