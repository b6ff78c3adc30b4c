"""What "healthy" means, written once: one gatherer of the facts and one judge, which `outbox-relay
health`, `status`, `top` and `/healthz` all ask.

`gather()` reads every fact where it lives (the relay thread of this process, or the heartbeat a relay
in another process writes into the outbox and the lock it holds; the outbox file; the spool; a round
trip to the target) and `judge()` turns them into ok / degraded / down with the reasons.
"""

import dataclasses
import time

from ..backfill import reconcile_state
from ..errors import OutboxError, TargetError
from ..intake.spool import Spool
from ..outbox.faults import replaced_warning
from ..sync import BACKOFF_MAX, Heartbeat, relay_running
from .human import spool_count

# Undelivered messages older than this while a relay runs mean it is behind.
BEHIND_AFTER = 120.0
SPOOL_BEHIND_AFTER = 60.0  # seconds a spool item may wait while a relay runs
OK, DEGRADED, DOWN = "ok", "degraded", "down"
LEVELS = (OK, DEGRADED, DOWN)  # index = exit code of `outbox-relay health`


def stuck_after(cfg):
    """Seconds without a relay loop pass (or heartbeat) before we call the relay stuck. One pass
    may legitimately take a connect plus a statement timeout, or a full backoff wait."""
    return max(60.0, 2.0 * (cfg.connect_timeout + cfg.statement_timeout), 2.0 * BACKOFF_MAX)


@dataclasses.dataclass
class RelayView:
    """The relay as seen from here: running at all, what is wrong with it, its last heartbeat."""

    running: bool
    heartbeat: Heartbeat | None
    problem: str | None = None
    in_process: bool = False


@dataclasses.dataclass
class Facts:
    """Everything the judge looks at; None where it was not (or could not be) looked at."""

    relay: RelayView
    counts: dict | None = None
    oldest_pending_age: float | None = None
    outbox_problem: str | None = None
    warnings: list = dataclasses.field(default_factory=list)
    spool: dict | None = None           # Spool.status()
    target_error: str | None = None     # a direct round trip failed (None: it worked, or none was made)
    target_latency_ms: float | None = None
    reconcile: dict | None = None       # reconcile_state.summary(): off and why, or how far it is sure


def gather(cfg, outbox, *, now=None, relay_thread=None, target=None, outbox_problem=None):
    """Every fact about the service, each read once: the relay (`relay_thread` when it runs in this
    process, else its lock and heartbeat), the outbox, the spool, and a round trip to `target` when
    one is given. `outbox_problem`: what the caller already found wrong with the outbox."""
    now = time.time() if now is None else now
    view = in_process_view(relay_thread, cfg, now) if relay_thread is not None else outbox_view(outbox, cfg, now)
    facts = Facts(relay=view, outbox_problem=outbox_problem, spool=Spool(cfg.spool).status(now))
    _outbox_facts(outbox, facts, now)
    if target is not None:
        try:
            facts.target_latency_ms = round(target.ping() * 1000, 2)
        except TargetError as e:
            facts.target_error = str(e)
    facts.warnings.extend(spool_warnings(facts.spool, view.running))
    if facts.counts is not None:
        facts.reconcile = reconcile_state.summary(cfg, outbox, now)
        facts.warnings.extend(reconcile_state.warnings(facts.reconcile))
    exposed = cfg.exposed()
    if exposed:
        facts.warnings.append(exposed)
    return facts


def in_process_view(relay_thread, cfg, now):
    """The relay thread of this process (`outbox-relay run`)."""
    relay = relay_thread.relay
    view = RelayView(running=relay_thread.alive(), heartbeat=relay.heartbeat(), in_process=True)
    if not view.running:
        crashed = relay_thread.crashed
        view.problem = "relay thread is not running" + (f": {crashed}" if crashed else "")
    elif relay.stopping:
        view.problem = "shutting down"
    else:
        quiet = view.heartbeat.quiet(now)
        if quiet > stuck_after(cfg):
            view.problem = f"relay loop stuck: no pass for {quiet:.0f} s"
    return view


def outbox_view(outbox, cfg, now):
    """A relay in another process, judged by its lock and the heartbeat it writes."""
    beat = Heartbeat.read(outbox)
    view = RelayView(running=relay_running(outbox.path), heartbeat=beat)
    if beat is not None and view.running and beat.age(now) > stuck_after(cfg):
        view.problem = f"relay heartbeat is {beat.age(now):.0f} s old: is the relay stuck?"
    return view


def oldest_pending_age(outbox, view, now):
    """The oldest undelivered row's age: its wall-clock age (stamped when it was committed), but never
    less than how long the running relay has held it (on the monotonic clock): a wall clock stepped
    back a day must not make a message that has waited an hour look new."""
    age = outbox.oldest_pending_age(now)
    waited = view.heartbeat.oldest_waited(now) if view.running and view.heartbeat is not None else None
    return max(age, waited) if age is not None and waited is not None else age


def _outbox_facts(outbox, facts, now):
    """What the outbox holds (counts, oldest pending age) and what is wrong with the file: damaged
    (the relay's quick_check, or any reader that met SQLITE_CORRUPT, leaves a marker beside it),
    replaced. Nothing here reads the whole file: it must stay fast with a million rows parked."""
    damaged = outbox.damaged_reason()
    if damaged:
        facts.outbox_problem = facts.outbox_problem or damaged
        return
    try:
        facts.counts, facts.oldest_pending_age = outbox.counts(), oldest_pending_age(outbox, facts.relay, now)
        replaced = replaced_warning(outbox)
    except OutboxError as e:
        facts.outbox_problem = facts.outbox_problem or str(e)
        return
    if replaced:
        facts.warnings.append(replaced)


def spool_warnings(spool, relay_running):
    """What the spool's state says is wrong (degraded), given whether a relay runs to ingest it."""
    if spool["error"]:
        return [spool["error"]]  # "cannot read the spool directory …: Permission denied"
    out = []
    if spool["rejected"]:
        out.append(f"{spool_count(spool, 'rejected')} spool item(s) set aside as not messages: "
                   "see `outbox-relay spool`")
    if spool["waiting"] and not relay_running:
        out.append(f"{spool_count(spool, 'waiting')} message(s) wait in the spool and no relay is running: "
                   "start `outbox-relay run` (or run `outbox-relay sync`)")
    age = spool["oldest_waiting_age_s"]
    if relay_running and age is not None and age > SPOOL_BEHIND_AFTER:
        # With "waiting" in at_least the age is a lower bound: still true when it says "behind".
        out.append(f"the oldest spool item has waited {'at least ' if 'waiting' in spool['at_least'] else ''}"
                   f"{age:.0f} s: is the relay ingesting? (see its log)")
    return out


@dataclasses.dataclass
class Verdict:
    level: str
    reasons: list

    @property
    def code(self):
        return LEVELS.index(self.level)

    def line(self):
        return f"{self.level.upper()}: " + ("; ".join(self.reasons) or "nothing to report")


def judge(facts, cfg, *, expect_relay, now=None):
    """ok / degraded / down, and why. `expect_relay`: this process is the service, so a relay that
    is not running is an outage (/healthz); from the command line a cron `sync` may be the relay."""
    now = time.time() if now is None else now
    down, degraded = [], []
    relay, beat = facts.relay, facts.relay.heartbeat
    if facts.outbox_problem:
        down.append(facts.outbox_problem)
    if relay.problem:
        down.append(relay.problem)
    elif expect_relay and not relay.running:
        down.append("no relay is running for this outbox: is `outbox-relay run --no-http` running?")
    outage = beat.outage(now) if (relay.running and beat is not None) else None
    if outage is not None:
        why = f"the relay has not reached the target for {outage:.0f} s: {beat.last_error}"
        (down if outage > cfg.unhealthy_after else degraded).append(why)
    if facts.target_error and not relay.running:
        down.append(f"target unreachable: {facts.target_error}")
    elif facts.target_error and outage is None:
        degraded.append(f"target unreachable: {facts.target_error}")
    if relay.running and beat is not None and beat.events_waiting:
        degraded.append(beat.events_waiting)
    degraded.extend(facts.warnings)
    degraded.extend(_backlog_warnings(facts, relay))
    if down:
        return Verdict(DOWN, down + degraded)
    return Verdict(DEGRADED if degraded else OK, degraded)


def _backlog_warnings(facts, relay):
    counts, age = facts.counts, facts.oldest_pending_age
    if counts is None:
        return []
    out = []
    if counts["dead"]:
        out.append(f"{counts['dead']} dead row(s): the target refused them; see `outbox-relay dead`, "
                   "fix the cause, then `outbox-relay replay --all`")
    if counts["parked"]:
        out.append(f"{counts['parked']} parked row(s) over max_pending: kept on disk, relayed as room frees")
    if not relay.running and (counts["pending"] or counts["parked"]):
        out.append("no relay is running and messages are waiting: start `outbox-relay run`")
    if relay.running and age is not None and age > BEHIND_AFTER:
        out.append(f"the relay is behind: the oldest undelivered message is {age:.0f} s old")
    return out
