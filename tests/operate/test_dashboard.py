"""deploy/grafana/outbox-relay.json and deploy/prometheus/alerts.yml against a real Prometheus.

Debian's prometheus package (prometheus + promtool): the test starts its own server on a loopback
port, scraping a running `outbox-relay run` (PostgreSQL target) every second under load, and asks
it through its HTTP API for every expression in the dashboard and in the alert rules. The rules it
loads are the shipped file with only the `for:` durations shortened (rewritten here, never a copy
kept by hand). Then the faults are made real, and each alert must fire: a row the table refuses
(dead), the PostgreSQL server stopped (backlog growing, oldest pending, target unreachable), the
service killed (down).
"""

import datetime
import json
import math
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from loadutil import Load, hook_event
from outbox_relay.config import Config
from outbox_relay.intake.spool import Spool, SpoolIngester
from outbox_relay.operate import health
from outbox_relay.operate.metrics import Metrics
from outbox_relay.operate.topdata import parse_metrics
from outbox_relay.outbox import Outbox

import pgharness
from cliutil import run_cli
from factories import flat_message
from fakefeishu import FakeFeishu, history
from relayutil import pg_query, wait_until
from serverproc import REPO
from serviceutil import metric, outbox_ids, post, scrape, service_process
from skiputil import unavailable

ROOT = pathlib.Path(REPO)
DASHBOARD = ROOT / "deploy" / "grafana" / "outbox-relay.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS = {"OutboxRelayBacklogGrowing", "OutboxRelayOldestPendingTooOld", "OutboxRelayDeadRows",
          "OutboxRelayTargetUnreachable", "OutboxRelayDown", "OutboxRelayReconcileGapsFound",
          "OutboxRelayReconcileBehind"}
RECONCILED_CHAT = "oc_dashboard000000000001"
# What Grafana puts in for its variables, for a Prometheus that scrapes every second
# ($__rate_interval is at least four scrape intervals) and "All" selected.
GRAFANA_VARIABLES = {"__rate_interval": "5s", "__interval": "1s", "job": ".*", "instance": ".*"}
SHORT_FOR = 2  # seconds: the test's `for:`
UNHEALTHY_AFTER = 3  # seconds: the service's threshold, which the rules read from /metrics


# -- the files ---------------------------------------------------------------------------------


def dashboard():
    return json.loads(DASHBOARD.read_text("utf-8"))


def grafana_to_promql(expr):
    """The expression with Grafana's variables put in, as Grafana sends it to Prometheus."""
    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def dashboard_queries(dash):
    """[(where, PromQL)] of every panel target, and of each variable's label_values() as the
    series query Grafana makes of it (count by the label, so the label must be there)."""
    out = [(f"panel {p['title']!r} {t['refId']}", grafana_to_promql(t["expr"]))
           for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
        assert m, var["query"]
        out.append((f"variable {var['name']}", f"count by ({m.group(2)}) ({grafana_to_promql(m.group(1))})"))
    return out


def shortened_rules(text, seconds=SHORT_FOR):
    """The rules file with every `for:` set to `seconds`, and how many were rewritten."""
    return re.subn(r"(?m)^(\s+)for:\s*\S+\s*$", rf"\g<1>for: {seconds}s", text)


def as_bool(expr):
    """The alert expression with each comparison made a `bool` one: the same series, valued 0 or 1,
    so it returns data whether or not the alert's condition holds (label matchers left alone)."""
    out, depth, quote, i = [], 0, None, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "{[(":
            depth += ch == "{"
        elif ch in "}])":
            depth -= ch == "}"
        elif depth == 0 and (m := re.match(r"==|!=|>=|<=|>|<", expr[i:])):
            out.append(m.group(0) + " bool")
            i += len(m.group(0))
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def test_dashboard_is_a_grafana_export_with_a_datasource_input():
    dash = dashboard()
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    assert {r["id"] for r in dash["__requires"]} >= {"grafana", "prometheus", "timeseries", "stat"}
    assert dash["id"] is None and dash["uid"] == "outbox-relay" and dash["title"]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"] == ds and p["type"] in ("timeseries", "stat"), p["title"]
        assert p["targets"] and all(t["datasource"] == ds and t["expr"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"] == ds
    text = json.dumps(dash)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("in per second", "delivered", "backlog", "oldest pending", "latency", "errors", "connections",
                   "disk"):
        assert needed in titles, needed
    assert "histogram_quantile" in text and "_bucket" in text


def test_as_bool_leaves_label_matchers_alone():
    assert as_bool('a{x!="1", y=~"2"} > on (job) b') == 'a{x!="1", y=~"2"} > bool on (job) b'
    assert as_bool('up{job="o"} == 0 or c >= 2') == 'up{job="o"} == bool 0 or c >= bool 2'


def test_promtool_check_rules_passes():
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    text = RULES.read_text("utf-8")
    # The windows, in the shipped file.
    assert re.search(r"alert: OutboxRelayBacklogGrowing\n(?:.*\n)*?\s+for: 10m\n", text)
    assert shortened_rules(text)[1] == len(ALERTS)


# -- the metrics they read -------------------------------------------------------------------------


def test_spool_ingestion_and_the_alert_thresholds_are_in_metrics(tmp_path):
    cfg = Config(outbox=str(tmp_path / "outbox.db"), spool=str(tmp_path / "spool"), unhealthy_after=42)
    with Outbox(cfg.outbox) as outbox:
        spool = Spool(cfg.spool).ensure()
        ingester = SpoolIngester(spool, outbox)
        metrics = Metrics(outbox, cfg=cfg, spool=ingester)
        for payload in (hook_event("om_s1"), hook_event("om_s2"), flat_message("om_s3"), hook_event("om_s1")):
            spool.write(payload)
        (tmp_path / "spool" / "new" / "0000000000000.1_bad.json").write_text("not a message")
        before = parse_metrics(metrics.render().decode())
        ingester.step()
        after = parse_metrics(metrics.render().decode())
    spooled = {(dict(labels)["source"], dict(labels)["outcome"]): v for (name, labels), v in after.items()
               if name == "outbox_relay_spool_ingested_total" and v}
    assert spooled == {("openclaw", "stored"): 2, ("api", "stored"): 1, ("openclaw", "duplicate"): 1,
                       ("unknown", "rejected"): 1}
    # Zero series exist before anything happened, so rate() and the dashboard see 0, not nothing.
    assert before["outbox_relay_spool_ingested_total", (("outcome", "rejected"), ("source", "unknown"))] == 0
    assert before["outbox_relay_messages_received_total", (("outcome", "invalid"), ("source", "unknown"))] == 0
    assert after["outbox_relay_unhealthy_after_seconds", ()] == 42
    assert after["outbox_relay_relay_stuck_after_seconds", ()] == health.stuck_after(cfg) == 80


# -- a real Prometheus --------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping one target every second."""

    def __init__(self, tmp_path, scrape_port, rules):
        binary = shutil.which("prometheus")
        if binary is None:
            unavailable("prometheus is not installed (apt-get install prometheus)")
        self.port = pgharness.free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
            f"rule_files: [{json.dumps(str(rules))}]\n"
            "scrape_configs:\n"
            "  - job_name: outbox-relay\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{scrape_port}']}}]\n")
        self.log_path = tmp_path / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(self._ready, timeout=30, what="prometheus to be ready")
        except BaseException:
            self.close()
            raise

    def _ready(self):
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def alert_states(self):
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _has_finite_data(prom, expr):
    result = prom.query(expr)
    return bool(result) and all(math.isfinite(float(r["value"][1])) for r in result)


def _wait_all_have_data(prom, missing):
    """Poll until each of {where: PromQL} has returned finite data once; fail listing the rest."""
    def check():
        for where, expr in list(missing.items()):
            if _has_finite_data(prom, expr):
                del missing[where]
        return not missing
    try:
        wait_until(check, timeout=40, interval=0.5, what="every expression to return data")
    except TimeoutError:
        raise AssertionError("no data for:\n" + "\n".join(f"  {w}: {q}" for w, q in missing.items())) from None


def _wait_firing(prom, names, since, timeout):
    """Wait until each alert of `names` fires; {alert: (when it became active, when it fired),
    in seconds after the wall-clock time `since`}. Fails naming the ones that did not fire."""
    fired = {}

    def check():
        for a in prom.api("alerts")["alerts"]:
            name = a["labels"]["alertname"]
            if name in names and name not in fired and a["state"] == "firing":
                fired[name] = (_epoch(a["activeAt"]) - since, time.time() - since)
        return set(fired) == set(names)
    try:
        wait_until(check, timeout=timeout, interval=0.25, what=f"alerts {sorted(names)} to fire")
    except TimeoutError:
        raise AssertionError(f"fired: {fired}; states now: {prom.alert_states()}") from None
    return fired


def _epoch(rfc3339):
    """Prometheus's activeAt (UTC, nanoseconds) -> epoch seconds."""
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return seconds.timestamp() + float("0." + (frac or "0"))


def _inactive(prom, name):
    wait_until(lambda: name not in prom.alert_states(), timeout=30, interval=0.25, what=f"{name} inactive")


@pytest.mark.slow
def test_every_dashboard_and_alert_expression_returns_data_and_the_alerts_fire(tmp_path, private_pg):
    rules, rewritten = shortened_rules(RULES.read_text("utf-8"))
    assert rewritten == len(ALERTS)
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(rules, "utf-8")
    url = private_pg.url()
    assert run_cli("init-db", "--target", url, "--outbox", tmp_path / "unused.db").exit_code == 0
    pg_query(url, "ALTER TABLE feishu_messages ADD CONSTRAINT no_banned_chat CHECK (chat_id <> 'oc_banned')")
    spool = tmp_path / "spool"
    fake = FakeFeishu().__enter__()  # reconciliation's series: a chat of the bot's, nothing missing yet
    fake.add_chat(RECONCILED_CHAT, [])
    reconcile = {"feishu_app_id": fake.app_id, "feishu_app_secret": fake.app_secret, "feishu_api_base": fake.url,
                 "feishu_rate": 100, "feishu_reconcile_interval": 1, "feishu_reconcile_budget": 100_000}
    with service_process(tmp_path, target=url, spool=spool, unhealthy_after=UNHEALTHY_AFTER, **reconcile) as svc:
        prom = Prometheus(tmp_path, svc.port, rules_path)
        try:
            with Load(svc.url, rate=40, spool=spool, spool_rate=5):
                _healthy_under_load(prom)
                _target_stopped(prom, private_pg)
                _dead_row(prom, svc)
            _gap(prom, fake)
            # Each alert became active only after the fault that causes it, and fired `for:` later.
            killed = time.time()
            svc.proc.kill()
            active, fired = _wait_firing(prom, {"OutboxRelayDown"}, killed, timeout=30)["OutboxRelayDown"]
            assert 0 < active and fired >= active + SHORT_FOR, (active, fired)
        finally:
            prom.close()
            fake.__exit__(None, None, None)


def _gap(prom, fake):
    """A message only Feishu's history has: reconciliation fills it, and the gaps alert fires."""
    made = time.time()
    item, _ = history(RECONCILED_CHAT, 1, int(fake.now()) - 120, 1)[0]
    fake.add_chat(RECONCILED_CHAT, [item])
    active, firing = _wait_firing(prom, {"OutboxRelayReconcileGapsFound"}, made, timeout=30)[
        "OutboxRelayReconcileGapsFound"]
    assert 0 < active and firing >= active + SHORT_FOR, (active, firing)


def _healthy_under_load(prom):
    loaded = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"}
    assert set(loaded) == ALERTS and all(r["duration"] == SHORT_FOR for r in loaded.values()), loaded
    # Every dashboard expression (and each rule's, its comparisons made `bool`) returns finite data.
    queries = dashboard_queries(dashboard()) + [(f"alert {n}", as_bool(r["query"])) for n, r in loaded.items()]
    _wait_all_have_data(prom, dict(queries))
    # The intake panel sees both ways in at their rates (40/s webhook, 5/s spool) ...
    intake = next(p for p in dashboard()["panels"] if p["title"] == "Messages in per second, by source")
    by_way = {}

    def at_their_rates():
        for target in intake["targets"][:2]:
            by_way.update({(target["legendFormat"].split()[0], r["metric"]["source"]): float(r["value"][1])
                           for r in prom.query(grafana_to_promql(target["expr"]))})
        return 36 <= by_way[("webhook", "api")] <= 44 and 3 <= by_way[("spool", "openclaw")] <= 7
    try:
        wait_until(at_their_rates, timeout=20, interval=0.5, what="the intake rates")
    except TimeoutError:
        raise AssertionError(by_way) from None
    # ... and while all is well no alert is even pending (a burst can make the backlog's trend
    # positive for a few seconds, and `for:` is 2 s here, not 10 minutes: so wait for quiet).
    wait_until(lambda: prom.alert_states() == {}, timeout=40, interval=0.25, what="no alert while healthy")


def _target_stopped(prom, pg):
    """The PostgreSQL server stopped under load: the backlog grows at once; the oldest pending
    message and the outage pass unhealthy_after; each alert fires `for:` after its condition."""
    stopped = time.time()
    pg.stop(mode="immediate")
    fired = _wait_firing(prom, {"OutboxRelayBacklogGrowing", "OutboxRelayOldestPendingTooOld",
                                "OutboxRelayTargetUnreachable"}, stopped, timeout=45)
    active, firing = fired.pop("OutboxRelayBacklogGrowing")
    assert 0 < active < 10 and firing >= active + SHORT_FOR, (active, firing)
    for name, (active, firing) in fired.items():
        assert UNHEALTHY_AFTER < active < UNHEALTHY_AFTER + 10 and firing >= active + SHORT_FOR, (name, active, firing)
    pg.start()
    _inactive(prom, "OutboxRelayTargetUnreachable")  # and they clear once it is back


def _dead_row(prom, svc):
    sent = time.time()
    assert post(svc.url, flat_message("om_banned") | {"chat_id": "oc_banned"}).status == 200
    wait_until(lambda: outbox_ids(svc.outbox).get("om_banned") == "dead", timeout=15, what="the row dead")
    assert metric(scrape(svc.url), "outbox_relay_outbox_rows", state="dead") == 1
    active, firing = _wait_firing(prom, {"OutboxRelayDeadRows"}, sent, timeout=30)["OutboxRelayDeadRows"]
    assert 0 < active and firing >= active + SHORT_FOR, (active, firing)
