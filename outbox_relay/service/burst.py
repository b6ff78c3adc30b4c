"""`outbox-relay sync`: drain everything waiting into the target once, then return (rq's
`work(burst=True)`), for cron and tests: the same lock, start-up, spool ingestion and relay as `run`."""

import contextlib
import logging
import threading

from ..errors import SpoolError
from ..intake.spool import Spool
from ..progress import NO_PROGRESS
from ..sync import Relay, RelayLock
from ..targets import open_from_config
from .lifecycle import announce_target, ensure_schema_or_warn, two_signal_shutdown

log = logging.getLogger(__name__)


def sync_once(cfg, *, max_batches=None, timeout=None, progress=NO_PROGRESS):
    """Ingest the spool, drain the outbox into the target, return the report: batches, delivered, new,
    dead, pruned, outbox (counts after), spool (None without one; see _ingest_spool), and
    `unfinished`: why rows are still waiting (stopped, timed out, --max-batches reached), None when
    nothing is. A stop (the first Ctrl-C, --timeout) ends the ingestion between chunks as it ends
    the drain between batches."""
    with contextlib.closing(cfg.open_outbox()) as outbox, contextlib.closing(open_from_config(cfg)) as target:
        with RelayLock(cfg.outbox):
            announce_target(cfg, target)
            ensure_schema_or_warn(target)
            relay = Relay(outbox, target, batch_size=cfg.batch_size)
            timed_out = threading.Event()
            timer = threading.Timer(timeout, lambda: (timed_out.set(), relay.stop())) if timeout else None
            restore = two_signal_shutdown(relay.stop)
            try:
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                spooled = _ingest_spool(cfg.spool, outbox, stop=lambda: relay.stopping)
                waiting = outbox.counts()
                task = progress.task("syncing", total=waiting["pending"] + waiting["parked"])
                totals = relay.drain(max_batches, on_step=lambda r: task.advance(r.claimed))
            finally:
                restore()
                if timer is not None:
                    timer.cancel()
        counts = outbox.counts()
    unfinished = None
    if counts["pending"] or counts["parked"]:
        unfinished = (f"timed out after {timeout:g} s" if timed_out.is_set()
                      else "stopped" if relay.stopping else f"--max-batches {max_batches} reached")
    return {"batches": totals["batches"], "delivered": totals["delivered"], "new": totals["new"],
            "dead": totals["dead"], "pruned": totals["pruned"], "outbox": counts, "spool": spooled,
            "unfinished": unfinished}


def _ingest_spool(path, outbox, stop):
    """What the spool holds goes into the outbox before the drain, until stop(). None without a
    spool; else what was stored, found already stored, set aside, what still waits (Spool.status's
    count: "at_least" ["waiting"] when it is a lower bound) and `error`: why ingestion stopped early
    or could not start (the spool cannot be read, the outbox is full), None when it did not."""
    spool = Spool(path)
    try:
        if not spool.exists():
            return None
        report = spool.ingest(outbox, stop=stop)
    except SpoolError as e:  # said by the caller: `sync` exits 1 with it
        return {"stored": 0, "duplicates": 0, "rejected": 0, "waiting": None, "at_least": [], "error": str(e)}
    if report.error:
        log.warning("spool items left waiting in %s: %s", spool.new, report.error)
    left = spool.status()
    return {"stored": report.stored, "duplicates": report.duplicates, "rejected": report.rejected,
            "waiting": left["waiting"], "at_least": [k for k in left["at_least"] if k == "waiting"],
            "error": report.error or left["error"]}
