"""The one way every backfill commits what it found, with one set of rules:

  * the target is asked which of the messages (and of the events about them: an edit, a recall) it
    already holds, and those are skipped, and so is an event whose fact one waiting in the outbox
    states already (the webhook's, under Feishu's event id). When it cannot
    be asked (down, or none given), every message goes to the outbox and the report says the target
    was not checked: a backfill is a local commit like any put, and the relay's conflict clause keeps
    one row of each;
  * the rest goes to the outbox in one transaction per chunk (all or nothing, so a retry is safe); the
    outbox dedupes on message_id;
  * under overflow=reject a full outbox is waited out while a relay drains it, for ROOM_WAIT seconds at
    most, and the wait ends at once when `stop` is set;
  * a dry run commits nothing and counts as new what neither the target nor the outbox holds.
"""

import logging
import threading
import time

from ..errors import OutboxFull, Stopped, TargetError
from ..message.events import restore

log = logging.getLogger(__name__)

ROOM_WAIT = 60.0  # seconds to wait for a relay to make room in an outbox with overflow=reject


class Committer:
    def __init__(self, outbox, target=None, *, dry_run=False, stop=None):
        """`outbox` may be None only with dry_run (nothing to check it against then)."""
        self.outbox, self.target, self.dry_run = outbox, target, dry_run
        self.stop = stop or threading.Event()
        self.target_checked = target is not None

    def commit(self, items):
        """Commit what the archive lacks of `items` (Messages, and Events about them). -> (new,
        already stored)."""
        if not items:
            return 0, 0
        held = self._in_target(items) | self._waiting_in_outbox(items)
        fresh = [m for m in items if m.key not in held]
        if self.dry_run:
            new = sum(self.outbox is None or self.outbox.get(m.key) is None for m in fresh)
        else:
            new = sum(not r.duplicate for r in self._put_with_room(fresh)) if fresh else 0
        return new, len(items) - new

    def _in_target(self, items):
        if not self.target_checked:
            return set()
        try:
            return self.target.held(items)
        except TargetError as e:
            log.warning("cannot check the target for messages it already has (%s): every message found goes"
                        " to the outbox, the target keeps one row of each", e)
            self.target_checked = False
            return set()

    def _waiting_in_outbox(self, items):
        """The keys of the events among `items` whose fact an event waiting in the outbox already states
        under another key (the webhook's recall of a message, not yet relayed, and the same recall
        the history's flag states): the outbox dedupes on keys only, and the target holds neither yet."""
        if self.outbox is None:
            return set()
        events = [i for i in items if i.outbox_kind != "message"]
        waiting = {(m, restore("event", payload).fact)
                   for m in {e.message_id for e in events} for _, payload in self.outbox.events_about(m)}
        return {e.key for e in events if (e.message_id, e.fact) in waiting}

    def _put_with_room(self, messages):
        deadline = time.monotonic() + ROOM_WAIT
        while True:
            try:
                return self.outbox.put_many(messages)
            except OutboxFull:
                if time.monotonic() > deadline:
                    raise OutboxFull(f"the outbox stayed full (overflow=reject) for {ROOM_WAIT:.0f} s: run the"
                                     " relay (outbox-relay run or sync) and then the backfill again") from None
                if self.stop.wait(0.5):
                    raise Stopped() from None
