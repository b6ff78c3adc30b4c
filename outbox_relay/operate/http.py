"""The operators' HTTP endpoints: GET /healthz (the health judge over health.gather()) and GET /metrics."""

import logging
import time

import falcon

from ..errors import OutboxError
from ..outbox.sqlitefile import free_bytes
from . import health
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0       # most seconds /healthz waits for the outbox write lock
MIN_FREE_BYTES = 16 * 1024 * 1024


class Health:
    """200 unless health.judge() says down (503); the reasons either way."""

    def __init__(self, cfg, outbox, relay_thread):
        self.cfg = cfg
        self.outbox = outbox
        self.relay_thread = relay_thread

    def on_get(self, req, resp):
        now = time.time()
        checks = {"outbox": self._check_outbox()}
        facts = health.gather(self.cfg, self.outbox, now=now, relay_thread=self.relay_thread,
                              outbox_problem=checks["outbox"].get("problem"))
        view = facts.relay
        verdict = health.judge(facts, self.cfg, expect_relay=True, now=now)
        beat = view.heartbeat
        checks["relay"] = {"ok": view.problem is None and view.running, "in_process": view.in_process,
                           "running": view.running, "problem": view.problem,
                           "pid": beat.pid if beat else None,
                           "heartbeat_age": round(beat.age(now), 3) if beat else None,
                           "last_success": beat.last_success if beat else None,
                           "last_error": beat.last_error if beat else None,
                           "target_unavailable_for": beat.outage(now) if beat else None}
        ok = verdict.level != health.DOWN
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.set_header("Cache-Control", "no-store")
        resp.media = {"ok": ok, "status": verdict.level, "reasons": verdict.reasons, "checks": checks}
        if not ok:
            log.info("healthz: %s", "; ".join(verdict.reasons))

    def _check_outbox(self):
        path = self.outbox.path
        try:
            self.outbox.probe_writable(min(self.cfg.busy_timeout, PROBE_TIMEOUT))
        except OutboxError as e:
            return {"ok": False, "path": path, "problem": f"outbox {path} is not writable: {e}"}
        free = free_bytes(path)
        if free is not None and free < MIN_FREE_BYTES:
            return {"ok": False, "path": path, "free_bytes": free,
                    "problem": f"disk almost full where the outbox lives: {free} bytes free"}
        return {"ok": True, "path": path, "free_bytes": free}


class MetricsResource:
    def __init__(self, metrics):
        self.metrics = metrics

    def on_get(self, req, resp):
        resp.content_type = METRICS_CONTENT_TYPE
        resp.data = self.metrics.render()
