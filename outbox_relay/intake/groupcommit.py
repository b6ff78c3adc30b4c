"""Group commit for the webhook: the puts of concurrent requests go into one transaction, one
fsync, and each request is answered only after the commit that holds its message.

Leader and followers, as PostgreSQL's WAL flush does it, with no thread of its own: the first
request to arrive while no commit runs leads. It takes every put queued so far (itself included),
commits them together, wakes each with its own result, and hands the lead to the first put that
queued meanwhile. Under no load a put is one transaction as before; under load the fsync, which
used to serialise the webhook threads one commit each, is shared.
"""

import threading

MAX_GROUP = 256  # puts in one transaction: bounds a leader's work and a group's latency


class _Put:
    __slots__ = ("message", "key", "result", "error", "woken", "done")

    def __init__(self, message, key):
        self.message = message
        self.key = key
        self.result = self.error = None
        self.woken = threading.Event()
        self.done = False  # set before `woken`: woken with done=False means "lead now"

    def answer(self):
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    def __init__(self, outbox, max_group=MAX_GROUP, key_ttl=None):
        self.outbox = outbox
        self.max_group = max_group
        self.key_ttl = key_ttl  # how long a signed request's key is remembered (Outbox.put_each)
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False

    def put(self, message, key=None):
        """Commit one normalized Message (and the key of the signed request that carried it); returns
        its PutResult or raises what refused it."""
        put = _Put(message, key)
        with self._lock:
            self._queue.append(put)
            lead, self._leading = not self._leading, True
        if not lead:
            put.woken.wait()
        if not put.done:
            self._lead()
        return put.answer()

    def _lead(self):
        with self._lock:
            group, self._queue = self._queue[:self.max_group], self._queue[self.max_group:]
        try:
            answers = self.outbox.put_each([p.message for p in group], [p.key for p in group], self.key_ttl)
        except BaseException as e:  # the transaction failed: nothing in the group was stored
            answers = [e] * len(group)
        for put, answer in zip(group, answers):
            if isinstance(answer, BaseException):
                put.error = answer
            else:
                put.result = answer
            put.done = True
            put.woken.set()
        with self._lock:
            if self._queue:
                self._queue[0].woken.set()  # not done: it leads the next group
            else:
                self._leading = False
