"""What every relay process does the same way: say where messages go, make the table where it may,
and turn SIGTERM/SIGINT into a stop (the first finishes the work in flight, a second exits at once)."""

import logging
import os
import signal

from ..errors import TargetError

log = logging.getLogger(__name__)


def announce_target(cfg, target):
    """Say in the log where messages go (the embedded default says where it writes)."""
    if cfg.target_is_default:
        log.info("no target configured: writing to the embedded %s", target.describe())
    else:
        log.info("target: %s", target.describe())


def ensure_schema_or_warn(target):
    """Create the table where we may; a target that is down now gets it at the first batch."""
    try:
        target.ensure_schema()
    except TargetError as e:
        log.warning("target not ready yet (%s); messages stay in the outbox until it is", e)


def two_signal_shutdown(on_first):
    """First SIGTERM/SIGINT -> on_first() (it only sets flags: huey's consumer, rq's worker);
    a second exits at once, which is safe: everything acknowledged is committed in the outbox
    and the target insert is idempotent. Returns a function that puts the old handlers back."""
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            os._exit(128 + signum)
        on_first()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore():
        for s, h in previous.items():
            signal.signal(s, h)
    return restore


