"""The service's HTTP side: one Falcon app (the webhook from intake/, /healthz and /metrics from operate/)
served by waitress, whose own refusals answer in our JSON shape, and stopped without dropping a request
in flight."""

import json
import logging
import threading
import time

import falcon

from ..intake.webhook import WEBHOOK_PATH, Webhook, refusal
from ..operate.http import Health, MetricsResource
from ..operate.metrics import Metrics

log = logging.getLogger(__name__)


def create_app(cfg, outbox, relay_thread=None, spool_ingester=None):
    """The WSGI app. `relay_thread` (service.run.RelayThread) when the relay runs in this process;
    without it (`serve`), /healthz judges the relay by the heartbeat it writes into the outbox.
    `spool_ingester` (intake.spool.SpoolIngester): counted in /metrics when it runs in this process."""
    relay = relay_thread.relay if relay_thread is not None else None
    metrics = Metrics(outbox, relay, cfg=cfg, spool=spool_ingester)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _unexpected_error)
    app.add_route(WEBHOOK_PATH, Webhook(cfg, outbox, metrics))
    app.add_route("/healthz", Health(cfg, outbox, relay_thread))
    app.add_route("/metrics", MetricsResource(metrics))
    return app


def _serialize_error(req, resp, exc):
    """Falcon's own errors (404, 405, a malformed header) as the same JSON shape as ours."""
    if exc.description:
        message = exc.description
    elif exc.status_code == 404:
        message = f"no such path: {req.path[:200]} (POST {WEBHOOK_PATH}, GET /healthz, GET /metrics)"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {req.method} is not allowed on {req.path[:200]} (allowed: {allowed})"
    else:
        message = exc.title
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(refusal(message), ensure_ascii=False)


def _unexpected_error(req, resp, exc, params):
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = refusal("internal error (see the server log)")


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
