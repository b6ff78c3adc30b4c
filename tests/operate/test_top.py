"""`outbox-relay top`: on a real terminal (tmux) against a running service under load, and its two
sources (the outbox, a service's /metrics) and its plain lines, step by step."""

import json
import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from loadutil import Load, hook_event
from outbox_relay.config import Config
from outbox_relay.operate import top, topdata
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Heartbeat, RelayLock

from cliutil import EXE, run_cli
from factories import flat_message
from relayutil import wait_until
from serverproc import free_port
from serviceutil import health, metric, post, received, running_service, scrape, service_process
from skiputil import unavailable

# -- on a real terminal ---------------------------------------------------------------------------


class TmuxPane:
    """One tmux session on a server of the test's own (its own socket), running `argv` in a shell
    that records the terminal settings before and after it and its exit status."""

    def __init__(self, tmp_path, argv, width=110, height=40):
        self.binary = shutil.which("tmux")
        if self.binary is None:
            unavailable("tmux is not installed (apt-get install tmux)")
        self.socket = f"outbox-relay-test-{uuid.uuid4().hex[:12]}"
        self.status = tmp_path / "pane.status"
        self.stty = (tmp_path / "stty.before", tmp_path / "stty.after")
        script = (f"stty -g > {self.stty[0]}; {' '.join(map(_sh, argv))} 2> {tmp_path / 'pane.stderr'};"
                  f" echo $? > {self.status}.tmp; stty -g > {self.stty[1]}; mv {self.status}.tmp {self.status}")
        started = self._tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), script)
        assert started.returncode == 0, f"tmux new-session failed: {started.stderr}"

    def _tmux(self, *args):
        return subprocess.run([self.binary, "-u", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=20)

    def screen(self):
        done = self._tmux("capture-pane", "-p", "-t", "top")
        return done.stdout if done.returncode == 0 else ""

    def send(self, keys):
        self._tmux("send-keys", "-t", "top", keys)

    def exit_status(self):
        return int(self.status.read_text()) if self.status.exists() else None

    def close(self):
        self._tmux("kill-server")  # our own server only: its socket is ours


def _sh(arg):
    return "'" + str(arg).replace("'", "'\\''") + "'"


def shown(screen):
    """What the screen says: {"in": n, "delivered": n, (via, source): n, "frame": the clock}."""
    out = {}
    clock = re.search(r"outbox-relay top .*?(\d\d:\d\d:\d\d)", screen)
    out["frame"] = clock.group(1) if clock else None
    relay = re.search(r"^relay\s+(running|backing off|stuck|stopped)", screen, re.M)
    out["relay"] = relay.group(1) if relay else None
    for key in ("in", "delivered"):
        m = re.search(rf"^{key}\s+([\d,.]+)/s", screen, re.M)
        if m:
            out[key] = float(m.group(1).replace(",", ""))
    for via, source, rate in re.findall(r"^\s*(webhook|spool|any)\s+(\S+)\s+([\d,.]+)\s", screen, re.M):
        out[via, source] = float(rate.replace(",", ""))
    return out


def _collapsed(text):
    return " ".join(text.split())


def _frames(pane, n):
    """The next `n` distinct frames (the view redraws every second with its clock)."""
    frames, seen = [], set()

    def more():
        s = shown(pane.screen())
        if s["frame"] and s["frame"] not in seen and "in" in s:
            seen.add(s["frame"])
            frames.append(s)
        return len(frames) >= n
    wait_until(more, timeout=n * 3 + 5, interval=0.1, what=f"{n} frames of top")
    return frames


def _close_to(value, reference, tolerance=0.10):
    return reference > 0 and abs(value - reference) <= tolerance * reference


@pytest.mark.slow
def test_top_under_tmux_rates_match_metrics_then_backing_off_then_recovery_and_q_exits_0(tmp_path, private_pg):
    spool = tmp_path / "spool"
    with service_process(tmp_path, target=private_pg.url(), spool=spool) as svc, \
            Load(svc.url, rate=40, spool=spool, spool_rate=5) as load:
        pane = TmuxPane(tmp_path, [EXE, "top", "--url", svc.url, "--outbox", svc.outbox, "--spool", spool])
        try:
            wait_until(lambda: shown(pane.screen()).get("in", 0) > 0, timeout=20, what="top to show messages in")
            # Rates: the screen against /metrics over the same seconds.
            before, t0 = scrape(svc.url), time.monotonic()
            frames = _frames(pane, 3)
            after, t1 = scrape(svc.url), time.monotonic()

            def per_s(name, **labels):
                return (metric(after, name, **labels) - metric(before, name, **labels)) / (t1 - t0)
            webhook = per_s("outbox_relay_messages_received_total", source="api", outcome="stored")
            spooled = per_s("outbox_relay_spool_ingested_total", source="openclaw", outcome="stored")
            delivered = per_s("outbox_relay_relay_rows_total", outcome="delivered")
            assert 35 <= webhook <= 45 and 3 <= spooled <= 7, (webhook, spooled)
            for f in frames:
                assert _close_to(f["webhook", "api"], webhook), (f, webhook)
                assert _close_to(f["in"], webhook + spooled), (f, webhook + spooled)
                assert _close_to(f["delivered"], delivered), (f, delivered)
                assert f["spool", "openclaw"] > 0 and f["relay"] == "running", f

            # The database goes away: the relay backs off, and the screen says why.
            private_pg.stop(mode="immediate")

            def backing_off_with_the_error():
                screen = _collapsed(pane.screen())
                error = health(svc.url).json()["checks"]["relay"]["last_error"] or "?"
                return "relay backing off" in screen and _collapsed(error)[:60] in screen
            wait_until(backing_off_with_the_error, timeout=30, interval=0.25, what="top to show the backing off")

            # It comes back: the relay runs again and drains what waited.
            private_pg.start()

            def recovered():
                screen = pane.screen()
                m = re.search(r"pending ([\d,]+)", screen)
                now = shown(screen)
                return (now["relay"] == "running" and m and int(m.group(1).replace(",", "")) < 40
                        and now.get("delivered", 0) > 0)
            wait_until(recovered, timeout=40, interval=0.25, what="top to show the recovery")
            assert load.errors == []

            pane.send("q")
            wait_until(lambda: pane.exit_status() is not None, timeout=10, what="top to exit on q")
            assert pane.exit_status() == 0, (tmp_path / "pane.stderr").read_text()
            # cbreak mode undone: the terminal is as top found it.
            assert pane.stty[0].read_text() == pane.stty[1].read_text()
        finally:
            pane.close()


# -- the sources, step by step ----------------------------------------------------------------------


def _cfg(tmp_path, **settings):
    settings.setdefault("outbox", str(tmp_path / "outbox.db"))
    settings.setdefault("spool", str(tmp_path / "spool"))
    return Config(**settings)


def test_outbox_source_counts_what_came_in_by_source_and_the_heartbeat_delivered(tmp_path):
    cfg = _cfg(tmp_path)
    with Outbox(cfg.outbox) as writer, Outbox(cfg.outbox, readonly=True) as reader:
        writer.put(flat_message("om_before"))  # there before top looked: not counted as coming in
        source = topdata.OutboxSource(cfg, reader)
        with RelayLock(cfg.outbox):  # a relay "runs": it holds the lock and writes its heartbeat
            Heartbeat(pid=os.getpid(), started_at=1.0, beat_at=time.time(), delivered=100).write(writer)
            first = source.snapshot()
            writer.put_many([flat_message(f"om_{i}") for i in range(3)]
                            + [hook_event("om_hook_1"), hook_event("om_hook_2")])
            writer.put(flat_message("om_0"))  # a duplicate: not a new message
            Heartbeat(pid=os.getpid(), started_at=1.0, beat_at=time.time(), delivered=150).write(writer)
            second = source.snapshot()
        v = top.view(first, second, source=source.name, interval=1.0)
    dt = second.at - first.at
    assert {(i["via"], i["source"]): i["total"] for i in v["intake"]} == {("any", "api"): 3, ("any", "openclaw"): 2}
    assert v["in_per_s"] == pytest.approx(5 / dt)
    assert v["delivered_per_s"] == pytest.approx(50 / dt)
    assert v["outbox"]["pending"] == 6 and v["relay"] == {"state": "running", "detail": None}
    assert v["files"]["db"] > 0 and v["service"] is None


def test_outbox_source_counts_on_in_a_new_file_whose_ids_start_lower(tmp_path):
    cfg = _cfg(tmp_path)
    with Outbox(cfg.outbox) as old, Outbox(tmp_path / "recovered.db") as new:
        old.put_many([flat_message(f"om_{i}") for i in range(5)])
        source = topdata.OutboxSource(cfg, old)
        source.snapshot()  # the baseline: id 5
        source.outbox = new  # what the path holds after `recover` rebuilt it
        source.snapshot()
        new.put_many([flat_message("om_x"), flat_message("om_y")])  # ids 1 and 2
        assert source.snapshot().intake == {("any", "api"): 2}


def test_outbox_source_relay_backing_off_and_stopped(tmp_path):
    cfg = _cfg(tmp_path)
    with Outbox(cfg.outbox) as writer, Outbox(cfg.outbox, readonly=True) as reader:
        source = topdata.OutboxSource(cfg, reader)
        now = time.time()
        Heartbeat(pid=os.getpid(), started_at=now - 60, beat_at=now, unavailable_since=now - 42,
                  last_error="connection refused (SQLSTATE 08001)").write(writer)
        with RelayLock(cfg.outbox):
            state, detail = source.snapshot().relay
        assert state == "backing off" and "42" in detail and "connection refused (SQLSTATE 08001)" in detail
        # The lock released: no relay runs, whatever the last heartbeat said.
        assert source.snapshot().relay[0] == "stopped"


def test_metrics_source_rates_are_the_counters_over_the_interval(tmp_path):
    with running_service(tmp_path) as s:
        wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy")
        source = topdata.MetricsSource(s.url)
        first = source.snapshot()
        for i in range(5):
            assert post(s.url, flat_message(f"om_rate_{i}")).status == 200
        wait_until(lambda: metric(scrape(s.url), "outbox_relay_relay_rows_total", outcome="delivered") == 5,
                   timeout=10, what="delivered")
        second = source.snapshot()
        v = top.view(first, second, source=source.name, interval=1.0)
    dt = second.at - first.at
    assert v["service"] == "up" and v["health"]["level"] == "ok" and v["relay"]["state"] == "running"
    assert [(i["via"], i["source"], i["total"]) for i in v["intake"]] == [("webhook", "api", 5)]
    assert v["in_per_s"] == pytest.approx(5 / dt) and v["delivered_per_s"] == pytest.approx(5 / dt)
    assert v["round_trip_ms"] > 0 and v["outbox"]["delivered"] == 5


def test_with_url_a_service_that_is_down_is_said_and_the_outbox_shown(tmp_path, hermetic):
    with Outbox(tmp_path / "outbox.db") as outbox:
        outbox.put_many([flat_message(f"om_{i}") for i in range(4)])
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_cli("top", "--once", "--interval", "0.2", "--url", closed, "--outbox", tmp_path / "outbox.db")
    assert result.exit_code == 0, result.output
    out = result.stdout.strip()
    assert len(out.splitlines()) == 1
    assert f'service="down: {closed} does not answer (connection refused)"' in out
    assert "pending=4" in out and "relay=stopped" in out and "health=down" in out


def test_once_json_line_and_the_plain_line_on_a_pipe(tmp_path, hermetic):
    with Outbox(tmp_path / "outbox.db") as outbox:
        outbox.put(flat_message("om_1"))
    result = run_cli("top", "--once", "--json", "--interval", "0.2", "--outbox", tmp_path / "outbox.db")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    assert v["outbox"]["pending"] == 1 and v["relay"]["state"] == "stopped" and v["in_per_s"] == 0.0
    assert v["source"] == str(tmp_path / "outbox.db")


def test_top_on_a_missing_outbox_is_one_line_and_creates_nothing(tmp_path, hermetic):
    result = run_cli("top", "--once", "--outbox", tmp_path / "nope.db")
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "nope.db").exists()
    result = run_cli("top", "--url", "ftp://example", "--outbox", tmp_path / "nope.db")
    assert result.exit_code == 2 and "http://127.0.0.1:8080" in result.output


def test_the_plain_line_quotes_values_with_spaces_and_masks_a_password():
    assert top._quoted("backing off") == '"backing off"' and top._quoted("running") == "running"
    assert topdata.mask_url("http://ops:s3cret@host:8080") == "http://ops:***@host:8080"
    assert "s3cret" not in topdata.MetricsSource("http://ops:s3cret@127.0.0.1:1").name


def test_a_duplicate_is_not_a_message_in(tmp_path):
    # top's intake from /metrics is outcome="stored" only: a duplicate is not a message in.
    with running_service(tmp_path) as s:
        post(s.url, flat_message("om_dup"))
        post(s.url, flat_message("om_dup"))
        samples = scrape(s.url)
        assert received(samples, "api", "stored") == 1 and received(samples, "api", "duplicate") == 1
        snap = topdata.from_metrics(samples, health(s.url).json())
        assert snap.intake[("webhook", "api")] == 1
