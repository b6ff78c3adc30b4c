"""Webhook: POST /webhook/feishu-message through the real `outbox-relay serve` vs a bare WSGI app.

Both servers are separate processes on waitress with the same thread count. Load comes from wrk
(closed loop, 16 connections, a Lua script giving every request a new message_id) and, for the
rate-limited p99, from bench/loadgen.py (open loop, fixed rate) in a process of its own.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import payloads
from common import BENCH, Line, free_port, na_line, port_open, ratio_line, remove_sqlite, wait_for

from outbox_relay.config import Config

PATH = "/webhook/feishu-message"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def write_bodies(path, count=300):
    """Distinct bodies, one per line, with @@MID@@ where the message_id goes."""
    with open(path, "wb") as f:
        for ev in payloads.events("web", count):
            ev["event"]["message"]["message_id"] = "@@MID@@"
            f.write(payloads.body(ev) + b"\n")




class Server:
    """A server process: ours (`outbox-relay serve`) or the bare baseline."""

    def __init__(self, kind, db, threads):
        self.kind, self.db, self.port = kind, db, free_port()
        remove_sqlite(db)
        if kind == "ours":
            exe = os.path.join(os.path.dirname(sys.executable), "outbox-relay")
            argv = [exe, "-q", "serve", "--outbox", db, "--http", f"127.0.0.1:{self.port}"]
            env = dict(os.environ, OUTBOX_RELAY_HTTP_THREADS=str(threads))
        else:
            argv = [sys.executable, os.path.join(BENCH, "bare_server.py"), db, str(self.port), str(threads)]
            env = dict(os.environ)
        env.pop("OUTBOX_RELAY_CONFIG", None)
        # A file, not a pipe: under load waitress logs a warning per queued task, and a full pipe
        # nobody reads would stall the server.
        self.log_path = db + ".log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=os.path.dirname(db), stdout=subprocess.DEVNULL,
                                         stderr=log)
        try:
            wait_for(lambda: self.proc.poll() is not None or port_open(self.port), 30, what=f"{kind} server")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {self.log_tail()}")

    def log_tail(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def log_lines(self):
        with open(self.log_path, "rb") as f:
            return f.read().count(b"\n")

    def rows(self):
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_wrk(out):
    def ms(text):
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total, "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else None}


def run_wrk(server, bodies, prefix, seconds, connections=16, threads=2):
    url = f"http://127.0.0.1:{server.port}{PATH}"
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
            os.path.join(BENCH, "wrk_post.lua"), url, "--", bodies, prefix]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr[-2000:]}")
    result = parse_wrk(out.stdout)
    if result["non2xx"] or result["socket_errors"]:
        raise RuntimeError(f"{server.kind}: wrk saw errors: {result}\n{out.stdout}")
    return result


def run_loadgen(server, bodies, prefix, rate, seconds, connections=16):
    argv = [sys.executable, os.path.join(BENCH, "loadgen.py"), "127.0.0.1", str(server.port), PATH, bodies,
            prefix, str(rate), str(seconds), str(connections)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"{server.kind}: loadgen saw errors: {result}")
    return result


def bench_webhook(workdir, seconds, rated_seconds, rate=500, connections=16):
    threads = Config().http_threads
    bodies = os.path.join(workdir, "bodies.jsonl")
    write_bodies(bodies)
    have_wrk = os.access(WRK, os.X_OK)
    results = {}
    for kind in ("bare", "ours") if have_wrk else ("ours",):
        server = Server(kind, os.path.join(workdir, f"web-{kind}.db"), threads)
        try:
            if have_wrk:
                run_wrk(server, bodies, f"om_w{kind[:3]}wu", 1, connections)  # warm up: imports, first pages
                before = server.rows()
                results[kind] = run_wrk(server, bodies, f"om_w{kind[:3]}", seconds, connections)
                stored = server.rows() - before
                if stored < results[kind]["requests"] - connections:
                    raise RuntimeError(f"{kind}: {results[kind]['requests']} answered, {stored} rows stored")
            if kind == "ours":
                results["rated"] = run_loadgen(server, bodies, "om_wrated", rate, rated_seconds, connections)
        finally:
            server.stop()
    lines = [na_line(f"webhook: POST, {connections} conns vs bare WSGI + sqlite3", "wrk not installed", "≥ 1×"),
             na_line(f"webhook: latency at full load, {connections} conns", "wrk not installed")]
    if have_wrk:
        lines = wrk_lines(results["ours"], results["bare"], threads, seconds, connections)
    rated = results["rated"]
    ok_rate = rated["achieved_rate"] >= 0.95 * rate
    return lines + [
        Line(f"webhook: p99 at {rate} req/s", f"{rated['p99_ms']:.1f} ms", "—", None, "≤ 50 ms",
             rated["p99_ms"] <= 50 and ok_rate,
             note=f"open loop, {connections} conns, {rated_seconds}s, bench/loadgen.py (a separate Python"
                  " asyncio process; latency from each request's due time): achieved"
                  f" {rated['achieved_rate']:.0f}/s, p50 {rated['p50_ms']:.1f} ms,"
                  f" max {rated['max_ms']:.1f} ms"),
    ]


def wrk_lines(ours, bare, threads, seconds, connections):
    setup = (f"`outbox-relay serve` (waitress, {threads} threads) vs a bare WSGI app on waitress, {threads}"
             " threads, 1 sqlite3 INSERT+COMMIT per request (bench/bare_server.py), separate processes")
    return [
        ratio_line(f"webhook: POST, {connections} conns vs bare WSGI + sqlite3", ours["rps"], bare["rps"],
                   "req/s", 1.0,
                   note=f"{setup}; load: wrk -t2 -c{connections} -d{seconds}s, bench/wrk_post.lua gives every"
                        " request a new message_id (300 distinct bodies)"),
        Line(f"webhook: latency at full load, {connections} conns",
             f"p50 {ours['p50']:.1f} / p99 {ours['p99']:.1f} ms",
             f"p50 {bare['p50']:.1f} / p99 {bare['p99']:.1f} ms", None, "—", None),
    ]
