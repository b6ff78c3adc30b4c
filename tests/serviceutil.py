"""The service as it runs, for the tests that talk to it over HTTP: a plain HTTP client, the
/metrics parser, the Service in this process on a kernel-chosen port (``running_service``), `outbox-relay
run` or `serve` in a subprocess (``service_process``), and the outbox seen from outside (its ids and
states, its write lock held as a stuck writer would).
"""

import contextlib
import http.client
import json
import signal
import sqlite3
import subprocess
import threading

from outbox_relay.config import Config
from outbox_relay.intake.webhook import WEBHOOK_PATH
from outbox_relay.service import Service
from outbox_relay.service.http import create_app, create_http_server

from cliutil import EXE
from relayutil import relay_env
from serverproc import free_port, wait_until

__all__ = ["Response", "request", "post", "health", "scrape", "metric", "received", "outbox_ids", "write_lock",
           "running_service", "ServiceProcess", "service_process"]


# -- an HTTP client ----------------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(url, method="GET", path="/", body=None, headers=None, timeout=15.0):
    """One request on a fresh connection (http.client: what we send is exactly what goes out)."""
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False)
        if isinstance(body, str):
            body = body.encode("utf-8")
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def post(url, body, headers=None, content_type="application/json", **kw):
    """POST body to the webhook."""
    headers = dict(headers or {})
    if content_type is not None:
        headers.setdefault("Content-Type", content_type)
    return request(url, "POST", WEBHOOK_PATH, body, headers, **kw)


def health(url):
    return request(url, "GET", "/healthz")


def scrape(url):
    """/metrics parsed by prometheus-client's own parser -> {(sample name, frozen labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    r = request(url, "GET", "/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.body.decode("utf-8")):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def received(samples, source, outcome):
    return metric(samples, "outbox_relay_messages_received_total", source=source, outcome=outcome)


# -- the outbox, seen from outside ---------------------------------------------------------------------


def outbox_ids(path):
    """message_id -> state, read with plain sqlite3 (no Outbox object, no side effects)."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT message_id, state FROM outbox"))
    finally:
        conn.close()


@contextlib.contextmanager
def write_lock(path):
    """Hold the outbox's SQLite write lock from another connection, as a stuck writer would.
    (We run as root, so chmod would not stop writes; a held lock does, after busy_timeout.)"""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


# -- the service in this process -------------------------------------------------------------------------


class Running:
    def __init__(self, service, url, cfg):
        self.service = service
        self.url = url
        self.cfg = cfg

    @property
    def relay(self):
        return self.service.relay_thread.relay


@contextlib.contextmanager
def running_service(tmp_path, relay=True, **settings):
    """The Service (relay thread + waitress) in this process, on a free port chosen by the kernel.

    Built from the same pieces Service._bind_http uses (create_app, create_http_server); only the
    port differs, because the configuration refuses port 0.
    """
    settings.setdefault("outbox", str(tmp_path / "outbox.db"))
    settings.setdefault("target", f"sqlite:///{tmp_path / 'archive.db'}")
    cfg = Config(**settings)
    service = Service(cfg, http=False, relay=relay).start()
    try:
        app = create_app(cfg, service.outbox, relay_thread=service.relay_thread)
        server = create_http_server(app, cfg, "127.0.0.1", 0)
        service.http_server = server
        service.http_thread = threading.Thread(target=server.run, name="test-http", daemon=True)
        service.http_thread.start()
        yield Running(service, f"http://127.0.0.1:{server.effective_port}", cfg)
    finally:
        service.shutdown()


# -- the service in a subprocess -----------------------------------------------------------------------


class ServiceProcess:
    """`outbox-relay run` (or `serve`) in a subprocess, configured through OUTBOX_RELAY_* variables;
    started when the constructor returns (it answers /healthz)."""

    def __init__(self, tmp_path, command="run", extra_env=None, **settings):
        self.outbox = str(tmp_path / "outbox.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = relay_env(**{"outbox": self.outbox, "target": f"sqlite:///{tmp_path / 'archive.db'}",
                           "http": f"127.0.0.1:{self.port}", **settings})
        env.update(extra_env or {})
        self.log_path = tmp_path / f"{command}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([EXE, command], cwd=str(tmp_path), env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, timeout=20, what=f"outbox-relay {command} to listen")
        except TimeoutError:
            self.close()
            raise AssertionError(f"outbox-relay {command} did not start:\n{self.log()}") from None

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"outbox-relay exited with {self.proc.returncode}:\n{self.log()}")
        return health(self.url).status in (200, 503)

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout=30):
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def service_process(tmp_path, command="run", extra_env=None, **settings):
    """`outbox-relay COMMAND` in a subprocess (settings as OUTBOX_RELAY_*, `extra_env` as they are),
    killed at the end if still running."""
    p = ServiceProcess(tmp_path, command, extra_env, **settings)
    try:
        yield p
    finally:
        p.close()
