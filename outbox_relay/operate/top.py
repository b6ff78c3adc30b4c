"""`outbox-relay top`: a live view of a running service, refreshed every second until `q` or Ctrl-C.

topdata.py gathers (from the outbox, or a service's /metrics and /healthz); this module shows:
`view(prev, cur)` turns two snapshots one interval apart into rates and plain data (also the --json
line); on a terminal rich draws it (Live, on the alternate screen) while single keys are read in
cbreak mode; anywhere else it is one plain line per interval.
"""

import json
import os
import select
import signal
import sys
import threading
import time

from .human import bytes_text, clock, duration, spool_count

QUIT_KEYS = ("q", "Q")
MAX_CHATS_SHOWN = 10  # the busiest; `status` lists every chat

COLORS = {"running": "green", "backing off": "yellow", "stuck": "red", "stopped": "red",
          "ok": "green", "degraded": "yellow", "down": "red", "up": "green"}


# -- two snapshots -> what is shown ---------------------------------------------------------------


def view(prev, cur, *, source, interval):
    """Plain data (also the --json line): the state now and the rates since `prev`."""
    if prev is not None and (prev.epoch != cur.epoch or cur.at <= prev.at):
        prev = None  # another process's counters (a restart): no rates for this one frame
    intake = [{"via": via, "source": src, "per_s": _rate(prev, cur, lambda s, k=(via, src): s.intake.get(k)),
               "total": int(total)} for (via, src), total in sorted(cur.intake.items()) if total]
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source, "interval_s": interval,
        "service": cur.service, "problem": cur.problem,
        "health": {"level": cur.health[0], "reasons": cur.health[1]} if cur.health else None,
        "relay": {"state": cur.relay[0], "detail": cur.relay[1]},
        "in_per_s": None if prev is None else sum(i["per_s"] or 0.0 for i in intake),
        "intake": intake,
        "delivered_per_s": _rate(prev, cur, lambda s: s.delivered),
        "failed_batches_per_s": _rate(prev, cur, lambda s: s.errors),
        "outbox": cur.counts, "oldest_pending_age_s": cur.oldest_pending_age,
        "round_trip_ms": _round_trip(prev.batches if prev else None, cur.batches),
        "connections": dict(zip(("in_use", "idle", "pool_size"), cur.connections)) if cur.connections else None,
        "files": cur.files,
        "spool": {k: cur.spool[k] for k in ("waiting", "rejected", "error", "at_least")} if cur.spool else None,
        "reconcile": cur.reconcile,
    }


def _rate(prev, cur, counter):
    """Per second between two snapshots of one epoch; a counter new since `prev` started at 0."""
    now = counter(cur)
    if prev is None or now is None:
        return None
    before = counter(prev) or 0.0
    return (now - before) / (cur.at - prev.at) if now >= before else None


def _round_trip(before, now):
    """Mean time of the relay's batches since the last look (claim, target commit, local mark: the
    target's round trip is most of it), in ms; None when no batch ran."""
    if before is None or now is None or None in before + now or now[1] <= before[1]:
        return None
    return (now[0] - before[0]) / (now[1] - before[1]) * 1000


# -- drawing ------------------------------------------------------------------------------------


def _num(value, unit=""):
    return "-" if value is None else f"{value:,.1f}{unit}"


def _service(v):
    return v["service"] and (v["service"], COLORS.get(v["service"].split(":")[0], "red"))


def _problem(v):
    return v["problem"] and (v["problem"], "red")


def _health(v):
    h = v["health"]
    if h is None:
        return None
    return h["level"].upper() + (": " + "; ".join(h["reasons"]) if h["reasons"] else ""), COLORS.get(h["level"], "")


def _relay(v):
    state, detail = v["relay"]["state"], v["relay"]["detail"]
    return state + (f": {detail}" if detail else ""), COLORS.get(state, "")


def _in(v):
    return _num(v["in_per_s"], "/s") + " new messages", ""


def _delivered(v):
    failed = v["failed_batches_per_s"]
    return _num(v["delivered_per_s"], "/s") + (f" · {failed:,.1f} failed batches/s" if failed else ""), ""


def _backlog(v):
    c = v["outbox"]
    return c and (f"pending {c['pending']:,} · parked {c['parked']:,} · dead {c['dead']:,} · "
                  f"oldest pending {duration(v['oldest_pending_age_s'])}", "red" if c["dead"] else "")


def _target(v):
    conns = v["connections"]
    text = f"round trip {_num(v['round_trip_ms'], ' ms')}"
    if conns:
        text += " · connections {in_use:.0f} in use, {idle:.0f} idle (pool {pool_size:.0f})".format(**conns)
    return text, ""


def _files(v):
    f = v["files"]
    return f and (f"file {bytes_text(f['db'])} · WAL {bytes_text(f['wal'])} · {bytes_text(f['free'])} free", "")


def _spool(v):
    s = v["spool"]
    return s and ((s["error"], "red") if s["error"] else
                  (f"{spool_count(s, 'waiting')} waiting · {spool_count(s, 'rejected')} set aside", ""))


def _reconcile(v):
    """Reconciliation in total: off and why, or complete up to when, the gaps, the calls."""
    rc = v.get("reconcile")
    if rc is None:
        return None
    if not rc["enabled"]:
        return rc["off"], "dim"
    uncovered = rc["uncovered"] if isinstance(rc["uncovered"], int) else len(rc["uncovered"])
    gaps = (f"{rc['gaps_24h']} gaps in 24 h" if rc["gaps_24h"] is not None
            else f"{sum(rc['gaps_total'].values()):.0f} gaps since the start")
    calls = (f"{rc['calls_last_hour']}/{rc['budget_per_hour']} calls this hour" if rc["calls_last_hour"] is not None
             else f"{rc['calls_total']:.0f} calls")
    text = (f"complete up to {clock(rc['complete_up_to'])} ({duration(rc['behind_s'])} ago) · {gaps} · {calls}"
            + (f" · {uncovered} chat(s) NOT COVERED (budget)" if uncovered else ""))
    return text, "yellow" if uncovered or rc["gaps_24h"] else ""


# The screen's lines, top to bottom: label, and what makes (text, style) of the view (None: no line).
LINES = (("service", _service), ("problem", _problem), ("health", _health), ("relay", _relay), ("in", _in),
         ("delivered", _delivered), ("backlog", _backlog), ("target", _target), ("outbox", _files),
         ("spool", _spool), ("reconcile", _reconcile))


def rows(v):
    """(label, text, style) of each line the view has."""
    return [(label, *made) for label, make in LINES if (made := make(v))]


def render(v):
    """The screen: a header, the state as label/value lines, then messages in by way in and source."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    # One line whatever the width: the source (a path or URL, the longest part) is cut last.
    head = Text.assemble(("outbox-relay top", "bold"), (" (q quits)", "dim"), f"  {v['at'].replace('T', ' ')}"
                         f"  every {v['interval_s']:g} s  {v['source']}", no_wrap=True, overflow="ellipsis")
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
    parts = [head, Text(""), grid, Text(""), intake]
    chats = (v.get("reconcile") or {}).get("chats") or []
    if chats:
        per_chat = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
        for column in ("chat", "complete up to", "gaps 24 h", "covered"):
            per_chat.add_column(column)
        for c in chats[:MAX_CHATS_SHOWN]:
            per_chat.add_row(c["name"] or c["chat_id"], clock(c["complete_up_to"]), str(c["gaps_24h"]),
                             Text("yes") if c["covered"] else Text("NO (budget)", style="yellow"))
        parts += [Text(""), per_chat]
    return Group(*parts)


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
        fields += [("db", bytes_text(v["files"]["db"])), ("wal", bytes_text(v["files"]["wal"]))]
    if v["spool"]:
        s = v["spool"]
        fields += [("spool_waiting", s["waiting"] if s["waiting"] is None or "waiting" not in s["at_least"]
                    else f">={s['waiting']}"), ("spool_error", s["error"])]
    rc = v.get("reconcile")
    if rc and rc["enabled"]:
        fields += [("reconcile_behind", None if rc["behind_s"] is None else f"{rc['behind_s']:.0f}s"),
                   ("reconcile_gaps_24h", rc["gaps_24h"])]
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
