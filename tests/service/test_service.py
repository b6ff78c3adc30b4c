"""The HTTP server as it runs: `outbox-relay run` in a subprocess, or the Service in this process on
a real local port. Shutdown, load, a locked outbox, and /healthz against real faults.

The helpers (HTTP client, the two ways to run the service) are in serviceutil.py.
"""

import http.client
import json
import signal
import socket
import subprocess
import threading
import time

from outbox_relay.intake.webhook import WEBHOOK_PATH
from outbox_relay.outbox import Outbox
from outbox_relay.sync import RelayLock

from cliutil import EXE
from factories import flat_message
from serverproc import free_port, wait_until
from serviceutil import health, metric, outbox_ids, post, received, running_service, scrape, service_process, write_lock


def port_refuses(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        return True


# -- the process: signals, load, a locked outbox ----------------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path):
    with service_process(tmp_path, busy_timeout=15, http_threads=8) as p:
        assert wait_until(lambda: health(p.url).status == 200, timeout=10, what="healthy")
        results = {}
        with write_lock(p.outbox) as lock:
            # Requests wait on the lock: they are in flight when the signal comes.
            threads = [threading.Thread(target=lambda i=i: results.__setitem__(
                i, post(p.url, flat_message(f"om_term_{i}"), timeout=30))) for i in range(4)]
            for t in threads:
                t.start()
            wait_until(lambda: metric(scrape(p.url), "outbox_relay_http_requests_in_flight") == 4,
                       timeout=10, what="4 requests in flight")
            p.proc.send_signal(signal.SIGTERM)
            # The listening socket closes at once: no new requests are taken...
            wait_until(lambda: port_refuses(p.port), timeout=10, what="the port to refuse connections")
            assert p.proc.poll() is None, "exited with requests still in flight"
            lock.execute("ROLLBACK")
        for t in threads:
            t.join(30)
        # ...while those in flight finish with their commit.
        assert sorted(results) == [0, 1, 2, 3]
        assert all(r.status == 200 and r.json()["ok"] for r in results.values()), results
        assert p.proc.wait(30) == 0, p.log()
        assert {f"om_term_{i}" for i in range(4)} <= set(outbox_ids(p.outbox))
        assert "stopped in" in p.log()


def test_a_second_signal_exits_at_once(tmp_path):
    with service_process(tmp_path, busy_timeout=15) as p:
        assert wait_until(lambda: health(p.url).status == 200, timeout=10, what="healthy")
        with write_lock(p.outbox):
            outcome = []

            def stuck():
                try:
                    outcome.append(post(p.url, flat_message("om_stuck"), timeout=30))
                except (http.client.HTTPException, OSError) as e:
                    outcome.append(e)

            t = threading.Thread(target=stuck)
            t.start()
            wait_until(lambda: metric(scrape(p.url), "outbox_relay_http_requests_in_flight") == 1,
                       timeout=10, what="a request in flight")
            p.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: port_refuses(p.port), timeout=10, what="draining")
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)  # the operator insists
            assert p.proc.wait(10) == 128 + signal.SIGTERM
            assert time.monotonic() - started < 5
        t.join(30)
        # The request got no 200 (the connection dropped), so its sender retries; nothing
        # half-written stays behind.
        assert len(outcome) == 1 and isinstance(outcome[0], (http.client.HTTPException, OSError))
        assert "om_stuck" not in outbox_ids(p.outbox)


def test_16_clients_x_500_posts_every_200_has_its_row(tmp_path):
    clients, per_client = 16, 500
    with service_process(tmp_path, http_threads=16, keep_delivered=100000) as p:
        statuses = [[] for _ in range(clients)]

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)  # keep-alive
            try:
                for i in range(per_client):
                    conn.request("POST", WEBHOOK_PATH, json.dumps(flat_message(f"om_load_{n}_{i}")),
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    answer = json.loads(r.read())
                    statuses[n].append((f"om_load_{n}_{i}", r.status, answer))
            finally:
                conn.close()

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
        results = [x for per in statuses for x in per]
        assert len(results) == clients * per_client
        assert not [r for r in results if r[1] >= 500], "5xx under load"
        ok = [mid for mid, status, answer in results if status == 200]
        assert all(answer == {"ok": True, "message_id": mid, "duplicate": False}
                   for mid, status, answer in results if status == 200)
        stored = outbox_ids(p.outbox)
        assert not [mid for mid in ok if mid not in stored], "a 200 without its row"
        assert len(ok) == clients * per_client
        samples = scrape(p.url)
        assert received(samples, "api", "stored") == len(ok)
        print(f"{len(ok)} POSTs from {clients} clients in {elapsed:.1f} s ({len(ok) / elapsed:.0f}/s)")
        # And the relay moves them all on (woken by the commits, not by polling).
        wait_until(lambda: set(outbox_ids(p.outbox).values()) == {"delivered"}, timeout=60,
                   what="every row delivered")
        assert p.stop() == 0


def test_outbox_locked_mid_run_gives_503_then_200_again(tmp_path):
    with service_process(tmp_path, busy_timeout=0.2) as p:
        results = []
        stop = threading.Event()

        def sender():
            i = 0
            while not stop.is_set():
                r = post(p.url, flat_message(f"om_lock_{i}"))
                results.append((f"om_lock_{i}", r))
                i += 1

        t = threading.Thread(target=sender)
        t.start()
        try:
            wait_until(lambda: len(results) >= 20, timeout=10, what="20 posts")
            with write_lock(p.outbox):
                held_from = len(results)
                wait_until(lambda: sum(r.status == 503 for _, r in results[held_from:]) >= 5,
                           timeout=15, what="503s while the outbox is locked")
                h = health(p.url)
                assert h.status == 503 and "not writable" in h.json()["reasons"][0], h
                released_at = len(results)
            wait_until(lambda: sum(r.status == 200 for _, r in results[released_at + 1:]) >= 20,
                       timeout=15, what="200s once the lock is released")
        finally:
            stop.set()
            t.join(10)
        assert {r.status for _, r in results} == {200, 503}, "only commits and retry-laters"
        stored = outbox_ids(p.outbox)
        for mid, r in results:
            if r.status == 200:
                assert mid in stored
            else:
                assert r.headers.get("retry-after") == "1", r.headers
                assert "locked" in r.json()["error"] and mid not in stored
        assert health(p.url).status == 200
        samples = scrape(p.url)
        assert received(samples, "api", "unavailable") == sum(r.status == 503 for _, r in results)
        assert p.stop() == 0


def test_serve_alone_judges_the_relay_by_its_heartbeat(tmp_path):
    with service_process(tmp_path, command="serve") as serve:
        assert serve.proc.poll() is None
        h = health(serve.url)
        assert h.status == 503 and "no relay is running" in h.json()["reasons"][0]
        assert post(serve.url, flat_message("om_serve_1")).status == 200  # storing does not need a relay
        # A separate relay on the same outbox (no HTTP) writes its heartbeat and drains.
        relay = subprocess.Popen([EXE, "run", "--no-http", "--outbox", serve.outbox,
                                  "--target", f"sqlite:///{tmp_path / 'archive.db'}"],
                                 cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            body = wait_until(lambda: health(serve.url).status == 200 and health(serve.url).json(),
                              timeout=15, what="healthy once a relay beats")
            assert body["checks"]["relay"]["in_process"] is False
            wait_until(lambda: outbox_ids(serve.outbox)["om_serve_1"] == "delivered", timeout=15,
                       what="delivered by the separate relay")
        finally:
            relay.send_signal(signal.SIGTERM)
            _, err = relay.communicate(timeout=20)
        assert relay.returncode == 0, err
        # A relay that holds the lock but whose heartbeat has gone stale, or that reports the target
        # down too long -> 503.
        box = Outbox(serve.outbox)
        try:
            stuck = RelayLock(serve.outbox).acquire()
            beat = box.get_meta("relay")
            box.set_meta("relay", dict(beat, beat_at=time.time() - 3600, beat_mono=time.monotonic() - 3600))
            assert "heartbeat is 3600 s old" in health(serve.url).json()["reasons"][0]
            box.set_meta("relay", dict(beat, beat_at=time.time(), beat_mono=time.monotonic(),
                                       unavailable_since=time.time() - 900, unavailable_mono=time.monotonic() - 900,
                                       last_error="connection refused"))
            h = health(serve.url)
            assert h.status == 503 and "has not reached the target for 900 s" in h.json()["reasons"][0]
            stuck.release()
        finally:
            box.close()
        assert serve.stop() == 0


# -- /healthz against the relay thread (in this process) -----------------------------------------------


def test_healthz_503_when_the_relay_thread_died(tmp_path):
    with running_service(tmp_path) as s:
        assert wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy")

        def crash():
            # What cannot be made real from outside: the relay thread dying of a BaseException.
            raise SystemExit("simulated relay crash")

        s.relay._step = lambda overlap: crash()  # what the relay loop calls for each batch
        s.relay.wake()
        wait_until(lambda: not s.service.relay_thread.alive(), timeout=10, what="the relay thread to die")
        h = health(s.url)
        assert h.status == 503
        assert h.json()["reasons"] == ["relay thread is not running: SystemExit: simulated relay crash"]
        assert h.json()["checks"]["relay"]["ok"] is False and h.json()["checks"]["outbox"]["ok"] is True
        # The webhook still commits: the outbox does not need the relay.
        assert post(s.url, flat_message("om_after_crash")).json()["ok"] is True
    # Recovery is a restart (systemd does it on the 503 / the log line): the row goes out then.
    with running_service(tmp_path) as s:
        assert wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy after restart")
        wait_until(lambda: outbox_ids(s.cfg.outbox)["om_after_crash"] == "delivered", timeout=10,
                   what="the row delivered after the restart")


def test_healthz_503_when_the_relay_loop_is_stuck(tmp_path):
    with running_service(tmp_path) as s:
        assert wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy")
        entered, release = threading.Event(), threading.Event()
        real_step = s.relay._step  # what the relay loop calls for each batch

        def hung_step(overlap):
            entered.set()
            release.wait(30)  # a target call that never returns
            return real_step(overlap)

        s.relay._step = hung_step
        try:
            s.relay.wake()
            assert entered.wait(5), "the loop never called step()"
            # Pretend the hang has lasted an hour: while hung, the loop cannot refresh its loop_at.
            s.relay.beat.loop_mono = time.monotonic() - 3600
            h = health(s.url)
            assert h.status == 503 and h.json()["reasons"][0].startswith("relay loop stuck"), h
        finally:
            s.relay._step = real_step
            release.set()
        wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy once the loop moves")


def test_healthz_503_while_target_unreachable_past_threshold_then_200(tmp_path, private_pg):
    with running_service(tmp_path, target=private_pg.url(), unhealthy_after=1) as s:
        assert wait_until(lambda: health(s.url).status == 200, timeout=15, what="healthy")
        assert post(s.url, flat_message("om_pg_1")).status == 200
        wait_until(lambda: outbox_ids(s.cfg.outbox)["om_pg_1"] == "delivered", timeout=10,
                   what="first row delivered")
        private_pg.stop(mode="immediate")
        # Still a 200 for the sender: the outbox commits without the target.
        r = post(s.url, flat_message("om_pg_2"))
        assert r.status == 200 and r.json()["duplicate"] is False
        h = wait_until(lambda: (lambda h: h.status == 503 and h)(health(s.url)), timeout=15,
                       what="503 once the target has been down past unhealthy_after")
        assert "has not reached the target for" in h.json()["reasons"][0]
        assert h.json()["checks"]["relay"]["target_unavailable_for"] > 1
        assert metric(scrape(s.url), "outbox_relay_relay_errors_total") >= 1
        private_pg.start()
        wait_until(lambda: health(s.url).status == 200, timeout=30, what="healthy after recovery")
        wait_until(lambda: outbox_ids(s.cfg.outbox)["om_pg_2"] == "delivered", timeout=15,
                   what="the row held back delivered")
        with private_pg.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT message_id FROM feishu_messages ORDER BY message_id")
            assert [r[0] for r in cur.fetchall()] == ["om_pg_1", "om_pg_2"]
        samples = scrape(s.url)
        assert metric(samples, "outbox_relay_target_connections", state="in_use") == 0
        assert metric(samples, "outbox_relay_target_pool_size") == 2


def test_commit_wakes_the_in_process_relay(tmp_path):
    with running_service(tmp_path) as s:
        assert wait_until(lambda: health(s.url).status == 200, timeout=10, what="healthy")
        # The relay subscribed its wake-up to the very outbox object the webhook commits to...
        assert s.relay._wake.set in s.service.outbox._listeners
        ran_on = []
        s.service.outbox.add_listener(lambda: ran_on.append(threading.current_thread().name))
        assert post(s.url, flat_message("om_wake")).status == 200
        # ...and the listeners ran on the request's own thread, right after the commit, before the
        # answer went out: no poll interval between a 200 and the relay starting on it.
        assert len(ran_on) == 1 and ran_on[0].startswith("waitress")
        wait_until(lambda: outbox_ids(s.cfg.outbox)["om_wake"] == "delivered", timeout=5,
                   what="delivered")


def test_an_open_webhook_on_every_address_is_said_at_start_and_in_status(spawn, invoke, tmp_path):
    """Issue 24, item 12: `run --http 0.0.0.0:…` with no credential takes anyone's posts. It still
    runs (a firewall may be the credential), but it says so loudly at start, and `status` (so also
    `health`) keeps saying it until a credential is set or it listens on this machine only."""
    settings = {"outbox": str(tmp_path / "outbox.db"), "target": f"sqlite:///{tmp_path / 'archive.db'}",
                "http": f"0.0.0.0:{free_port()}"}
    run = spawn("run", ["run"], **settings)
    wait_until(lambda: "listening on" in run.output(), timeout=20, what="the service to listen")
    assert f"WARNING outbox_relay.service.run: OPEN WEBHOOK: the webhook listens on {settings['http']} with no" \
           " credential set: anyone who can reach it can store messages" in run.output()
    flags = [a for k, v in settings.items() for a in (f"--{k}", v)]
    report = json.loads(invoke("status", "--json", "--no-target", *flags).output)
    said = f"the webhook listens on {settings['http']} with no credential"
    assert any(w.startswith(said) for w in report["warnings"])
    assert report["health"]["level"] == "degraded"
    for closed in (["--auth-token", "t0ken"], ["--http", "127.0.0.1:8080"]):
        report = json.loads(invoke("status", "--json", "--no-target", *flags, *closed).output)
        assert not any("with no credential" in w for w in report["warnings"]), closed
