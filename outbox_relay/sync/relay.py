"""The relay: move the outbox to the target in batches, surviving every fault.

One pass per method (huey's consumer): `step()` moves one batch and says what it
did; `run()` is a loop around it that idles with a growing delay when there is
nothing to do and backs off (capped exponential + jitter) when the target is
unavailable. Every wait ends at once when `stop()` is called.

A batch that runs past the target's statement timeout is retried at half the rows, and the size
grows back (doubling) once batches pass well within the timeout again; the heartbeat says why.

Order inside a step matters for "nothing lost, nothing duplicated":
  claim -> write to target and COMMIT there -> mark delivered locally.
A crash between the target commit and the local mark re-sends the batch on the
next start; the target's ON CONFLICT (message_id) DO NOTHING makes that harmless.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time

import backoff

from ..errors import OutboxError, RowRejected, StatementTimeout, TargetError, TargetUnavailable
from ..message import restore
from .heartbeat import Heartbeat, stamp

log = logging.getLogger(__name__)

StepResult = collections.namedtuple("StepResult", "claimed delivered new dead pruned error")
# Claimed rows, each one's encoded form for the target (or the RowRejected that stops it from
# being written at all), and the outbox file generation they were claimed from.
Batch = collections.namedtuple("Batch", "rows encoded generation")
StepResult.__new__.__defaults__ = (0, 0, 0, 0, 0, None)

IDLE_MIN, IDLE_MAX = 0.05, 0.5  # a put in another process is seen within IDLE_MAX
# Most payload bytes in one target transaction. 500 messages near the 1 MB limit would be a
# COPY that a slow link cannot finish within statement_timeout, retried forever: the queue
# would stall. Smaller transactions of the same batch always finish.
MAX_BATCH_BYTES = 8 * 1024 * 1024
BACKOFF_MAX = 30.0
HEARTBEAT_EVERY = 1.0  # seconds: the most often a heartbeat is written while batches flow
PROBE_INTERVAL = 15.0  # seconds between idle round trips to the target
CHECK_INTERVAL = 600.0  # seconds between quick_checks of the outbox file (damage shows up early)


# A whole batch refused row by row for one reason, this many rows or more, is the table's fault.
TABLE_SUSPECT_MIN = 10


def _reason(error):
    """An error without the row it is about: PostgreSQL's DETAIL line quotes the row's values."""
    return (error.sqlstate, str(error).split(" DETAIL:")[0].split("\n")[0])


def _by_size(items, limit):
    """[(Row, Message)] -> consecutive chunks whose payloads add up to at most `limit` bytes
    (a single bigger row is a chunk of its own)."""
    chunks, chunk, size = [], [], 0
    for item in items:
        n = len(item[0].payload.encode("utf-8"))
        if chunk and size + n > limit:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


class Relay:
    """Moves rows from an Outbox to a Target. Not thread-safe: one loop drives it."""

    def __init__(self, outbox, target, *, batch_size=500, backoff_max=BACKOFF_MAX, probe_interval=PROBE_INTERVAL,
                 check_interval=CHECK_INTERVAL):
        self.outbox = outbox
        self.target = target
        self.batch_size = batch_size
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Everything the relay knows of its own history lives in its heartbeat, written as is.
        self.beat = Heartbeat(pid=os.getpid(), started_at=time.time(), target=target.display_url)
        self.check_interval = check_interval
        self._next_check = 0.0  # the first loop pass checks the file
        self._prefetch = None  # a Future: the next batch, claimed and encoded meanwhile
        self._finishing = None  # (rows, Future): the previous batch's outbox marks (overlap)
        self._beat_at = -HEARTBEAT_EVERY  # monotonic time of the last heartbeat written
        self._executor = None
        self.observers = []  # callables(StepResult, seconds) - metrics hook
        outbox.add_listener(self._wake.set)

    # -- control ----------------------------------------------------------------------

    def stop(self):
        """Ask the loop to finish the batch in flight and return. Safe from a signal handler."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self):
        return self._stop.is_set()

    def wake(self):
        self._wake.set()

    # -- one batch ----------------------------------------------------------------------

    def step(self):
        """Move at most one batch, marked delivered in the outbox before it returns. Returns
        StepResult; raises TargetUnavailable when nothing could move."""
        return self._step(overlap=False)

    def _step(self, overlap):
        """One batch through the pipeline. While it is in the target, the worker thread claims and
        encodes the next one; with `overlap` (run, drain) the worker also marks it delivered while
        the next one is in the target, so the relay's own thread only ever waits for the database.
        The order that makes re-sends harmless holds either way: the target commits, then the mark."""
        started = time.perf_counter()
        batch = self._take_prefetched() or self._prepare(self._finishing_ids())
        self._note_oldest(batch.rows[0].id if batch.rows else None)
        if not batch.rows:
            return StepResult(pruned=self._settle() + self.outbox.prune())
        in_flight = [r.id for r in batch.rows] + self._finishing_ids()
        self._prefetch = self._worker().submit(self._prepare, in_flight)
        try:
            # Not only at start-up: a target that was down then must still get its table.
            self.target.ensure_schema()
            self.beat.events_waiting = None if self.target.events_ready else (
                f"{self.target.events_table} is not made, or not granted to this role, yet: edits, recalls and"
                " reactions wait in the outbox (the DBA runs `outbox-relay schema --sql` and grants it)")
            writing = time.perf_counter()
            new, written, refused = self._write(batch)
            resized = self._grow(len(batch.rows), time.perf_counter() - writing)
        except TargetUnavailable as e:
            self._drop_prefetched()  # the batch that failed goes first next time
            self._settle(quietly=True)
            self.beat.errors += 1
            if not self._cut(e, len(batch.rows)):
                self._note_error(e)
            self.outbox.record_error([r.id for r in batch.rows], e, batch.generation)
            self._observe(StepResult(claimed=len(batch.rows), error=str(e)), time.perf_counter() - started)
            raise
        except BaseException:
            self._drop_prefetched()
            raise
        pruned = self._settle()
        if overlap:
            self._finishing = (batch.rows, self._worker().submit(self._finish, batch, written, refused))
            delivered = len(written)
        else:
            delivered, just_pruned = self._finish(batch, written, refused)
            pruned += just_pruned
        result = StepResult(len(batch.rows), delivered, new, len(refused), pruned, None)
        self.beat.batches += 1
        self.beat.delivered += delivered
        self.beat.dead += len(refused)
        self._note_success(every_time=not overlap or resized)  # after the counters: the heartbeat carries them
        self._observe(result, time.perf_counter() - started)
        return result

    def _prepare(self, exclude=()):
        """Claim the oldest pending rows (but those still in flight) and encode them for the target.
        A row that cannot be encoded at all carries its RowRejected instead."""
        generation = self.outbox.generation
        rows = self.outbox.claim_oldest(self.beat.batch_rows or self.batch_size, exclude, self._kinds())
        encoded = []
        for r in rows:
            try:
                encoded.append(self.target.encode(r.id, restore(r.kind, r.payload), r.received_at))
            except RowRejected as e:
                encoded.append(e)
        return Batch(rows, encoded, generation)

    def _kinds(self):
        """What the target can take now: everything, or messages alone while its events table is not
        made (a role without DDL rights, before the DBA ran this version's `schema --sql`)."""
        return None if self.target.events_ready else ("message",)

    def _write(self, batch):
        """Write the batch; split on a rejected row until it is alone. When every row of a batch is
        refused for the same reason, it is the table, not the rows (a NOT NULL column added without
        a default, a CHECK no message meets): TargetUnavailable, nothing goes dead, the batch waits
        as for an outage. Returns (new in target, the rows written, [(row, RowRejected)])."""
        items = list(zip(batch.rows, batch.encoded))
        refused = [(r, e) for r, e in items if isinstance(e, RowRejected)]
        new, written = 0, []
        work = _by_size([i for i in items if not isinstance(i[1], RowRejected)], MAX_BATCH_BYTES)[::-1]
        while work:  # a stack: the oldest chunk on top
            chunk = work.pop()
            try:
                new += self.target.write_encoded([e for _, e in chunk])
            except RowRejected as e:
                if len(chunk) == 1:
                    refused.append((chunk[0][0], e))
                else:
                    half = len(chunk) // 2
                    work.extend([chunk[half:], chunk[:half]])
                continue
            written.extend(r for r, _ in chunk)
        self._refuse_the_table(batch, refused)
        return new, written, refused

    def _finish(self, batch, written, refused):
        """The outbox's side of a batch the target committed: delivered (and pruned), dead."""
        delivered, pruned = self.outbox.finish_batch([r.id for r in written], batch.generation)
        for row, e in sorted(refused, key=lambda item: item[0].id):
            log.warning("message %s rejected by the target, now dead: %s", row.message_id, e)
            self.outbox.mark_dead(row.id, e, batch.generation)
        return delivered, pruned

    def _finishing_ids(self):
        return [r.id for r in self._finishing[0]] if self._finishing else []

    def _settle(self, quietly=False):
        """Wait for the outbox marks of the previous batch (overlap). -> rows pruned by them. An
        outbox error surfaces here; its rows stay pending and are sent again (harmless)."""
        finishing, self._finishing = self._finishing, None
        if finishing is None:
            return 0
        try:
            return finishing[1].result()[1]
        except OutboxError as e:
            if not quietly:
                raise
            log.warning("the outbox did not take the marks of a delivered batch (sent again later): %s", e)
            return 0

    def _worker(self):
        """One worker thread for the relay's life: a thread per batch would open an outbox
        connection per batch (SQLite connections are per thread), each with its page cache."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-worker")
        return self._executor

    def _take_prefetched(self):
        prefetch, self._prefetch = self._prefetch, None
        return prefetch.result() if prefetch is not None else None

    def _drop_prefetched(self):
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            concurrent.futures.wait([prefetch])

    def _stop_worker(self):
        """At the end of run() and drain(): the marks in flight finish, the thread ends."""
        self._drop_prefetched()
        pruned = self._settle(quietly=True)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()
        return pruned

    def _cut(self, error, rows):
        """A batch of `rows` ran past the statement timeout: the next ones are half as big (the rows
        are fine; there were too many for the time). Not an outage: the target answers, slowly.
        -> whether batches were cut (a single row cannot be)."""
        if not isinstance(error, StatementTimeout) or rows < 2:
            return False
        beat = self.beat
        beat.batch_rows = rows // 2
        beat.batch_cut = f"a batch of {rows} passed statement_timeout ({self.target.statement_timeout:g} s)"
        beat.last_error, beat.last_error_at = str(error), time.time()
        log.warning("%s", beat.cut())
        self.write_heartbeat()
        return True

    def _grow(self, rows, seconds):
        """After a batch of `rows` written in `seconds`, cut batches double again (up to batch_size)
        when twice as many rows at that pace would take under half the statement timeout: a margin,
        since each timeout costs the whole timeout. -> whether the size changed."""
        limit = self.beat.batch_rows
        if limit is None or not rows or seconds / rows * 2 * limit >= self.target.statement_timeout / 2:
            return False
        if 2 * limit >= self.batch_size:
            self.beat.batch_rows = self.beat.batch_cut = None
            log.info("batches back to %d rows", self.batch_size)
        else:
            self.beat.batch_rows = 2 * limit
            log.info("%s", self.beat.cut())
        return True

    def _refuse_the_table(self, batch, refused):
        reasons = {_reason(e) for _, e in refused}
        if len(refused) == len(batch.rows) >= TABLE_SUSPECT_MIN and len(reasons) == 1:
            raise TargetUnavailable(f"the target table refuses every message ({len(refused)} of {len(refused)}"
                                    f" in a batch), so the table is wrong, not the rows: {refused[0][1]}",
                                    refused[0][1].sqlstate)

    def _observe(self, result, seconds):
        for observer in self.observers:
            try:
                observer(result, seconds)
            except Exception:
                log.exception("relay observer failed")

    # -- heartbeat ---------------------------------------------------------------------------

    def _note_success(self, every_time=True):
        beat = self.beat
        beat.last_success = time.time()
        recovered = self._target_back(beat.last_success) or beat.outbox_problem is not None
        beat.outbox_problem = None
        # A heartbeat is a commit (an fsync): in the loops at most one a second while batches flow,
        # at once on a recovery. Once per batch it was a tenth of a drain.
        if every_time or recovered or time.monotonic() - self._beat_at >= HEARTBEAT_EVERY:
            self.write_heartbeat()

    def _target_back(self, now):
        """The target answered: end the outage on record, if any. -> whether there was one."""
        if self.beat.unavailable_since is None:
            return False
        log.info("target reachable again after %.1f s", self.beat.outage(now))
        self.beat.unavailable_since = self.beat.unavailable_mono = None
        return True

    def _note_oldest(self, row_id):
        """The oldest row not yet in the target, and since when the relay has held it (monotonic)."""
        if row_id != self.beat.oldest_id:
            self.beat.oldest_id = row_id
            stamp(self.beat, "oldest_at", "oldest_mono")

    def _note_error(self, error):
        beat, now = self.beat, time.time()
        if isinstance(error, OutboxError):
            # The outbox, not the target: say so (it used to read "target unavailable").
            if beat.outbox_problem != str(error):
                log.error("outbox problem, the relay waits: %s", error)
            beat.outbox_problem = str(error)
        elif beat.unavailable_since is None:
            stamp(beat, "unavailable_since", "unavailable_mono", now)
            log.warning("target unavailable, messages stay in the outbox: %s", error)
        beat.last_error, beat.last_error_at = str(error), now
        self.write_heartbeat()

    def heartbeat(self):
        """The relay's state as of now (a copy: the relay goes on changing its own)."""
        beat = dataclasses.replace(self.beat)
        stamp(beat, "beat_at", "beat_mono")
        return beat

    def write_heartbeat(self):
        self._beat_at = time.monotonic()
        try:
            self.heartbeat().write(self.outbox)
        except Exception as e:  # a busy outbox must not stop the relay; the next beat will do
            log.debug("heartbeat not written: %s", e)

    # -- loops -------------------------------------------------------------------------------

    def drain(self, max_batches=None, on_step=None):
        """Move everything pending (and parked) now, then return: rq's burst mode, for `sync`.
        Transient errors are retried with backoff until stop(). Returns totals."""
        total = collections.Counter()
        batches = 0
        while not self._stop.is_set() and (max_batches is None or batches < max_batches):
            result = self._step_with_backoff(overlap=True)
            if result is None:
                break
            for field in ("claimed", "delivered", "new", "dead", "pruned"):
                total[field] += getattr(result, field)
            if result.claimed == 0:
                if not self.outbox.has_pending(self._kinds()):
                    break
                continue  # every row was in flight when this batch was claimed: not a batch
            batches += 1
            if on_step:
                on_step(result)
        total["pruned"] += self._stop_worker()
        total["batches"] = batches
        if batches:
            self.write_heartbeat()  # the loop writes it at most once a second: the last word is exact
        return total

    def run(self):
        """Loop until stop(): a batch when there is work, an idle wait (woken by puts) when not."""
        log.info("relay started: %s -> %s", self.outbox.path, self.target.describe())
        idle = IDLE_MIN
        next_beat = 0.0
        next_probe = time.monotonic() + self.probe_interval
        while not self._stop.is_set():
            result = self._step_with_backoff(overlap=True)
            if result is None:
                break
            if result.claimed:
                idle = IDLE_MIN
                next_probe = time.monotonic() + self.probe_interval  # the batch was contact enough
                continue
            if time.monotonic() >= next_probe:
                self._probe()
                next_probe = time.monotonic() + self.probe_interval
            if time.monotonic() >= next_beat:
                self.write_heartbeat()
                next_beat = time.monotonic() + 5.0
            # Idle: a put in this process sets _wake; one in another process is seen at the next poll.
            self._wake.wait(idle)
            self._wake.clear()
            idle = min(idle * 2, IDLE_MAX)
        self._stop_worker()
        self.write_heartbeat()
        log.info("relay stopped")

    def _probe(self):
        """While idle, one round trip now and then: an outage shows in status, health and /healthz
        before a message has to wait on it, and a recovery clears it without one."""
        try:
            self.target.ping()
        except TargetUnavailable as e:
            self._note_error(e)
            return
        if self._target_back(time.time()):
            self.write_heartbeat()
        try:  # the table and its daily work (months ahead, retention) do not wait for traffic
            self.target.ensure_schema()
            self.target.layout.maintain_if_due(self.target)
        except TargetError as e:  # maintenance: tried again the next day, as before a batch
            log.warning("the table's daily maintenance failed: %s", e)

    def check_outbox_file(self):
        """Every pass: is the file at the path still ours (a stat)? Every check_interval: is it
        intact (SQLite's quick_check)? Raises OutboxError; the loop backs off and says so."""
        self.outbox.check_file()
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_interval
            self.outbox.quick_check()
            self.beat.outbox_checked_at = time.time()

    def _step_with_backoff(self, overlap=False):
        """One step, retried with capped exponential delay + full jitter (backoff's generators) while
        the target or the outbox is unavailable. Returns None once stopped."""
        delays = None
        while not self._stop.is_set():
            stamp(self.beat, "loop_at", "loop_mono")
            try:
                self.check_outbox_file()
                return self._step(overlap)
            except (TargetUnavailable, OutboxError) as e:
                if isinstance(e, OutboxError):
                    self._note_error(e)
            except Exception as e:
                # A bug must not end the relay (rows stay where they are); say it loudly and retry.
                log.exception("relay step failed unexpectedly")
                self._note_error(e)
            if delays is None:
                delays = backoff.expo(base=2, factor=0.1, max_value=self.backoff_max)
                next(delays)  # backoff's wait generators are primed with one next()
            delay = max(0.05, backoff.full_jitter(next(delays)))
            log.debug("retrying in %.2f s", delay)
            if self._stop.wait(delay):  # stop() ends the wait at once
                return None
        return None
