"""`outbox-relay run` / `serve`: the relay thread and the HTTP server in one process.

Signals only set flags (huey's consumer): the main thread waits for the stop
flag, then stops taking HTTP requests (the listening socket closes), lets the
requests in flight finish and their answers go out, lets the relay finish the
batch in flight, and returns 0. A second signal exits at once, which is still
safe: a request that had not committed got no 200, the outbox is committed, and
the target insert is idempotent.
"""

import errno
import json
import logging
import os
import signal
import threading
import time

from ..errors import ConfigError, RelayLocked, TargetError
from ..intake.spool import Spool, SpoolIngester
from ..sync.relay import Relay, RelayLock
from ..targets import open_from_config

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
        if self.want_http:
            self._bind_http()  # before anything runs: a port in use is one line, nothing started
        if self.relay_thread is not None:
            self.relay_thread.start()
            self.spool_ingester.start()
        if self.http_server is not None:
            self.http_thread = threading.Thread(target=self._serve_http, name="outbox-relay-http", daemon=True)
            self.http_thread.start()
        return self

    def _bind_http(self):
        from ..intake.webhook import create_app
        app = create_app(self.cfg, self.outbox, relay_thread=self.relay_thread, spool_ingester=self.spool_ingester)
        host, port = self.cfg.http_address
        try:
            self.http_server = create_http_server(app, self.cfg, host, port)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.cfg.http} (--http / OUTBOX_RELAY_HTTP): {e.strerror}"
                              + (" — is another outbox-relay running there?" if e.errno == errno.EADDRINUSE
                                 else "")) from None
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

    def run_forever(self):
        """Start, wait for a signal (or a dead HTTP server), shut down. Returns the exit code."""
        restore = two_signal_shutdown(self.request_stop)
        try:
            try:
                self.start()
            except (RelayLocked, ConfigError):
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


# -- the start-up every relay shares (run, sync, test) ----------------------------------------


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


# -- waitress ---------------------------------------------------------------------------------


def create_http_server(app, cfg, host, port):
    """A waitress server for `app`, bound but not yet serving (call .run() on a thread)."""
    from waitress.server import create_server
    server = create_server(
        app, host=host, port=port, threads=cfg.http_threads, ident="outbox-relay",
        clear_untrusted_proxy_headers=True, channel_timeout=30,
        # waitress refuses a body at or over this size while reading the headers (or, when chunked,
        # as soon as it grows past it), so an oversized body is never read. +1: it counts ">=".
        max_request_body_size=cfg.max_body + 1)
    server.channel_class = _json_errors_channel()
    return server


def _json_errors_channel():
    """waitress's channel, whose own refusals (a body over max_body, a malformed request) answer in
    our JSON shape and with our numbers, not waitress's plain text ("exceeds max_body of 1048577")."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    from ..intake.webhook import refusal

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            if error.code == 413:
                limit = self.channel.server.adj.max_request_body_size - 1
                message = f"body is over the limit of {limit} bytes"
            else:
                message = f"{error.reason}: {error.body}"
            body = json.dumps(refusal(message)).encode("utf-8")
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorsChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorsChannel


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
