"""`outbox-relay run` / `serve`: the relay thread and the HTTP server in one process.

Signals only set flags (huey's consumer): the main thread waits for the stop
flag, then stops taking HTTP requests (the listening socket closes), lets the
requests in flight finish and their answers go out, lets the relay finish the
batch in flight, and returns 0. A second signal exits at once, which is still
safe: a request that had not committed got no 200, the outbox is committed, and
the target insert is idempotent.
"""

import logging
import os
import signal
import threading
import time

from .errors import RelayLocked, TargetError
from .handoff import Spool, SpoolIngester
from .sync import Relay, RelayLock

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
            try:
                self.relay.target.ensure_schema()
            except TargetError as e:
                log.warning("target not ready yet (%s); messages stay in the outbox until it is", e)
            self.relay.run()
        except BaseException as e:  # recorded for /healthz; the process keeps serving puts
            self.crashed = f"{type(e).__name__}: {e}"
            log.exception("relay thread died")

    def alive(self):
        return self.thread.is_alive()

    def stop(self, timeout=SHUTDOWN_GRACE):
        self.relay.stop()
        self.thread.join(timeout)
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
        self.http_server = None
        self.http_thread = None
        self._stop = threading.Event()
        self._signals = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self):
        from .target import Target
        cfg = self.cfg
        self.outbox = cfg.open_outbox()
        if self.want_relay:
            self.lock = RelayLock(cfg.outbox).acquire()
            self.target = Target(cfg.target, table=cfg.table, pool_size=cfg.pool_size,
                                 connect_timeout=cfg.connect_timeout,
                                 statement_timeout=cfg.statement_timeout)
            if self.target.dialect == "sqlite" and cfg.target_is_default:
                log.info("no target configured: writing to the embedded %s", self.target.describe())
            else:
                log.info("target: %s", self.target.describe())
            relay = Relay(self.outbox, self.target, batch_size=cfg.batch_size)
            self.relay_thread = RelayThread(relay)
            self.relay_thread.start()
            # The handoff spool is ingested where the relay runs: one ingester per outbox.
            self.spool_ingester = SpoolIngester(Spool(cfg.spool), self.outbox).start()
        if self.want_http:
            self._start_http()
        return self

    def _start_http(self):
        from .web import create_app
        app = create_app(self.cfg, self.outbox, relay_thread=self.relay_thread)
        host, port = self.cfg.http_address
        self.http_server = create_http_server(app, self.cfg, host, port)
        self.http_thread = threading.Thread(target=self._serve_http, name="outbox-relay-http", daemon=True)
        self.http_thread.start()
        log.info("listening on http://%s:%s (POST /webhook/feishu-message, GET /healthz, GET /metrics)",
                 host, self.http_server.effective_port)

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

    def shutdown(self):
        if self.http_server is not None:
            drain_http_server(self.http_server, self.http_thread, SHUTDOWN_GRACE)
            self.http_server = None
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

    def _on_signal(self, signum, frame):
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)
        self.request_stop()

    def run_forever(self):
        """Start, wait for a signal (or a dead HTTP server), shut down. Returns the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                self.start()
            except RelayLocked:
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
            for s, h in previous.items():
                signal.signal(s, h)


# -- waitress ---------------------------------------------------------------------------------


def create_http_server(app, cfg, host, port):
    """A waitress server for `app`, bound but not yet serving (call .run() on a thread)."""
    from waitress.server import create_server
    return create_server(
        app, host=host, port=port, threads=cfg.http_threads, ident="outbox-relay",
        clear_untrusted_proxy_headers=True, channel_timeout=30,
        # waitress refuses a body at or over this size while reading the headers (or, when chunked,
        # as soon as it grows past it), so an oversized body is never read. +1: it counts ">=".
        max_request_body_size=cfg.max_body + 1)


def drain_http_server(server, thread, grace):
    """Stop accepting connections, let the requests in flight finish and their answers go out,
    then close everything. Returns True if everything in flight finished within `grace` seconds.

    waitress has no graceful stop of its own, and its socket loop (asyncore) is not thread-safe,
    so every change to the loop's sockets is handed to the loop thread through waitress's trigger.
    """
    from waitress import wasyncore
    from waitress.channel import HTTPChannel

    deadline = time.monotonic() + grace
    if not _on_loop(server, lambda: wasyncore.dispatcher.close(server), thread):
        log.warning("HTTP loop did not answer; closing without waiting for requests in flight")
    busy = []
    while time.monotonic() < deadline:
        # A channel is busy while a request is being received, handled, or its answer is not yet
        # written out. Idle keep-alive connections are not waited for.
        busy = [c for c in list(server._map.values()) if isinstance(c, HTTPChannel)
                and (c.request is not None or c.requests or c.total_outbufs_len)]
        if not busy:
            break
        time.sleep(0.02)
    if busy:
        log.warning("%d HTTP request(s) still in flight after %.0f s; closing them", len(busy), grace)
    _on_loop(server, lambda: wasyncore.close_all(server._map), thread)
    if thread is not None:
        thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1.0)
    return not busy


def _on_loop(server, fn, thread, timeout=5.0):
    """Run fn() on the waitress loop thread and wait for it; False if the loop is not running."""
    if thread is None or not thread.is_alive():
        fn()
        return True
    done = threading.Event()

    def thunk():
        try:
            fn()
        finally:
            done.set()
    try:
        server.trigger.pull_trigger(thunk)
    except OSError:  # the trigger is closed: the loop has already ended
        fn()
        return True
    return done.wait(timeout)
