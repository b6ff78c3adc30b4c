"""`outbox-relay run` / `serve`: the relay thread and the HTTP server in one process.

Signals only set flags (huey's consumer): the main thread waits for the stop
flag, then stops taking HTTP requests (the listening socket closes), lets the
requests in flight finish and their answers go out, lets the relay finish the
batch in flight, and returns 0. A second signal exits at once, which is still
safe: a request that had not committed got no 200, the outbox is committed, and
the target insert is idempotent.
"""

import errno
import logging
import threading
import time

from ..config import BY_NAME
from ..errors import ConfigError, OutboxRelayError
from ..intake.spool import Spool, SpoolIngester
from ..sync import Relay, RelayLock
from ..targets import open_from_config
from .http import create_app, create_http_server, drain_http_server
from .lifecycle import announce_target, ensure_schema_or_warn, two_signal_shutdown

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 20.0  # seconds the batch in flight may take before we give up waiting


class RelayThread:
    """The relay loop on a thread of its own, with what /healthz needs to judge it."""

    def __init__(self, relay):
        self.relay = relay
        self.crashed = None
        self.thread = threading.Thread(target=self._main, name="outbox-relay", daemon=True)

    def start(self):
        self.thread.start()

    def _main(self):
        try:
            ensure_schema_or_warn(self.relay.target)
            self.relay.run()
        except BaseException as e:  # recorded for /healthz; the process keeps serving puts
            self.crashed = f"{type(e).__name__}: {e}"
            log.exception("relay thread died")

    def alive(self):
        return self.thread.is_alive()

    def stop(self, timeout=SHUTDOWN_GRACE):
        self.relay.stop()
        if self.thread.ident is not None:  # started at all (start-up may fail before)
            self.thread.join(timeout)
        return not self.thread.is_alive()


class ReconcilerThread:
    """The reconciler (backfill/reconcile.py) on a thread of its own: a pass every
    feishu_reconcile_interval, counted from the start of the one before. Its own target connection
    and its own stop, so neither intake nor the relay ever waits for it; the stop also cuts off a
    request in flight, so a SIGTERM mid-pass ends it at once."""

    def __init__(self, cfg, outbox):
        from ..backfill.feishu_api import FeishuClient
        from ..backfill.reconcile import Reconciler
        self.stop_event = threading.Event()
        self.interval = cfg.feishu_reconcile_interval
        client = FeishuClient(cfg.feishu_app_id, cfg.feishu_app_secret, base=cfg.feishu_api_base,
                              rate=cfg.feishu_rate, stop=self.stop_event)
        self.target = open_from_config(cfg)
        self.reconciler = Reconciler(cfg, outbox, self.target, client)
        self.thread = threading.Thread(target=self._main, name="outbox-relay-reconcile", daemon=True)

    def start(self):
        self.thread.start()

    def _main(self):
        from ..backfill.reconcile import RETRY_SOON
        while not self.stop_event.is_set():
            began, interval = time.monotonic(), self.interval
            try:
                if self.reconciler.run_pass().retry_soon:
                    interval = min(interval, RETRY_SOON)
            except Exception:  # noqa: BLE001 - the next pass tries again; intake and the relay go on
                log.exception("reconciliation pass failed")
            self.stop_event.wait(max(0.0, interval - (time.monotonic() - began)))

    def request_stop(self):
        """Signal-handler safe: sets a flag only."""
        self.stop_event.set()

    def stop(self, timeout=SHUTDOWN_GRACE):
        self.stop_event.set()
        if self.thread.ident is not None:
            self.thread.join(timeout)
        self.reconciler.close()
        self.target.close()
        return not self.thread.is_alive()


class Service:
    def __init__(self, cfg, *, http=True, relay=True):
        self.cfg = cfg
        self.want_http = http
        self.want_relay = relay
        self.outbox = None
        self.target = None
        self.lock = None
        self.relay_thread = None
        self.spool_ingester = None
        self.reconciler_thread = None
        self.http_server = None
        self.http_thread = None
        self._stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self):
        cfg = self.cfg
        self.outbox = cfg.open_outbox()
        if self.want_relay:
            self.lock = RelayLock(cfg.outbox).acquire()
            self.target = open_from_config(cfg)
            announce_target(cfg, self.target)
            relay = Relay(self.outbox, self.target, batch_size=cfg.batch_size, check_interval=cfg.check_interval)
            self.relay_thread = RelayThread(relay)
            # The handoff spool is ingested where the relay runs: one ingester per outbox. Made
            # before the app, whose /metrics counts it; started with the relay.
            self.spool_ingester = SpoolIngester(Spool(cfg.spool), self.outbox)
            self._make_reconciler()
        if self.want_http:
            self._bind_http()  # before anything runs: a port in use is one line, nothing started
        if self.relay_thread is not None:
            self.relay_thread.start()
            self.spool_ingester.start()
        if self.reconciler_thread is not None:
            self.reconciler_thread.start()
        if self.http_server is not None:
            self.http_thread = threading.Thread(target=self._serve_http, name="outbox-relay-http", daemon=True)
            self.http_thread.start()
        return self

    def _make_reconciler(self):
        from ..backfill.reconcile_state import off_reason
        off = off_reason(self.cfg)
        if off:
            log.info("reconciliation with Feishu's history is %s", off)
            return
        self.reconciler_thread = ReconcilerThread(self.cfg, self.outbox)
        log.info("reconciling the archive with Feishu's history every %g s (window %d s, at most %d calls/h)",
                 self.cfg.feishu_reconcile_interval, self.cfg.feishu_reconcile_window,
                 self.cfg.feishu_reconcile_budget)

    def _bind_http(self):
        app = create_app(self.cfg, self.outbox, relay_thread=self.relay_thread, spool_ingester=self.spool_ingester)
        host, port = self.cfg.http_address
        try:
            self.http_server = create_http_server(app, self.cfg, host, port)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.cfg.http} ({BY_NAME['http'].named}): {e.strerror}"
                              + (" — is another outbox-relay running there?" if e.errno == errno.EADDRINUSE
                                 else "")) from None
        log.info("listening on http://%s:%s (POST /webhook/feishu-message, GET /healthz, GET /metrics)",
                 host, self.http_server.effective_port)
        if self.cfg.exposed():
            log.warning("OPEN WEBHOOK: %s", self.cfg.exposed())

    def _serve_http(self):
        try:
            self.http_server.run()
        except Exception:
            log.exception("HTTP server stopped")
            self._stop.set()

    def request_stop(self):
        """Signal-handler safe: sets flags only."""
        self._stop.set()
        if self.relay_thread is not None:
            self.relay_thread.relay.stop()
        if self.reconciler_thread is not None:
            self.reconciler_thread.request_stop()

    def shutdown(self):
        if self.http_server is not None:
            drain_http_server(self.http_server, self.http_thread, SHUTDOWN_GRACE)
            self.http_server = None
        if self.reconciler_thread is not None:
            if not self.reconciler_thread.stop():
                log.warning("the reconciliation pass did not stop in %.0f s; exiting anyway", SHUTDOWN_GRACE)
            self.reconciler_thread = None
        if self.spool_ingester is not None:
            self.spool_ingester.stop()
            self.spool_ingester = None
        if self.relay_thread is not None:
            if not self.relay_thread.stop():
                log.warning("the batch in flight did not finish in %.0f s; exiting anyway (safe:"
                            " the rows are still pending and the insert is idempotent)", SHUTDOWN_GRACE)
            self.relay_thread = None
        if self.target is not None:
            self.target.close()
        if self.outbox is not None:
            self.outbox.close()
        if self.lock is not None:
            self.lock.release()

    # -- main ---------------------------------------------------------------------------------

    def run_forever(self):
        """Start, wait for a signal (or a dead HTTP server), shut down. Returns the exit code."""
        restore = two_signal_shutdown(self.request_stop)
        try:
            try:
                self.start()
            except OutboxRelayError:
                self.shutdown()
                raise
            while not self._stop.wait(0.5):
                pass
            log.info("stopping: finishing the batch in flight")
            started = time.monotonic()
            self.shutdown()
            log.info("stopped in %.1f s", time.monotonic() - started)
            return 0
        finally:
            restore()


