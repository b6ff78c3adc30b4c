"""What "healthy" means, written once: one judge that `outbox-relay health`, `status` and
`/healthz` all ask, over facts read through one heartbeat type (sync.Heartbeat).

The facts are gathered where they live (an in-process relay thread, or the heartbeat row another
process writes into the outbox; the outbox file; a round trip to the target) and handed to
`judge()`, which returns ok / degraded / down with the reasons.
"""

import dataclasses
import time

from ..errors import OutboxError
from ..outbox.faults import replaced_warning
from ..sync.relay import BACKOFF_MAX, Heartbeat, RelayLock

# Undelivered messages older than this while a relay runs mean it is behind.
BEHIND_AFTER = 120.0
OK, DEGRADED, DOWN = "ok", "degraded", "down"
LEVELS = (OK, DEGRADED, DOWN)  # index = exit code of `outbox-relay health`


def stuck_after(cfg):
    """Seconds without a relay loop pass (or heartbeat) before we call the relay stuck. One pass
    may legitimately take a connect plus a statement timeout, or a full backoff wait."""
    return max(60.0, 2.0 * (cfg.connect_timeout + cfg.statement_timeout), 2.0 * BACKOFF_MAX)


def relay_running(outbox_path):
    """True when some process holds the relay lock on this outbox (a relay is running). Looks only:
    no lock file is created where none is, and nothing is written into one."""
    return RelayLock(outbox_path).held_elsewhere()


@dataclasses.dataclass
class RelayView:
    """The relay as seen from here: running at all, what is wrong with it, its last heartbeat."""

    running: bool
    heartbeat: Heartbeat | None
    problem: str | None = None
    in_process: bool = False


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
        quiet = now - (relay.last_loop_at or relay.started_at)
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


@dataclasses.dataclass
class Facts:
    """Everything the judge looks at; None where it was not (or could not be) looked at."""

    relay: RelayView
    counts: dict | None = None
    oldest_pending_age: float | None = None
    outbox_problem: str | None = None
    warnings: list = dataclasses.field(default_factory=list)
    target_error: str | None = None     # a direct round trip failed (None: it worked, or none was made)
    target_probed: bool = False


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


def outbox_facts(outbox, facts):
    """Fill `facts` with what the outbox holds (counts, oldest pending age) and what is wrong with
    the file: damaged (the relay's quick_check, or any reader that met SQLITE_CORRUPT, leaves a
    marker beside it), replaced. Nothing here reads the whole file: it must stay fast with a
    million rows parked."""
    damaged = outbox.damaged_reason()
    if damaged:
        facts.outbox_problem = facts.outbox_problem or damaged
        return facts
    try:
        facts.counts, facts.oldest_pending_age = outbox.counts(), outbox.oldest_pending_age()
        replaced = replaced_warning(outbox)
    except OutboxError as e:
        facts.outbox_problem = facts.outbox_problem or str(e)
        return facts
    if replaced:
        facts.warnings.append(replaced)
    return facts
