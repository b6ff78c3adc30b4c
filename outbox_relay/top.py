"""`outbox-relay top`: a live view of a running service, refreshed every second until `q` or Ctrl-C.

Two sources of data behind one small interface (`snapshot()` -> Snapshot):

  OutboxSource   the outbox itself, opened read-only: counts, oldest pending age, file sizes, the
                 heartbeat the relay writes there, the spool. Intake is counted from the rows
                 committed since the last look (by message source, whatever way they came in),
                 delivery from the heartbeat's `delivered` counter.
  MetricsSource  a service's /metrics (prometheus_client's own parser) and /healthz: everything,
                 intake by source and by way in (webhook, spool) included. When the service does
                 not answer it says so and shows what the local outbox holds.

Rates come from two snapshots one interval apart: `view(prev, cur)` turns them into plain data,
which is also the --json line. On a terminal rich draws it (Live, on the alternate screen) and a
key press is read in cbreak mode; anywhere else it is one plain line per interval.
"""

import base64
import collections
import dataclasses
import http.client
import json
import os
import select
import signal
import sys
import threading
import time
import urllib.parse

from . import health
from .errors import OutboxError
from .handoff import Spool, spool_warnings
from .ops import _age, _bytes

TIMEOUT = 2.0  # seconds for each request to the service: a hung service must not freeze the view
QUIT_KEYS = ("q", "Q")
COLORS = {"running": "green", "backing off": "yellow", "stuck": "red", "stopped": "red",
          "ok": "green", "degraded": "yellow", "down": "red", "up": "green"}


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


def relay_state(running, problem, outage, last_error, outbox_problem=None):
    """(state, detail): running, backing off (and why), stuck, or stopped."""
    if not running:
        return "stopped", problem or "no relay is running for this outbox: start `outbox-relay run`"
    if problem:
        return "stuck", problem
    if outage is not None:
        return "backing off", f"{_age(outage)} without the target: {last_error or 'unknown error'}"
    if outbox_problem:
        return "backing off", f"the outbox: {outbox_problem}"
    return "running", None


# -- the outbox --------------------------------------------------------------------------------


class OutboxSource:
    """The outbox file on this machine (a read-only Outbox), judged as `status` judges it."""

    def __init__(self, cfg, outbox):
        self.cfg = cfg
        self.outbox = outbox
        self.name = os.path.abspath(outbox.path)
        self.spool = Spool(cfg.spool)
        self._last_id = None
        self._intake = collections.Counter()

    def snapshot(self):
        now = time.time()
        snap = Snapshot(at=time.monotonic(), spool=self.spool_status(now))
        try:
            view = health.outbox_view(self.outbox, self.cfg, now)
            facts = health.outbox_facts(self.outbox, health.Facts(relay=view))
            self._count_arrivals(snap)
            sizes = self.outbox.sizes()
        except OutboxError as e:
            snap.problem = str(e)
            return snap
        beat = view.heartbeat
        snap.counts, snap.oldest_pending_age = facts.counts, facts.oldest_pending_age
        snap.problem = facts.outbox_problem
        snap.files = {"db": sizes["file"], "wal": sizes["wal"], "free": sizes["free_bytes"]}
        snap.relay = relay_state(view.running, view.problem, beat.outage(now) if beat else None,
                                 beat.last_error if beat else None, beat.outbox_problem if beat else None)
        snap.epoch = ("outbox", beat.started_at if beat else None)
        snap.delivered = beat.delivered if beat is not None and view.running else None
        if snap.spool is not None:
            facts.warnings.extend(spool_warnings(snap.spool, view.running))
        verdict = health.judge(facts, self.cfg, expect_relay=False, now=now)
        snap.health = (verdict.level, verdict.reasons)
        return snap

    def _count_arrivals(self, snap):
        # Rows that came and were pruned between two looks are not seen: only delivered rows past
        # the newest keep_delivered are pruned, so that takes keep_delivered messages a second.
        arrived, self._last_id = self.outbox.arrivals(self._last_id)
        for source, n in arrived.items():
            self._intake["any", source] += n
        snap.intake = dict(self._intake)

    def spool_status(self, now=None):
        return self.spool.status(now) if self.spool.exists() else None


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
            snap = self.fallback.snapshot() if self.fallback is not None else Snapshot(at=time.monotonic())
            snap.service = f"down: {self.name} does not answer ({_why(e)})"
            if self.fallback is None:
                snap.problem = "and no outbox here to read (give --outbox where the service's outbox is)"
            return snap
        if self.fallback is not None:
            snap.spool = self.fallback.spool_status()
        return snap

    def _get(self, path, statuses):
        parts = urllib.parse.urlsplit(self.base)
        # Like Prometheus's own scraper: no proxy from the environment between us and the service.
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname, parts.port, timeout=self.timeout)
        headers = {}
        if parts.username is not None:
            userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        try:
            conn.request("GET", parts.path + path, headers=headers)
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if resp.status not in statuses:
            raise ValueError(f"GET {path}: HTTP {resp.status}")
        return body


def _why(error):
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


def mask_url(url):
    """The URL without a password: it is shown on the screen."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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
    snap.epoch = ("metrics", min(created.values()) if created else None)
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
    snap.delivered = _value(samples, "outbox_relay_relay_rows_total", outcome="delivered")
    snap.errors = _value(samples, "outbox_relay_relay_errors_total")
    seconds = _value(samples, "outbox_relay_relay_batch_seconds_sum")
    if seconds is not None:
        snap.batches = (seconds, _value(samples, "outbox_relay_relay_batch_seconds_count"))
    conns = _by_label(samples, "outbox_relay_target_connections", "state")
    if conns:
        snap.connections = (conns.get("in_use"), conns.get("idle"), _value(samples, "outbox_relay_target_pool_size"))
    relay = healthz["checks"]["relay"]
    snap.relay = relay_state(relay["running"], relay["problem"], relay["target_unavailable_for"], relay["last_error"])
    snap.health = (healthz["status"], healthz["reasons"])
    return snap


# -- two snapshots -> what is shown ---------------------------------------------------------------


def view(prev, cur, *, source, interval):
    """Plain data (also the --json line): the state now and the rates since `prev`."""
    same = prev is not None and prev.epoch == cur.epoch and cur.at > prev.at
    dt = cur.at - prev.at if same else None

    def rate(before, now):
        if dt is None or now is None or (before is not None and now < before):
            return None
        return (now - (before or 0.0)) / dt

    intake = [{"via": via, "source": src, "per_s": rate(prev.intake.get((via, src)) if same else None, total),
               "total": int(total)} for (via, src), total in sorted(cur.intake.items()) if total]
    rates = [i["per_s"] for i in intake if i["per_s"] is not None]
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source, "interval_s": interval,
        "service": cur.service, "problem": cur.problem,
        "health": {"level": cur.health[0], "reasons": cur.health[1]} if cur.health else None,
        "relay": {"state": cur.relay[0], "detail": cur.relay[1]},
        "in_per_s": sum(rates) if rates else (0.0 if dt is not None and cur.intake is not None else None),
        "intake": intake,
        "delivered_per_s": rate(prev.delivered if same else None, cur.delivered),
        "failed_batches_per_s": rate(prev.errors if same else None, cur.errors),
        "outbox": cur.counts, "oldest_pending_age_s": cur.oldest_pending_age,
        "round_trip_ms": _round_trip(prev.batches if same else None, cur.batches),
        "connections": dict(zip(("in_use", "idle", "pool_size"), cur.connections)) if cur.connections else None,
        "files": cur.files,
        "spool": {k: cur.spool[k] for k in ("waiting", "rejected", "error")} if cur.spool else None,
    }


def _round_trip(before, now):
    """Mean time of the relay's batches since the last look (claim, target commit, local mark: the
    target's round trip is most of it), in ms; None when no batch ran."""
    if before is None or now is None or now[1] is None or before[1] is None or now[1] <= before[1]:
        return None
    return (now[0] - before[0]) / (now[1] - before[1]) * 1000


# -- drawing ------------------------------------------------------------------------------------


def _num(value, unit=""):
    return "-" if value is None else f"{value:,.1f}{unit}"


def rows(v):
    """(label, text, style) lines of the view, shared by the screen and its tests."""
    out = []
    if v["service"] is not None:
        out.append(("service", v["service"], COLORS.get(v["service"].split(":")[0], "red")))
    if v["problem"]:
        out.append(("problem", v["problem"], "red"))
    if v["health"]:
        h = v["health"]
        out.append(("health", h["level"].upper() + (": " + "; ".join(h["reasons"]) if h["reasons"] else ""),
                    COLORS.get(h["level"], "")))
    relay = v["relay"]
    out.append(("relay", relay["state"] + (f": {relay['detail']}" if relay["detail"] else ""),
                COLORS.get(relay["state"], "")))
    out.append(("in", _num(v["in_per_s"], "/s") + " new messages", ""))
    failed = f" · {v['failed_batches_per_s']:,.1f} failed batches/s" if v["failed_batches_per_s"] else ""
    out.append(("delivered", _num(v["delivered_per_s"], "/s") + failed, ""))
    c = v["outbox"]
    if c is not None:
        out.append(("backlog", f"pending {c['pending']:,} · parked {c['parked']:,} · dead {c['dead']:,} · "
                               f"oldest pending {_age(v['oldest_pending_age_s'])}", "red" if c["dead"] else ""))
    conns = v["connections"]
    target = f"round trip {_num(v['round_trip_ms'], ' ms')}"
    if conns:
        target += " · connections {in_use:.0f} in use, {idle:.0f} idle (pool {pool_size:.0f})".format(**conns)
    out.append(("target", target, ""))
    f = v["files"]
    if f:
        out.append(("outbox", f"file {_bytes(f['db'])} · WAL {_bytes(f['wal'])} · {_bytes(f['free'])} free", ""))
    s = v["spool"]
    if s:
        out.append(("spool", s["error"] or f"{s['waiting']:,} waiting · {s['rejected']:,} set aside", ""))
    return out


def render(v):
    """The screen: a header, the state as label/value lines, then messages in by way in and source."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    head = Text.assemble(("outbox-relay top", "bold"), f"  {v['source']}  {v['at'].replace('T', ' ')}"
                         f"  every {v['interval_s']:g} s  ", ("q quits", "dim"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, text, style in rows(v):
        grid.add_row(label, Text(text, style=style))
    intake = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
    intake.add_column("via")
    intake.add_column("source")
    intake.add_column("in/s", justify="right")
    intake.add_column("total", justify="right")
    for i in v["intake"]:
        intake.add_row(i["via"], i["source"], _num(i["per_s"]), f"{i['total']:,}")
    if not v["intake"]:
        intake.add_row("-", "no messages yet", "", "")
    return Group(head, Text(""), grid, Text(""), intake)


def line(v):
    """One plain line (logfmt: key=value, quoted when it holds a space) for a pipe or a file."""
    fields = [("service", v["service"]), ("problem", v["problem"]),
              ("health", v["health"]["level"] if v["health"] else None),
              ("relay", v["relay"]["state"]), ("relay_detail", v["relay"]["detail"]),
              ("in", _per_s(v["in_per_s"])), ("delivered", _per_s(v["delivered_per_s"]))]
    if v["outbox"]:
        fields += [(k, v["outbox"][k]) for k in ("pending", "parked", "dead")]
        age = v["oldest_pending_age_s"]
        fields.append(("oldest_pending", None if age is None else f"{age:.1f}s"))
    fields.append(("round_trip", None if v["round_trip_ms"] is None else f"{v['round_trip_ms']:.1f}ms"))
    if v["connections"]:
        fields.append(("connections", "{in_use:.0f}+{idle:.0f}/{pool_size:.0f}".format(**v["connections"])))
    if v["files"]:
        fields += [("db", _bytes(v["files"]["db"])), ("wal", _bytes(v["files"]["wal"]))]
    if v["spool"]:
        fields.append(("spool_waiting", v["spool"]["waiting"]))
    fields += [(f"in.{i['via']}.{i['source']}", _per_s(i["per_s"])) for i in v["intake"]]
    return v["at"] + " " + " ".join(f"{k}={_quoted(val)}" for k, val in fields if val is not None)


def _json_line(v):
    return json.dumps(v, ensure_ascii=False)


def _per_s(value):
    return None if value is None else f"{value:.1f}/s"


def _quoted(value):
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or '"' in text or not text) else text


# -- the loops ----------------------------------------------------------------------------------


class KeyReader:
    """Single key presses from the terminal: cbreak mode (no echo, no line buffering; Ctrl-C still
    sends SIGINT), the terminal's own settings put back however the view ends."""

    def __init__(self, stream, stop):
        self.stop = stop
        self.fd = stream.fileno() if stream is not None and stream.isatty() else None
        self._saved = None

    def __enter__(self):
        if self.fd is not None:
            import termios
            import tty
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        return False

    def wait(self, timeout):
        """The keys pressed within `timeout` seconds ("" when none)."""
        if self.fd is None:
            self.stop.wait(timeout)
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        return os.read(self.fd, 64).decode("utf-8", "ignore") if ready else ""


def run(source, *, interval=1.0, once=False, as_json=False, out=None, keys=None):
    """The view until q, Ctrl-C or SIGTERM (or one frame with `once`). Returns the exit code, 0."""
    out = out or sys.stdout
    stop = threading.Event()
    previous = _on_sigterm(stop.set)
    try:
        if not as_json and out.isatty():
            _screen(source, interval, once, out, KeyReader(keys if keys is not None else sys.stdin, stop), stop)
        else:
            _lines(source, interval, once, out, stop, _json_line if as_json else line)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `top | head`: the reader has gone, which is an ending, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _on_sigterm(set_flag):
    """SIGTERM ends the view like q does (the handler only sets a flag, so the terminal is put
    back); returns the old handler, or None off the main thread, where none can be set."""
    try:
        return signal.signal(signal.SIGTERM, lambda signum, frame: set_flag())
    except ValueError:
        return None


def _lines(source, interval, once, out, stop, fmt):
    prev = source.snapshot()
    while not stop.wait(interval):
        cur = source.snapshot()
        out.write(fmt(view(prev, cur, source=source.name, interval=interval)) + "\n")
        out.flush()
        prev = cur
        if once:
            return


def _screen(source, interval, once, out, keys, stop):
    from rich.console import Console
    from rich.live import Live
    console = Console(file=out)
    prev = source.snapshot()
    if once:
        stop.wait(interval)
        console.print(render(view(prev, source.snapshot(), source=source.name, interval=interval)))
        return
    with keys, Live(render(view(None, prev, source=source.name, interval=interval)), console=console,
                    screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        due = time.monotonic() + interval
        while not stop.is_set():
            if any(k in QUIT_KEYS for k in keys.wait(due - time.monotonic())):
                return
            if time.monotonic() < due:
                continue
            cur = source.snapshot()
            live.update(render(view(prev, cur, source=source.name, interval=interval)), refresh=True)
            prev = cur
            due = max(due + interval, time.monotonic())
