"""The service around the relay: `run`/`serve` (the relay thread, the spool ingester and the HTTP
server in one process, run.py) and `sync` (one drain, then exit: burst.py)."""

from .burst import sync_once  # noqa: F401
from .run import Service  # noqa: F401
