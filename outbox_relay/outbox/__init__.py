"""The local SQLite outbox (the design card's "outbox"): every accepted message is committed here first."""

from .queue import OVERFLOW_POLICIES, STATES, SYNCHRONOUS, Outbox, PutResult  # noqa: F401
