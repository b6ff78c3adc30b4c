"""What a relay says about itself (its Heartbeat), kept by the relay as its own state and written into
the outbox's meta table, where `status`, `health`, `top` and /metrics of other processes read it."""

import dataclasses

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
        return max(0.0, now - self.beat_at)

    def cut(self):
        """Why batches are smaller than batch_size, as `status` and the log say it; None when they are not."""
        return f"batches cut to {self.batch_rows} rows: {self.batch_cut}" if self.batch_rows else None

    def outage(self, now):
        """Seconds the relay has not reached the target, or None while it does."""
        return max(0.0, now - self.unavailable_since) if self.unavailable_since else None
