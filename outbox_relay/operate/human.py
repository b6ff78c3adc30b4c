"""Output for people: aligned tables (CJK characters take two cells), ages, sizes, clock times, and the
text of every report a command prints (status, check, search, stats, the spool, both backfills)."""

import time
import unicodedata

from ..backfill.feishu import chat_label


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
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def clock(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def duration(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(report):
    o, r = report["outbox"], report["relay"]
    lines = [f"outbox   {o['path']} (schema {o['schema_version']}; {bytes_text(o['file'])}, WAL {bytes_text(o['wal'])},"
             f" {bytes_text(o['free_bytes'])} free; max_pending {o['max_pending']}, overflow {o['overflow']})"]
    if o["counts"] is not None:
        lines.append(format_table(["state", "rows"], [[k, v] for k, v in o["counts"].items()]))
        lines.append(f"oldest pending: {duration(o['oldest_pending_age_s'])}")
    else:
        lines.append(f"OUTBOX UNREADABLE: {o['problem']}")
    lines.append(f"relay    {'running' if r['running'] else 'not running'}"
                 f"{' (pid %s)' % r['pid'] if r['running'] and r['pid'] else ''}; "
                 f"last success {clock(r['last_success'])}; heartbeat {duration(r['heartbeat_age_s'])} ago")
    if r["last_error"]:
        lines.append(f"         last error {clock(r['last_error_at'])}: {r['last_error']}")
    if r["batch_cut"]:
        lines.append(f"         {r['batch_cut']}")
    t = report.get("target")
    if t is not None:
        state = f"reachable ({t['latency_ms']} ms)" if t["reachable"] else f"UNREACHABLE: {t['error']}"
        lines.append(f"target   {t['url']} table {t['table']}: {state}")
    sp = report.get("spool")
    if sp is not None:
        lines.append(f"spool    {sp['path']}: " + (sp["error"] or f"{spool_count(sp, 'waiting')} waiting (oldest "
                     f"{duration(sp['oldest_waiting_age_s'])}), {spool_count(sp, 'rejected')} set aside, "
                     f"{spool_count(sp, 'writing')} being written"))
    if report.get("reconcile") is not None:
        lines.extend(format_reconcile(report["reconcile"]))
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def format_reconcile(rc, chats=True):
    """Reconciliation with Feishu's history for people: off and why, or how far the archive is
    checked (in total and per chat), the gaps it filled and the calls it spent."""
    if not rc["enabled"]:
        return [f"reconcile {rc['off']}"]
    lines = [f"reconcile complete up to {clock(rc['complete_up_to'])} ({duration(rc['behind_s'])} ago);"
             f" {rc['gaps_24h']} gap(s) filled in 24 h; {rc['calls_last_hour']}/{rc['budget_per_hour']} calls"
             f" this hour, {rc['calls_total']} in all; last pass {clock(rc['last_pass_at'])}"]
    if chats and rc["chats"]:
        rows = [[chat_label(c), clock(c["complete_up_to"]), duration(c["behind_s"]), c["gaps_24h"],
                 "yes" if c["covered"] else "NOT COVERED (budget)", c["error"] or ""] for c in rc["chats"]]
        lines.append(format_table(["chat", "complete up to", "behind", "gaps 24 h", "covered", "error"], rows))
    return lines


def bytes_text(n):
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
    if "setting_problems" in info:
        rows.append(["server settings", "; ".join(info["setting_problems"]) or "ok"])
    if "read_problems" in info:
        rows.append(["search and stats", "; ".join(info["read_problems"]) or "indexed (search) and rolled up (stats)"])
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
             r["msg_type"], r["where"], _marks(r) + " ".join((r["text"] or "").split())[:60]]
            for r in result["results"]]
    lines.append(format_table(["created (UTC)", "chat", "sender", "type", "where", "text"], rows))
    lines.append(f"{result['count']} message(s)" + (f", the newest {result['count']}: more match (raise --limit)"
                                                     if result["truncated"] else ""))
    return "\n".join(lines)


def _marks(r):
    """What the chat would show beside a search result: [recalled], [edited] (its words now are shown)."""
    return "".join(f"[{word}] " for word, at in (("recalled", r.get("recalled_at")), ("edited", r.get("edited_at")))
                   if at)


def format_history(h):
    """`outbox-relay history` for people: the message first and now, then its events in order."""
    lines = []
    if h["target_error"]:
        lines.append(f"warning: the target could not be read ({h['target_error']})")
    m = h["message"]
    if m is None:
        lines.append(f"message {h['message_id']}: not in the archive" + (" yet" if h["events"] or h["waiting"] else ""))
    else:
        first, now = h["first"], h["now"]
        lines.append(f"message {m['message_id']} in {m['chat_id']} from {m['sender_id']} ({m['msg_type']}),"
                     f" sent {m['created_at'][:19].replace('T', ' ')} UTC")
        lines.append(f"first archived: {first['text']}")
        if now["edited_at"]:
            lines.append(f"now (edited {now['edited_at'][:19].replace('T', ' ')}): {now['text']}")
        if now["recalled_at"]:
            lines.append(f"recalled {now['recalled_at'][:19].replace('T', ' ')} ({now['recall_type'] or 'unknown'});"
                         " the words above are kept")
    rows = [[e["happened_at"][:23].replace("T", " ") if e["happened_at"] else "", e["kind"],
             e.get("operator_id") or "", _event_detail(e), e.get("where", "archive")]
            for e in h["events"] + h["waiting"]]
    if rows:
        lines.append(format_table(["when (UTC)", "event", "who", "what", "where"], rows))
    reactions = ", ".join(f"{emoji} ×{len(who)}" for emoji, who in h["reactions"].items())
    lines.append(f"reactions now: {reactions or 'none'}")
    return "\n".join(lines)


def _event_detail(e):
    if e["kind"] == "edited":
        return " ".join((e.get("text") or "").split())[:60]
    if e["kind"] == "recalled":
        return e.get("recall_type") or ""
    return e.get("emoji") or ""


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
        if s.get("history"):
            h = s["history"]
            lines.append("")
            lines.append(f"history  {h['edited']} edits ({h['messages_edited']} messages edited),"
                         f" {h['recalled']} recalls ({h['messages_recalled']} messages recalled),"
                         f" {h['reaction_added']} reactions added, {h['reaction_removed']} removed")
    o = s["outbox"]
    lines.append("")
    lines.append(f"outbox   {o['path']}: " + ", ".join(f"{k} {v}" for k, v in o["counts"].items())
                 + f"; oldest pending {duration(o['oldest_pending_age_s'])}")
    if s.get("connections"):
        c = s["connections"]
        lines.append(f"connections: {c['connections_in_use']} in use of {c['max_connections']} on the server; "
                     f"outbox-relay holds {_or(c['relay_connections'], 'an unknown number')}"
                     f" (pool_size {c['pool_size']}); role limit "
                     f"{c['role_connection_limit'] if c['role_connection_limit'] is not None else 'none'}")
    return "\n".join(lines)


def spool_count(report, key):
    """A count of a spool report (Spool.status, sync's): "at least N" where only part was looked at."""
    return f"at least {report[key]:,}" if key in report["at_least"] else f"{report[key]:,}"


def format_spool(data):
    """`outbox-relay spool` for people: the counts, then one line per item set aside."""
    sp = data["spool"]
    head = f"spool {sp['path']}: " + (sp["error"] or f"{spool_count(sp, 'waiting')} waiting, "
                                      f"{spool_count(sp, 'rejected')} set aside, "
                                      f"{spool_count(sp, 'writing')} being written")
    if not data["rejected"]:
        return head + "\nnothing set aside"
    rows = [[r["name"], r["size"], clock(r["rejected_at"]), (r["reason"] or "")[:100]] for r in data["rejected"]]
    return head + "\n" + format_table(["name", "bytes", "set aside", "reason"], rows)


def format_sync_spool(spooled):
    """`sync`'s line about the spool it ingested."""
    done = (f"spool: {spooled['stored']} stored, {spooled['duplicates']} already stored, "
            f"{spooled['rejected']} set aside")
    left = [f"{spool_count(spooled, 'waiting')} waiting"] if spooled["waiting"] is not None else []
    return ", ".join([done, *left]) + (f" ({spooled['error']})" if spooled["error"] else "")


def format_feishu_backfill(report):
    """The summary table for a person: one line per chat, then the totals and what went wrong."""
    rows = [[chat_label(c), c["status"], c["seen"], c["new"], c["already_stored"], c["recalled"], c["edited"],
             c["events"], c["invalid"]] for c in report["chats"]]
    t = report["totals"]
    rows.append(["total", f"{t['chats']} chats", t["seen"], t["new"], t["already_stored"], t["recalled"],
                 t["edited"], t["events"], t["invalid"]])
    lines = [("dry run: nothing committed\n" if report["dry_run"] else "")
             + f"Feishu history {report['since']} .. {report['until']}",
             format_table(["chat", "status", "seen", "new", "already stored", "recalled", "edited", "new events",
                           "invalid"], rows)]
    lines += [f"{c['chat_id']}: {c['error']}" for c in report["chats"] if c["error"]]
    lines += report["errors"]
    api = report["api"]
    lines.append(f"{api['requests']} API requests ({api['retried']} retried, {api['rate_limited']} rate-limited)"
                 f" in {report['seconds']:.1f} s")
    return "\n".join(lines)


def format_openclaw_backfill(report):
    """The summary for a person: one table of counts, then where the unreadable lines are."""
    verb = "would be new" if report["dry_run"] else "new"
    rows = [("found", report["found"]), (verb, report["new"]), ("already stored", report["already_stored"])]
    rows += [(f"skipped: {reason.replace('_', ' ')}", n) for reason, n in report["skipped"].items() if n]
    rows.append(("extra copies (counted once)", report["copies"]))
    lines = [format_table(["messages", "count"], rows),
             f"{report['files']} transcripts of {len(report['agents'])} agent(s) read"
             + ("" if report["target_checked"] else "; the target was not checked")]
    lines += [f"  {e['where']}: {e['reason']}: {e['error']}" for e in report["examples"]]
    lines += [f"could not read {s['where']}: {s['error']}" for s in report["unreadable_sources"]]
    return "\n".join(lines)


def format_retention(r):
    """`retention`: per month what goes and what stays (per chat in a dry run)."""
    head = (f"keep {r['keep']}: months wholly before {r['horizon'][:10]}"
            + (" (dry run: nothing changed)" if r["dry_run"] else ""))
    lines = [head, f"chats under hold: {', '.join(r['held_chats']) or 'none'}"]
    if not r["months"]:
        lines.append("no month is old enough")
    for m in r["months"]:
        rows = f", {m['rows']} rows" if "rows" in m else ""
        lines.append(f"  {m['month']}  {m['partition']}: {m['action']}{rows}, {m['held']} held rows kept")
        for chat, n in (m.get("chats") or {}).items():
            lines.append(f"      {chat or '(no chat)'}: {n}")
    if r["default_rows"]:
        lines.append(f"{r['default_rows']} older rows in the DEFAULT partition are kept (only whole months go)")
    return "\n".join(lines)


def format_holds(r, audit=False):
    """`hold list`: the chats held now, and (audit) every change."""
    lines = [f"{h['chat_id']}\theld since {h['at']} by {h['by']}: {h['reason']}" for h in r["holds"]]
    lines = lines or ["no chat is under hold"]
    if audit:
        lines += ["audit:"] + [f"  {a['at']}  {a['action']:<6} {a['chat_id']} by {a['by']}: {a['reason']}"
                               for a in r["audit"]]
    return "\n".join(lines)
