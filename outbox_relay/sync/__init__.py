"""The relay (the design card's "sync"): moves the outbox to the target in batches, surviving every fault."""

from .relay import Heartbeat, Relay, RelayLock, StepResult  # noqa: F401
