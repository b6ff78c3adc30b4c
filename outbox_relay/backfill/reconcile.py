"""The reconciler: every feishu_reconcile_interval, `run` reads each active chat's trailing window
(feishu_reconcile_window) back from Feishu and commits what the archive lacks, through backfill
feishu's own reader (feishu.read_chat_window: the normalizer, checkpoints, the client's rate limiter,
token handling and retries, the history's recall/edit flags, the one commit path). What it commits is a
gap: a message (or a recall, an edit) the archive and the outbox did not hold, which a way in should
have brought.

Active chats: the bot's chats (listed at most once an hour) and every chat with a message in the
outbox or the target within the window. They are read busiest first (the most messages Feishu
listed in the chat's last pass, or else the archive holds in the window) so that a budget too small
for all still covers the chats where a gap is likeliest. The budget: at most feishu_reconcile_budget
requests in any hour, every request counted (token fetches, retries, 429s: Feishu counts them too);
each request's time is recorded before it goes out, so a kill -9 cannot hand out more.

One pass per call (`run_pass`); the thread's loop around it is trivial (service/run.py).
"""

import logging
import os
import time

from ..errors import (
    BudgetSpent,
    FeishuApiError,
    FeishuCredentialsError,
    FeishuError,
    FeishuUnavailable,
    Stopped,
    TargetError,
)
from .feishu import ChatReport, open_run, read_chat_window
from .reconcile_state import HOUR, ReconcileState, read_calls, write_calls

log = logging.getLogger(__name__)


class TargetNotReady(Exception):
    """The target cannot be asked what it holds (down, or its table not made yet): the pass is skipped
    and tried again soon (RETRY_SOON)."""


RETRY_SOON = 2.0  # seconds before a pass skipped for the target is tried again (not a whole interval)


class CallBudget:
    """At most `limit` requests in any hour; `spend()` before each, BudgetSpent when there is no room."""

    def __init__(self, outbox, limit):
        self.outbox, self.limit = outbox, limit
        self.calls, self.total = read_calls(outbox)

    def spend(self):
        now = time.time()
        self.calls = self._recent(now)
        if len(self.calls) >= self.limit:
            raise BudgetSpent(f"the hour's {self.limit} calls are spent (feishu_reconcile_budget)")
        self.calls.append(now)
        self.total += 1
        write_calls(self.outbox, self.calls, self.total)  # before the request: a kill -9 must not forget it

    def _recent(self, now=None):
        now = time.time() if now is None else now
        return [t for t in self.calls if t > now - HOUR]


# Rows committed by a backfill (this reconciler's own among them) say nothing of the way a chat's
# messages come: the way is read from the newest row any other way brought.
BACKFILLED = ("feishu.history", "openclaw.transcript")


def expected_way(source, before="webhook"):
    """The way a message of a chat should have come, for the gaps' `source` label, from the source of
    the chat's newest row in the outbox. Feishu pushes every message (and every recall, edit) to the
    app's event subscription, which reaches us at the webhook, or through OpenClaw's gateway and its
    hook when OpenClaw holds the subscription: a chat whose messages come by the hook missed them
    there. A row a backfill committed keeps the way known `before` (at first: the webhook, the way
    Feishu's events come)."""
    if not isinstance(source, str) or source in BACKFILLED:
        return before
    return "hook" if source.startswith("openclaw") else "webhook"


class Reconciler:
    """One outbox's reconciliation through one FeishuClient (its token lasts across passes); the
    client's `stop` ends a pass at once (a request in flight is cut off). close() when done."""

    def __init__(self, cfg, outbox, target, client):
        self.cfg, self.outbox, self.target, self.client = cfg, outbox, target, client
        self._ways = {}  # chat_id -> the way its messages come (expected_way), for this pass

    def close(self):
        self.client.close()

    def run_pass(self):
        """Read every active chat's trailing window, busiest first, within the budget. -> the state."""
        state = ReconcileState.read(self.outbox)
        if self._resumes(state):
            log.info("reconciliation resumes the pass cut short at %s (%d chat(s) done)",
                     time.strftime("%H:%M:%S", time.localtime(state.pass_started_at)), len(state.done))
        else:
            state.pass_started_at, state.done = time.time(), []
        state.pid, state.error, state.retry_soon = os.getpid(), None, False
        budget = CallBudget(self.outbox, self.cfg.feishu_reconcile_budget)
        client = self.client
        client.before_request = budget.spend
        try:
            self._pass(state, client, budget)
        except Stopped:
            log.info("reconciliation stopped mid-pass; the next pass resumes where it got to")
        except (BudgetSpent, FeishuError, FeishuCredentialsError, TargetNotReady) as e:  # before any chat
            state.error = f"pass ended early: {e}"
            state.retry_soon = isinstance(e, TargetNotReady)
            log.warning("reconciliation: %s", state.error)
        finally:
            state.forget_old_gaps(time.time())
            state.write(self.outbox)
        return state

    def _resumes(self, state):
        """A pass cut short (kill -9, a stop) less than an interval ago goes on where it got to: the
        chats it finished are not read again, the one it was reading goes on from its last window."""
        began, ended = state.pass_started_at, state.pass_finished_at
        return (began is not None and (ended is None or ended < began)
                and time.time() - began < self.cfg.feishu_reconcile_interval)

    def _pass(self, state, client, budget):
        run = open_run(client, self.outbox, self.target, start_s=0, until_ms=int(time.time() * 1000))
        start = run.end - self.cfg.feishu_reconcile_window
        state.active = self._active(state, client, start)
        state.uncovered = []
        for n, chat_id in enumerate(state.active):
            if chat_id in state.done:
                continue
            try:
                self._chat(state, run, chat_id, start)
                state.done.append(chat_id)
            except BudgetSpent:
                state.uncovered = [c for c in state.active[n:] if c not in state.done]
                log.warning("reconciliation: the budget (%d calls/h) did not reach %d chat(s) this pass: %s",
                            budget.limit, len(state.uncovered), ", ".join(state.uncovered))
                break
            except FeishuUnavailable as e:
                state.error = f"pass ended early: {e}"
                log.warning("reconciliation: %s", state.error)
                break
        state.passes += 1
        state.pass_finished_at = time.time()

    # -- which chats, busiest first -----------------------------------------------------------

    def _active(self, state, client, start):
        since_ms = start * 1000
        try:
            archived = self.target.recent_chats(since_ms)
        except TargetError as e:
            # Without asking the target what it holds, every message read would count as a gap.
            raise TargetNotReady(f"the target cannot be asked what it holds ({e}): pass skipped") from None
        self._list_chats(state, client)
        recent = self.outbox.recent_chats(since_ms)
        self._ways = {chat_id: expected_way(source, state.chat(chat_id).way) for chat_id, (_, source) in recent.items()}
        traffic = {chat_id: n for chat_id, (n, _) in recent.items()}
        for chat_id, n in archived.items():
            traffic[chat_id] = max(n, traffic.get(chat_id, 0))
        for chat_id, name in state.listed:
            traffic.setdefault(chat_id, 0)
            state.chat(chat_id).name = name
        busy = {c: max(n, state.chats[c].seen if c in state.chats else 0) for c, n in traffic.items()}
        return sorted(busy, key=lambda c: (-busy[c], c))

    def _list_chats(self, state, client):
        """The bot's chats, asked at most once an hour (the list changes rarely; calls are counted)."""
        if state.listed_at is not None and time.time() - state.listed_at < HOUR:
            return
        try:
            state.listed = [[c["chat_id"], c.get("name")] for items in client.chat_pages()
                            for c in items if isinstance(c.get("chat_id"), str)]
        except FeishuApiError as e:  # a missing scope, say: the chats the archive holds still go on
            log.warning("reconciliation: cannot list the bot's chats: %s", e)
        state.listed_at = time.time()

    # -- one chat -------------------------------------------------------------------------------

    def _chat(self, state, run, chat_id, start):
        """Read [start, now - settle) of one chat again; resume an unfinished pass where it got to, and
        catch up from where the chat was last checked when that is older than the window."""
        cs = state.chat(chat_id)
        if cs.checked_until is not None and cs.checked_until < start:
            start = cs.checked_until
        if cs.unfinished() and start < cs.read_to < run.end:
            start = cs.read_to  # the pass a kill -9 or a stop cut short had read this far
        cs.pass_end, cs.read_to, cs.error = run.end, start, None
        state.write(self.outbox)
        chat = ChatReport(chat_id, cs.name)
        way = cs.way = self._ways.get(chat_id, cs.way)
        counted = [0]

        def on_window(chat, read_to):
            if read_to > cs.read_to:
                if cs.checked_until is None or cs.read_to <= cs.checked_until:  # contiguous with it
                    cs.checked_until = max(cs.checked_until or 0, read_to)
                    cs.checked_since = start if cs.checked_since is None else min(cs.checked_since, start)
                cs.read_to = read_to
            counted[0] += self._count_gaps(run, state, cs, chat, counted[0], way)
            state.write(self.outbox)

        def on_page(chat):
            # Counted as soon as committed: a kill -9 after the commit and before this write is
            # the one way a gap goes uncounted (never twice: the next pass finds it in the outbox).
            fresh = self._count_gaps(run, state, cs, chat, counted[0], way)
            if fresh:
                counted[0] += fresh
                state.write(self.outbox)

        try:
            read_chat_window(run, chat, start, run.end, on_window, on_page)
        except FeishuApiError as e:
            cs.error = str(e)
            log.warning("reconciliation: chat %s: %s", chat_id, e)
        finally:  # a chat cut short (the budget, a stop) counts what it committed, and keeps it
            counted[0] += self._count_gaps(run, state, cs, chat, counted[0], way)
            cs.seen = max(cs.seen, chat.seen) if cs.unfinished() else chat.seen
            state.write(self.outbox)
            found = chat.new + chat.events
            if found and not run.committer.target_checked:
                log.warning("reconciliation: chat %s: %d message(s)/event(s) committed while the target could not"
                            " be asked what it holds: not counted as gaps", chat_id, found)
            elif found:
                log.warning("reconciliation: chat %s: %d gap(s) filled (%d message(s), %d recall(s)/edit(s)) that"
                            " the %s did not bring", chat_id, found, chat.new, chat.events, way)

    def _count_gaps(self, run, state, cs, chat, counted, way):
        """Add what the chat's windows committed since the last count to its gaps; -> how many that
        was. Not counted while the target cannot be asked what it holds: then everything found goes
        to the outbox (the relay keeps one row of each), and would count as a gap."""
        fresh = chat.new + chat.events - counted
        if fresh > 0 and run.committer.target_checked:
            cs.gaps.append([time.time(), fresh, way])
            state.gaps_total[way] = state.gaps_total.get(way, 0) + fresh
        return fresh
