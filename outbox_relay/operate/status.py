"""`outbox-relay status` and `health`: every fact health.gather() reads, as one report with the judge's
verdict.

`status` asks the databases, never in-memory counters: outbox counts come from SQLite, the relay's
heartbeat from the row it writes there, reachability from a real round trip to the target.
"""

import time

from ..sync import Heartbeat
from . import health


def collect_status(cfg, outbox, target):
    """What the outbox holds, what the relay says of itself, whether the target answers, and the
    health judge's verdict over all of it."""
    now = time.time()
    facts = health.gather(cfg, outbox, now=now, target=target)
    counts, age, view = facts.counts, facts.oldest_pending_age, facts.relay
    beat = view.heartbeat or Heartbeat()
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
                  "pid": beat.pid, "batch_rows": beat.batch_rows, "batch_cut": beat.cut()},
        "target": None,
        "spool": facts.spool,
        "reconcile": facts.reconcile,
    }
    if target is not None:
        report["target"] = {"url": target.display_url, "table": target.table, "dialect": target.name,
                            "reachable": facts.target_error is None}
        if facts.target_error is None:
            report["target"]["latency_ms"] = facts.target_latency_ms
        else:
            report["target"]["error"] = facts.target_error
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
