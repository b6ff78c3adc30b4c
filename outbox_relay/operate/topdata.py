"""What `outbox-relay top` shows, gathered: two sources behind one small interface (`snapshot()`
returns a Snapshot; `name` says where it looks).

  OutboxSource   the outbox itself, opened read-only: counts, oldest pending age, file sizes, the
                 heartbeat the relay writes there, the spool, and `health`'s verdict over them.
                 Intake is counted from the rows committed since the last look (by message source,
                 whatever way they came in), delivery from the heartbeat's `delivered` counter.
  MetricsSource  a service's /metrics (prometheus_client's own parser) and /healthz: everything,
                 intake by source and by way in (webhook, spool) included. When the service does
                 not answer it says so and shows what the local outbox holds.

Counters are running totals; top.py turns two snapshots into rates.
"""

import base64
import collections
import dataclasses
import http.client
import json
import os
import time
import urllib.parse

from ..errors import OutboxError
from ..intake.spool import Spool
from ..logs import mask_url
from ..sync import Heartbeat
from . import health
from .human import duration

TIMEOUT = 2.0  # seconds for each request to the service: a hung service must not freeze the view


@dataclasses.dataclass
class Snapshot:
    """What one look saw. None: not known from this source (or not now)."""

    at: float                                   # time.monotonic() when taken
    epoch: object = None                        # whose counters: rates only between equal epochs
    service: str | None = None                  # MetricsSource: "up" or "down: why"
    problem: str | None = None                  # the outbox cannot be read, and why
    counts: dict | None = None
    oldest_pending_age: float | None = None
    files: dict | None = None                   # bytes: db, wal, free
    relay: tuple = ("unknown", None)            # (state, detail)
    health: tuple | None = None                 # (level, reasons)
    intake: dict = dataclasses.field(default_factory=dict)  # {(via, source): running total}
    delivered: float | None = None              # running totals ...
    errors: float | None = None
    batches: tuple | None = None                # ... (seconds, count) of relay batches
    connections: tuple | None = None            # (in use, idle, pool size)
    spool: dict | None = None
    reconcile: dict | None = None               # reconcile_state.summary() (from /metrics: its totals only)


def relay_state(running, problem, outage, last_error, outbox_problem=None):
    """(state, detail): running, backing off (and why), stuck, or stopped."""
    if not running:
        return "stopped", problem or "no relay is running for this outbox: start `outbox-relay run`"
    if problem:
        return "stuck", problem
    if outage is not None:
        return "backing off", f"{duration(outage)} without the target: {last_error or 'unknown error'}"
    if outbox_problem:
        return "backing off", f"the outbox: {outbox_problem}"
    return "running", None


# -- the outbox --------------------------------------------------------------------------------


class OutboxSource:
    """The outbox file on this machine (a read-only Outbox), judged as `status` judges it."""

    def __init__(self, cfg, outbox, expect_relay=False):
        """`expect_relay`: a relay should be running (a service is expected: --url), so none
        running is down, as /healthz says; otherwise `sync` from cron may be the relay, as for `status`."""
        self.cfg = cfg
        self.outbox = outbox
        self.expect_relay = expect_relay
        self.name = os.path.abspath(outbox.path)
        self.spool = Spool(cfg.spool)
        self._last_id = None
        self._intake = collections.Counter()

    def snapshot(self):
        now = time.time()
        snap = Snapshot(at=time.monotonic())
        try:
            facts = health.gather(self.cfg, self.outbox, now=now)
            self._count_arrivals(snap)
            sizes = self.outbox.sizes()
        except OutboxError as e:
            snap.problem = str(e)
            snap.spool = self.spool_status(now)
            return snap
        snap.spool = _shown(facts.spool)
        snap.counts, snap.oldest_pending_age = facts.counts, facts.oldest_pending_age
        snap.problem = facts.outbox_problem
        snap.reconcile = facts.reconcile
        snap.files = {"db": sizes["file"], "wal": sizes["wal"], "free": sizes["free_bytes"]}
        self._relay(snap, facts.relay, now)
        verdict = health.judge(facts, self.cfg, expect_relay=self.expect_relay, now=now)
        snap.health = (verdict.level, verdict.reasons)
        return snap

    def _relay(self, snap, view, now):
        beat = view.heartbeat or Heartbeat(beat_at=now)
        snap.relay = relay_state(view.running, view.problem, beat.outage(now), beat.last_error, beat.outbox_problem)
        # The heartbeat's counters start again with each relay: its start time is their epoch.
        snap.epoch = ("outbox", beat.started_at)
        snap.delivered = beat.delivered if view.running and view.heartbeat is not None else None

    def _count_arrivals(self, snap):
        # Rows that came and were pruned between two looks are not seen: only delivered rows past
        # the newest keep_delivered are pruned, so that takes keep_delivered messages a second.
        arrived, last = self.outbox.arrivals(self._last_id)
        if not arrived and self._last_id is not None:
            last = min(last, self.outbox.arrivals()[1])  # a new file at the path (recover): lower ids
        self._last_id = last
        for source, n in arrived.items():
            self._intake["any", source] += n
        snap.intake = dict(self._intake)

    def spool_status(self, now=None):
        return _shown(self.spool.status(now))


def _shown(spool):
    """A spool status worth a line: one that is there, or cannot be read (not one that is not there)."""
    return spool if spool["exists"] or spool["error"] else None


# -- a running service's /metrics and /healthz ----------------------------------------------------


class MetricsSource:
    """`--url`: the service's own numbers; the local outbox (when there is one) while it is down."""

    def __init__(self, url, fallback=None, timeout=TIMEOUT):
        self.base = url.rstrip("/")
        self.name = mask_url(self.base)
        self.fallback = fallback
        self.timeout = timeout

    def snapshot(self):
        try:
            text = self._get("/metrics", (200,))
            healthz = json.loads(self._get("/healthz", (200, 503)))
            snap = from_metrics(parse_metrics(text), healthz)
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
            return self._down(e)
        if self.fallback is not None:
            snap.spool = self.fallback.spool_status()
        return snap

    def _down(self, error):
        snap = self.fallback.snapshot() if self.fallback is not None else Snapshot(at=time.monotonic())
        snap.service = f"down: {self.name} does not answer ({_why(error)})"
        if self.fallback is None:
            snap.problem = "and no outbox here to read (give --outbox where the service's outbox is)"
        return snap

    def _get(self, path, statuses):
        parts = urllib.parse.urlsplit(self.base)
        # Like Prometheus's own scraper: no proxy from the environment between us and the service.
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request("GET", parts.path + path, headers=_basic_auth(parts))
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if resp.status not in statuses:
            raise ValueError(f"GET {path}: HTTP {resp.status}")
        return body


def _basic_auth(parts):
    """A user:password in the URL (a proxy in front of the service) as the Authorization header."""
    if parts.username is None:
        return {}
    userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(userinfo.encode()).decode()}


def _why(error):
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


def parse_metrics(text):
    """Prometheus text -> {(sample name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def _by_label(samples, name, label, **where):
    """{value of `label`: sample value} over the samples of `name` whose other labels match `where`."""
    out = {}
    for (sample, labels), value in samples.items():
        labels = dict(labels)
        if sample == name and label in labels and all(labels.get(k) == v for k, v in where.items()):
            out[labels[label]] = value
    return out


def from_metrics(samples, healthz):
    """A Snapshot of what /metrics and /healthz say."""
    snap = Snapshot(at=time.monotonic(), service="up")
    created = _by_label(samples, "outbox_relay_messages_received_created", "source")
    snap.epoch = ("metrics", min(created.values()) if created else None)  # the service's start
    _outbox_from_metrics(snap, samples)
    _relay_from_metrics(snap, samples)
    snap.reconcile = _reconcile_from_metrics(samples)
    relay = healthz["checks"]["relay"]
    snap.relay = relay_state(relay["running"], relay["problem"], relay["target_unavailable_for"], relay["last_error"])
    snap.health = (healthz["status"], healthz["reasons"])
    return snap


def _outbox_from_metrics(snap, samples):
    if _value(samples, "outbox_relay_outbox_readable") == 0:
        snap.problem = "the service cannot read its outbox (see its log and /healthz)"
    counts = _by_label(samples, "outbox_relay_outbox_rows", "state")
    if counts:
        snap.counts = {state: int(counts.get(state, 0)) for state in ("pending", "parked", "dead", "delivered")}
        waiting = snap.counts["pending"] + snap.counts["parked"]
        snap.oldest_pending_age = _value(samples, "outbox_relay_outbox_oldest_pending_age_seconds") if waiting else None
    files = _by_label(samples, "outbox_relay_outbox_bytes", "file")
    if files:
        snap.files = {"db": files.get("db"), "wal": files.get("wal"),
                      "free": _value(samples, "outbox_relay_outbox_disk_free_bytes")}
    for via, name in (("webhook", "outbox_relay_messages_received_total"),
                      ("spool", "outbox_relay_spool_ingested_total")):
        for source, total in _by_label(samples, name, "source", outcome="stored").items():
            snap.intake[via, source] = total


def _reconcile_from_metrics(samples):
    """Reconciliation's totals as /metrics has them (no series: off, or this is not the service that runs it)."""
    calls = _value(samples, "outbox_relay_reconcile_calls_total")
    if calls is None:
        return None
    until = _value(samples, "outbox_relay_reconcile_checked_until_seconds")
    return {"enabled": True, "off": None, "complete_up_to": until,
            "behind_s": None if until is None else max(0.0, time.time() - until),
            "gaps_total": _by_label(samples, "outbox_relay_reconcile_gaps_total", "source"), "gaps_24h": None,
            "calls_total": calls, "calls_last_hour": None,
            "budget_per_hour": _value(samples, "outbox_relay_reconcile_budget_calls_per_hour"),
            "uncovered": int(_value(samples, "outbox_relay_reconcile_uncovered_chats") or 0), "chats": []}


def _relay_from_metrics(snap, samples):
    # Only a service whose relay runs in it (`run`, not `serve`) has these.
    snap.delivered = _value(samples, "outbox_relay_relay_rows_total", outcome="delivered")
    snap.errors = _value(samples, "outbox_relay_relay_errors_total")
    seconds = _value(samples, "outbox_relay_relay_batch_seconds_sum")
    if seconds is not None:
        snap.batches = (seconds, _value(samples, "outbox_relay_relay_batch_seconds_count"))
    conns = _by_label(samples, "outbox_relay_target_connections", "state")
    if conns:
        snap.connections = (conns.get("in_use"), conns.get("idle"), _value(samples, "outbox_relay_target_pool_size"))
