"""The relay (the design card's "sync"): moves the outbox to the target in batches, surviving every fault.
relay.py is the loop, lock.py the one-relay-per-outbox lock, heartbeat.py what a relay says of itself."""

from .heartbeat import HEARTBEAT_KEY, Heartbeat  # noqa: F401
from .lock import RelayLock, relay_running  # noqa: F401
from .relay import BACKOFF_MAX, Relay, StepResult  # noqa: F401
