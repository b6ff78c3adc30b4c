"""Issue 24, item 9: a wall clock stepped back does not hide an outage. The service and the command
line run under libfaketime (Debian's `faketime`), whose wall clock the test steps back a day while
the monotonic clock goes on: /healthz, `health`, /metrics and the alert rules' inputs must still see
how long the target has been gone and how long the oldest message has waited."""

import glob
import os
import subprocess
import time

import pytest

from outbox_relay.outbox import Outbox

from cliutil import EXE, clean_env
from factories import flat
from serverproc import wait_until
from serviceutil import health, metric, scrape, service_process
from skiputil import unavailable

LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), "libfaketime.so.1")
DAY = 86_400


@pytest.fixture
def faked_clock(tmp_path):
    """(environment, step): a process started with the environment reads its wall clock through
    libfaketime from a file the test writes; step("-1d") moves it. The monotonic clock is real."""
    if not os.path.exists(LIBFAKETIME):
        unavailable("libfaketime is not installed (Debian package faketime; `make system-deps`)")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return env, lambda value: offset.write_text(value + "\n")


def test_a_clock_stepped_back_a_day_does_not_hide_an_outage(tmp_path, private_pg, faked_clock):
    env, step = faked_clock
    private_pg.execute("CREATE DATABASE relay")
    url = private_pg.url("relay")
    with service_process(tmp_path, extra_env=env, target=url, unhealthy_after=3, connect_timeout=2) as svc:
        wait_until(lambda: health(svc.url).status == 200, timeout=20, what="healthy with the target up")
        private_pg.stop(mode="immediate")
        with Outbox(svc.outbox) as outbox:                       # committed on the real clock
            outbox.put(flat(1))
        wait_until(lambda: "has not reached the target" in " ".join(health(svc.url).json()["reasons"]),
                   timeout=30, what="the relay to notice the outage")
        step("-1d")                                              # the service's wall clock goes back a day
        started = time.monotonic()
        h = wait_until(lambda: (lambda r: r if r.status == 503 else None)(health(svc.url)), timeout=30,
                       what="/healthz to say down once the outage passes unhealthy_after")
        assert any("has not reached the target for" in r for r in h.json()["reasons"]), h.json()
        assert h.json()["checks"]["relay"]["target_unavailable_for"] > 3
        samples = scrape(svc.url)
        # What OutboxRelayTargetUnreachable and OutboxRelayOldestPendingTooOld compare with 3 s:
        assert metric(samples, "outbox_relay_target_unavailable_seconds") > 3
        assert metric(samples, "outbox_relay_outbox_oldest_pending_age_seconds") >= time.monotonic() - started

        # `outbox-relay health` in a process whose own clock is a day behind the relay's heartbeat.
        result = subprocess.run([EXE, "health", "--outbox", svc.outbox, "--target", url, "--connect-timeout", "1",
                                 "--unhealthy-after", "3"], env={**clean_env(), **env}, capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2, result
        line = result.stdout.strip()
        assert line.startswith("DOWN: ") and "has not reached the target for 0 s" not in line, line
        private_pg.start()
        wait_until(lambda: health(svc.url).status == 200, timeout=40, what="healthy again once the target is back")
