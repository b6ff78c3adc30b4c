"""Prometheus metrics for one web app: what the webhook counts, what the relay reports, and what
the outbox holds.

Each app gets its own CollectorRegistry rather than prometheus_client's global one, so two apps in
one process (tests; a gateway that also embeds the library) never clash over metric names.

The outbox gauges (rows by state, oldest pending age, relay heartbeat) are read from SQLite at
scrape time by a custom collector, because the database is the truth. In-memory counters would
drift from it as soon as another process writes the same outbox.
"""

import logging
import re
import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..backfill import reconcile_state
from ..errors import OutboxError
from ..message import SOURCES
from ..message.events import KINDS as EVENT_KINDS
from ..sync import Heartbeat
from . import health

log = logging.getLogger(__name__)

# "unknown": the request was refused before we could tell what kind of message it held.
SOURCE_LABELS = SOURCES + ("feishu", "unknown")
OUTCOMES = ("stored", "duplicate", "duplicate_changed", "replayed", "ignored", "verification", "invalid",
            "unauthorized", "too_large", "unsupported_media_type", "unavailable", "error")
# Refusals, pre-created (as source "unknown") so the dashboard's "errors by kind" reads 0, not nothing.
REFUSALS = ("invalid", "unauthorized", "too_large", "unsupported_media_type", "unavailable", "error")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Anyone who can post can invent event types; a label per type must not grow without bound.
MAX_EVENT_TYPES = 32
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The registry of one app and the instruments the webhook and the relay update."""

    def __init__(self, outbox, relay=None, *, cfg=None, spool=None):
        """`relay`: the in-process Relay; `spool`: the in-process intake.spool.SpoolIngester; `cfg`: the
        Config whose thresholds the alert rules compare against (deploy/prometheus/alerts.yml)."""
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "outbox_relay_messages_received", "Webhook requests, by message source and outcome",
            ("source", "outcome"), registry=registry)
        # Pre-create the common series so dashboards and rate() see 0 instead of nothing.
        for source in SOURCES:
            for outcome in ("stored", "duplicate"):
                self.received.labels(source, outcome)
        for outcome in REFUSALS:
            self.received.labels("unknown", outcome)
        self._spool_instruments(registry, spool)
        if cfg is not None:
            self._thresholds(registry, cfg)
        self.events = Counter(
            "outbox_relay_events_received", "Events about a message the webhook took (edits, recalls,"
            " reactions), by kind and outcome", ("kind", "outcome"), registry=registry)
        for kind in EVENT_KINDS:
            for outcome in ("stored", "duplicate"):
                self.events.labels(kind, outcome)
        self.ignored = Counter(
            "outbox_relay_events_ignored", "Feishu/OpenClaw events acknowledged but not stored, by type",
            ("event_type",), registry=registry)
        self._event_types = set()
        self._event_types_lock = threading.Lock()
        self.in_flight = Gauge(
            "outbox_relay_http_requests_in_flight", "Webhook requests being handled now",
            registry=registry)
        self.webhook_seconds = Histogram(
            "outbox_relay_webhook_seconds", "Time to answer a webhook POST (commit included)",
            buckets=LATENCY_BUCKETS, registry=registry)
        if relay is not None:
            self._relay_instruments(registry)
            relay.observers.append(self.observe_step)
        registry.register(_OutboxCollector(outbox, relay, cfg))

    def _relay_instruments(self, registry):
        self.batches = Counter("outbox_relay_relay_batches", "Batches the relay wrote to the target",
                               registry=registry)
        self.rows = Counter("outbox_relay_relay_rows", "Outbox rows the relay finished, by outcome",
                            ("outcome",), registry=registry)
        for outcome in ("delivered", "dead"):
            self.rows.labels(outcome)
        self.inserted = Counter("outbox_relay_target_rows_inserted",
                                "Rows new to the target (the rest were already there)", registry=registry)
        self.errors = Counter("outbox_relay_relay_errors",
                              "Batches that failed because the target was unavailable", registry=registry)
        self.batch_seconds = Histogram("outbox_relay_relay_batch_seconds",
                                       "Time for one relay batch, claim to local mark",
                                       buckets=BATCH_BUCKETS, registry=registry)

    def _spool_instruments(self, registry, spool):
        # The hook's spool path is a way in of its own: "messages in by source" must include it.
        self.spooled = Counter(
            "outbox_relay_spool_ingested", "Handoff spool items ingested, by message source and outcome",
            ("source", "outcome"), registry=registry)
        for source in SOURCES:
            self.spooled.labels(source, "stored")
        self.spooled.labels("unknown", "rejected")
        if spool is not None:
            spool.observers.append(self.observe_spool)

    def _thresholds(self, registry, cfg):
        # The alert rules compare against these, so they follow the service's own settings (and
        # mean what `health` means) instead of numbers copied into the rules file.
        Gauge("outbox_relay_unhealthy_after_seconds",
              "The unhealthy_after setting: the target unreachable this long is down to health; the alert"
              " rules hold the oldest pending message to it too", registry=registry).set(cfg.unhealthy_after)
        Gauge("outbox_relay_relay_stuck_after_seconds", "Heartbeat age past which health calls the relay stuck",
              registry=registry).set(health.stuck_after(cfg))

    def observe_spool(self, report):
        """SpoolIngester observer (on the ingester's thread, after every pass that moved items)."""
        for (source, outcome), n in report.by_source.items():
            self.spooled.labels(source if source in SOURCE_LABELS else "unknown", outcome).inc(n)

    def count(self, source, outcome):
        self.received.labels(source if source in SOURCE_LABELS else "unknown", outcome).inc()

    def count_event(self, kind, outcome):
        self.events.labels(kind, outcome).inc()

    def count_ignored(self, event_type):
        event_type = event_type if isinstance(event_type, str) and _EVENT_TYPE.match(event_type) else "other"
        with self._event_types_lock:
            if event_type not in self._event_types:
                if len(self._event_types) >= MAX_EVENT_TYPES:
                    event_type = "other"
                self._event_types.add(event_type)
        self.ignored.labels(event_type).inc()

    def observe_step(self, result, seconds):
        """Relay observer (called on the relay thread after every batch that claimed rows)."""
        if result.error is not None:
            self.errors.inc()
            return
        self.batches.inc()
        self.rows.labels("delivered").inc(result.delivered)
        self.rows.labels("dead").inc(result.dead)
        self.inserted.inc(result.new)
        self.batch_seconds.observe(seconds)

    def render(self):
        return generate_latest(self.registry)


class _OutboxCollector(Collector):
    """Gauges computed when scraped: outbox rows by state, the oldest pending row's age, the relay
    heartbeat, and the target pool's connections when the relay runs in this process."""

    def __init__(self, outbox, relay, cfg=None):
        self.outbox = outbox
        self.relay = relay
        self.cfg = cfg

    def collect(self):
        readable = GaugeMetricFamily("outbox_relay_outbox_readable",
                                     "1 if the outbox could be read at this scrape")
        try:
            counts = self.outbox.counts()
            beat = self.relay.heartbeat() if self.relay is not None else Heartbeat.read(self.outbox)
            view = health.RelayView(running=self.relay is not None or health.relay_running(self.outbox.path),
                                    heartbeat=beat)
            age = health.oldest_pending_age(self.outbox, view, time.time())
        except OutboxError as e:
            log.warning("metrics: cannot read the outbox: %s", e)
            readable.add_metric([], 0)
            yield readable
            yield from self._target()
            return
        readable.add_metric([], 1)
        yield readable
        rows = GaugeMetricFamily("outbox_relay_outbox_rows", "Rows in the local outbox, by state",
                                 labels=["state"])
        for state, n in counts.items():
            rows.add_metric([state], n)
        yield rows
        sizes = GaugeMetricFamily("outbox_relay_outbox_bytes", "Size of the outbox file and its WAL",
                                  labels=["file"])
        disk = self.outbox.sizes()
        sizes.add_metric(["db"], disk["file"])
        sizes.add_metric(["wal"], disk["wal"])
        yield sizes
        if disk["free_bytes"] is not None:
            yield GaugeMetricFamily("outbox_relay_outbox_disk_free_bytes",
                                    "Free space on the file system that holds the outbox", value=disk["free_bytes"])
        yield GaugeMetricFamily("outbox_relay_outbox_oldest_pending_age_seconds",
                                "Age of the oldest undelivered (pending or parked) row; 0 when none",
                                value=age or 0.0)
        yield from self._heartbeat(beat)
        yield from self._reconcile()
        yield from self._target()

    def _reconcile(self):
        # From the state the reconciler keeps in the outbox, like the rest: it survives restarts, so
        # these counters only grow (Prometheus's increase() sees a gap whichever process served it).
        rc = reconcile_state.summary(self.cfg, self.outbox) if self.cfg is not None else None
        if rc is None or not rc["enabled"]:
            return
        gaps = CounterMetricFamily("outbox_relay_reconcile_gaps",
                                   "Messages and events reconciliation found missing and filled, by the way in"
                                   " that should have brought them", labels=["source"])
        for source in sorted({"webhook", *rc["gaps_total"]}):
            gaps.add_metric([source], rc["gaps_total"].get(source, 0))
        yield gaps
        yield CounterMetricFamily("outbox_relay_reconcile_calls", "Open API requests reconciliation made",
                                  value=rc["calls_total"])
        yield GaugeMetricFamily("outbox_relay_reconcile_budget_calls_per_hour",
                                "The feishu_reconcile_budget setting", value=rc["budget_per_hour"])
        yield GaugeMetricFamily("outbox_relay_reconcile_uncovered_chats",
                                "Active chats the last pass could not read for the budget", value=len(rc["uncovered"]))
        if rc["complete_up_to"] is not None:
            yield GaugeMetricFamily("outbox_relay_reconcile_checked_until_seconds",
                                    "Every active chat is checked against Feishu's history below this instant"
                                    " (epoch seconds)", value=rc["complete_up_to"])

    def _heartbeat(self, beat):
        if beat is None:
            return
        now = time.time()
        yield GaugeMetricFamily("outbox_relay_relay_heartbeat_age_seconds",
                                "Seconds since a relay last wrote its heartbeat to this outbox",
                                value=beat.age(now))
        yield GaugeMetricFamily("outbox_relay_target_unavailable_seconds",
                                "How long the target has been unreachable (0 when it is reachable)",
                                value=beat.outage(now) or 0.0)
        if beat.last_success is not None:
            yield GaugeMetricFamily("outbox_relay_relay_last_success_timestamp_seconds",
                                    "When the relay last wrote a batch to the target (epoch seconds)",
                                    value=beat.last_success)

    def _target(self):
        stats = self.relay.target.pool_stats() if self.relay is not None else None
        if stats is None:
            return
        conns = GaugeMetricFamily("outbox_relay_target_connections",
                                  "Target connections the relay holds, by state", labels=["state"])
        conns.add_metric(["in_use"], stats[0])
        conns.add_metric(["idle"], stats[1])
        yield conns
        yield GaugeMetricFamily("outbox_relay_target_pool_size",
                                "Most target connections the relay may hold",
                                value=self.relay.target.pool_size)
