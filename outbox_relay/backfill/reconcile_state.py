"""What the reconciler knows, kept in the outbox's meta table beside the backfill's checkpoints: per
chat, the newest instant below which the archive has been checked against Feishu ("complete up to"),
where an unfinished pass got to, the gaps it filled in the last 24 h; the calls spent in the last
hour; the chats it could not cover. The reconciler thread writes it after every window it reads, so
a kill -9 loses one window at most; `status`, `top` and /metrics of any process read it here (the
relay's heartbeat is the model: files, not the running process's memory).

Times are epoch seconds. Chat times (checked_until, read_to, pass_end) are Feishu's clock, by the Date of
its answers, as the backfill's checkpoints are; the others are this host's.
"""

import dataclasses
import time

STATE_KEY = "reconcile"
CALLS_KEY = "reconcile.calls"  # apart: written before every request, it must stay small
HOUR = 3600
GAPS_KEPT = 86_400  # gaps are listed for the last 24 h


@dataclasses.dataclass
class ChatState:
    name: str | None = None
    checked_since: int | None = None  # the checked span is [checked_since, checked_until)
    checked_until: int | None = None
    pass_end: int | None = None  # the pass under way (or the last one) reads up to here ...
    read_to: int | None = None  # ... and has read up to here
    seen: int = 0  # messages Feishu listed in the chat's last pass: how busy it is
    gaps: list = dataclasses.field(default_factory=list)  # [[host time, count, source], …] of 24 h
    error: str | None = None  # why the chat's last pass failed
    way: str = "webhook"  # how its messages come (reconcile.expected_way): its gaps' source label

    def unfinished(self):
        return self.pass_end is not None and self.read_to is not None and self.read_to < self.pass_end

    def gaps_since(self, since):
        return sum(n for at, n, _ in self.gaps if at >= since)


@dataclasses.dataclass
class ReconcileState:
    pid: int | None = None
    pass_started_at: float | None = None
    pass_finished_at: float | None = None
    passes: int = 0
    gaps_total: dict = dataclasses.field(default_factory=dict)  # {source: messages and events filled}
    listed_at: float | None = None  # the bot's chats were last listed then (at most once an hour)
    listed: list = dataclasses.field(default_factory=list)  # [[chat_id, name], …]
    active: list = dataclasses.field(default_factory=list)  # the last pass's chats, busiest first
    uncovered: list = dataclasses.field(default_factory=list)  # of those, the ones the budget did not reach
    done: list = dataclasses.field(default_factory=list)  # of those, the ones this pass has read
    error: str | None = None  # why the last pass ended early (Feishu unavailable, credentials)
    retry_soon: bool = False  # it ended before any chat for the target: the next comes in seconds
    chats: dict = dataclasses.field(default_factory=dict)  # chat_id -> ChatState

    @classmethod
    def read(cls, outbox):
        value = outbox.get_meta(STATE_KEY)
        if not isinstance(value, dict):
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in value.items() if k in names and k != "chats"})
        chat_names = {f.name for f in dataclasses.fields(ChatState)}
        for chat_id, c in (value.get("chats") or {}).items():
            state.chats[chat_id] = ChatState(**{k: v for k, v in c.items() if k in chat_names})
        return state

    def write(self, outbox):
        outbox.set_meta(STATE_KEY, dataclasses.asdict(self))

    def chat(self, chat_id):
        return self.chats.setdefault(chat_id, ChatState())

    def complete_up_to(self):
        """Every chat of the last pass checked below this instant (None until each has been). A chat
        Feishu will not let us read (the bot is not in it, no permission) cannot be: it is left out
        here and listed with its error."""
        ends = [self.chats[c].checked_until if c in self.chats else None for c in self.active
                if c not in self.chats or not self.chats[c].error]
        return None if not ends or None in ends else min(ends)

    def forget_old_gaps(self, now):
        for c in self.chats.values():
            c.gaps = [g for g in c.gaps if g[0] >= now - GAPS_KEPT]


def read_calls(outbox, now=None):
    """(request times of the last hour (host epoch s), as the budget counts them; requests since the
    outbox was made)."""
    now = time.time() if now is None else now
    value = outbox.get_meta(CALLS_KEY, {})
    value = value if isinstance(value, dict) else {}
    recent = [t for t in value.get("recent") or [] if isinstance(t, (int, float)) and t > now - HOUR]
    total = value.get("total")
    return recent, total if isinstance(total, int) else 0


def write_calls(outbox, recent, total):
    outbox.set_meta(CALLS_KEY, {"recent": recent, "total": total})


def summary(cfg, outbox, now=None):
    """What `status`, `health`, `top` and /metrics say of reconciliation: {"enabled": False, "off": why}
    or the figures, per chat and in total."""
    now = time.time() if now is None else now
    off = off_reason(cfg)
    if off:
        return {"enabled": False, "off": off}
    state = ReconcileState.read(outbox)
    total = state.complete_up_to()
    recent, calls_total = read_calls(outbox, now)
    chats = [{"chat_id": chat_id, "name": c.name, "complete_up_to": c.checked_until,
              "behind_s": _behind(c.checked_until, now), "gaps_24h": c.gaps_since(now - GAPS_KEPT),
              "covered": chat_id not in state.uncovered, "error": c.error}
             for chat_id, c in ((cid, state.chats.get(cid, ChatState())) for cid in state.active)]
    return {"enabled": True, "off": None, "interval_s": cfg.feishu_reconcile_interval,
            "window_s": cfg.feishu_reconcile_window, "budget_per_hour": cfg.feishu_reconcile_budget,
            "calls_last_hour": len(recent), "calls_total": calls_total,
            "passes": state.passes, "last_pass_at": state.pass_finished_at,
            "complete_up_to": total, "behind_s": _behind(total, now),
            "gaps_24h": sum(c["gaps_24h"] for c in chats), "gaps_total": dict(state.gaps_total),
            "uncovered": [c for c in chats if not c["covered"]], "error": state.error, "chats": chats}


def off_reason(cfg):
    """Why `run` does not reconcile, or None when it does."""
    if not (cfg.feishu_app_id and cfg.feishu_app_secret):
        return "off: no Feishu app credentials (feishu_app_id / feishu_app_secret)"
    if not cfg.feishu_reconcile_interval:
        return "off: feishu_reconcile_interval is 0"
    return None


def warnings(report):
    """What a summary says is wrong (health calls it degraded)."""
    if not report["enabled"]:
        return []
    out = []
    if report["error"]:
        out.append(f"reconciliation: {report['error']}")
    if report["uncovered"]:
        names = ", ".join(c["chat_id"] for c in report["uncovered"][:5])
        more = f" and {len(report['uncovered']) - 5} more" if len(report["uncovered"]) > 5 else ""
        out.append(f"reconciliation: the budget ({report['budget_per_hour']} calls/h) did not cover"
                   f" {len(report['uncovered'])} chat(s) within the window: {names}{more}")
    if report["behind_s"] is not None and report["behind_s"] > HOUR:
        out.append(f"reconciliation is behind: the archive is checked against Feishu only up to"
                   f" {report['behind_s'] / 3600:.1f} h ago")
    if report["gaps_24h"]:
        out.append(f"reconciliation filled {report['gaps_24h']} gap(s) in the last 24 h: a way in is missing"
                   " messages (see README, When things go wrong)")
    return out


def _behind(until, now):
    return None if until is None else max(0.0, round(now - until, 3))
