"""What a relay says about itself (its Heartbeat), kept by the relay as its own state and written into
the outbox's meta table, where `status`, `health`, `top` and /metrics of other processes read it.

Durations are read on the monotonic clock, never as differences of wall-clock times: the wall clock
steps (an NTP correction, an operator, a VM restored from a snapshot), and a day's step back made an
hour-long outage read as 0 s. CLOCK_MONOTONIC is one clock for every process of a machine until it
boots again, so a reader compares its own monotonic time with the relay's when both ran in the same
boot (`boot_id`), and falls back to the wall clock otherwise.
"""

import dataclasses
import functools
import time

HEARTBEAT_KEY = "relay"


@dataclasses.dataclass
class Heartbeat:
    """The relay's state: the Relay updates these fields as it works (they are its only record of
    what happened) and writes the whole after every batch, every error and every few seconds idle."""

    pid: int | None = None
    started_at: float | None = None
    beat_at: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    unavailable_since: float | None = None
    target: str | None = None
    delivered: int = 0
    dead: int = 0
    outbox_problem: str | None = None  # what the relay last met in the outbox file itself
    outbox_checked_at: float | None = None  # the last quick_check that passed
    batches: int = 0
    errors: int = 0  # batches that failed because the target was unavailable
    loop_at: float | None = None  # the last pass of the relay's loop (a hung step stops it)
    batch_rows: int | None = None  # rows a batch is cut to after a statement timeout (None: batch_size)
    batch_cut: str | None = None  # why: "a batch of 250 passed statement_timeout (1 s)"
    events_waiting: str | None = None  # why events stay in the outbox: the target cannot take them yet
    # The same moments on the monotonic clock, and the boot they belong to.
    boot_id: str | None = None
    beat_mono: float | None = None
    unavailable_mono: float | None = None
    loop_mono: float | None = None
    oldest_id: int | None = None  # the oldest undelivered row the relay has claimed, and since when
    oldest_at: float | None = None
    oldest_mono: float | None = None

    @classmethod
    def parse(cls, value):
        """The stored JSON object -> Heartbeat, or None when there is none (or it is not ours)."""
        if not isinstance(value, dict) or not isinstance(value.get("beat_at"), (int, float)):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})

    @classmethod
    def read(cls, outbox):
        return cls.parse(outbox.get_meta(HEARTBEAT_KEY))

    def write(self, outbox):
        outbox.set_meta(HEARTBEAT_KEY, dataclasses.asdict(self))

    def age(self, now):
        """Seconds since this heartbeat was written (`now`: the wall clock, used only when the monotonic
        clock cannot be compared)."""
        return _since(self.beat_mono, self.beat_at, self.boot_id, now)

    def cut(self):
        """Why batches are smaller than batch_size, as `status` and the log say it; None when they are not."""
        return f"batches cut to {self.batch_rows} rows: {self.batch_cut}" if self.batch_rows else None

    def outage(self, now):
        """Seconds the relay has not reached the target, or None while it does."""
        if self.unavailable_since is None:
            return None
        return _since(self.unavailable_mono, self.unavailable_since, self.boot_id, now)

    def quiet(self, now):
        """Seconds since the relay's loop last made a pass."""
        return _since(self.loop_mono, self.loop_at or self.started_at, self.boot_id, now)

    def oldest_waited(self, now):
        """Seconds since the relay first found the oldest undelivered row it still holds (a floor
        under that row's age that no step of the wall clock can hide), or None when it holds none."""
        if self.oldest_id is None:
            return None
        return _since(self.oldest_mono, self.oldest_at, self.boot_id, now)


def stamp(beat, wall_field, mono_field, now=None):
    """Set a moment in both clocks: beat.<wall_field> = the wall clock, beat.<mono_field> = the
    monotonic one (and the boot it belongs to)."""
    setattr(beat, wall_field, time.time() if now is None else now)
    setattr(beat, mono_field, time.monotonic())
    beat.boot_id = boot_id()


def _since(mono, wall, boot, now):
    if mono is not None and boot is not None and boot == boot_id():
        return max(0.0, time.monotonic() - mono)
    return max(0.0, now - wall) if wall is not None else 0.0


@functools.lru_cache(maxsize=1)
def boot_id():
    """This boot of the machine (Linux: /proc/sys/kernel/random/boot_id), or None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
