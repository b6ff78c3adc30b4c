"""`replay --wait`: requeue dead (or parked) rows, then follow them until the running relay has
delivered them or the target has refused them again.

A replay is one UPDATE, over in a moment: a progress bar over it would show nothing. What a person
waits for is the delivery, which the relay does in its own process, so the bar follows that: how
many of the requeued rows are no longer pending or parked (delivered, pruned after delivery, or
dead again). Nothing is drawn on a pipe (progress.py).
"""

import time

from ..errors import RelayNotRunning
from ..sync import relay_running

POLL = 0.2  # seconds between looks at the requeued rows
RELAY_CHECK_EVERY = 10  # polls between looks at the relay lock (is a relay still running?)


def replay_and_wait(outbox, keys, state, *, progress, stop, timeout=None, poll=POLL):
    """Requeue the rows `keys` names (None: every row in `state`) and wait for them. Returns
    {requeued, delivered, dead, waiting, why}: `why` says what ended a wait that left rows waiting.
    RelayNotRunning, before anything changes, when no relay would deliver them."""
    if not relay_running(outbox.path):
        raise RelayNotRunning("no relay is running for this outbox, so nothing would deliver the rows: start"
                              " `outbox-relay run`, or replay without --wait and run `outbox-relay sync`")
    ids = outbox.replay(keys, states=(state,))  # exactly what was requeued is what is followed
    report = follow(outbox, ids, progress=progress, stop=stop, timeout=timeout, poll=poll)
    return {"requeued": len(ids), **report}


def follow(outbox, ids, *, progress, stop, timeout=None, poll=POLL):
    """Wait until none of `ids` is pending or parked, the relay stops, `stop` is set or `timeout`
    passes; advance `progress` as rows finish. Returns {delivered, dead, waiting, why}."""
    task = progress.task("delivering the requeued rows", total=len(ids))
    deadline = None if timeout is None else time.monotonic() + timeout
    done, polls, why = 0, 0, None
    while True:
        states = outbox.states_of(ids) if ids else {}
        waiting = states.get("pending", 0) + states.get("parked", 0)
        task.advance(len(ids) - waiting - done)
        done = len(ids) - waiting
        why = _why_stop(waiting, stop, deadline, timeout, polls, outbox.path)
        if why is not None or not waiting:
            break
        polls += 1
        stop.wait(poll)
    dead = states.get("dead", 0)
    return {"delivered": len(ids) - waiting - dead, "dead": dead, "waiting": waiting, "why": why if waiting else None}


def _why_stop(waiting, stop, deadline, timeout, polls, path):
    if not waiting:
        return None
    if stop.is_set():
        return "stopped"
    if deadline is not None and time.monotonic() >= deadline:
        return f"timed out after {timeout:g} s"
    if polls % RELAY_CHECK_EVERY == RELAY_CHECK_EVERY - 1 and not relay_running(path):
        return "the relay stopped"
    return None
