"""A real Prometheus scrapes a live supervisor; every PromQL expression we ship returns data.

The expressions are read from the Grafana dashboard (panel targets and variable queries) and
from the alert rules, with the dashboard's variables substituted, and evaluated through the
Prometheus HTTP API: a typo'd metric or label, or a panel that is always empty, fails here.
Prometheus is Debian's ``prometheus`` package, on loopback and a free port, with a 1 s scrape
interval and its own storage folder under the test's tmp folder. Here one machine (the embedded
broker); ``test_observability_cluster`` does the same against a cluster of Redis nodes, with
the helpers of this module.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO
from tests.e2e.test_observability_metrics import METRICS, OPENER, finish_all, http_address
from tests.helpers import require_service, wait_until

yaml = pytest.importorskip("yaml", reason="pyyaml is in the [test] extra")

pytestmark = pytest.mark.timeout(240)

DASHBOARD = REPO / "grafana" / "dashboards" / "supervisor.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# What Grafana would put in place of its variables (every job and instance: "All").
GRAFANA_VARS = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "5m",
    "job": ".*",
    "node": ".*",
    "type": ".*",
}
# Families only a Redis node exports (its leases): no data on one machine.
REDIS_ONLY = {
    "supervisor_cluster_nodes_live",
    "supervisor_cluster_node_last_renew_age_seconds",
    "supervisor_cluster_node_lease_seconds",
    "supervisor_cluster_leases_recovered_total",
    "supervisor_lease_renewals_total",
    "supervisor_leases_lost_total",
}
INGEST_DOC = {
    "kind": "ingest",
    "queue": "orders",
    "url": "amqp://guest:***@mq:5672/",
    "ingested": 12,
    "duplicates": 1,
    "rejected": 0,
    "lag_s": 0.5,
    "connected": True,
}
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool)\s*(?=[0-9.])")
METRIC = re.compile(r"\b(supervisor_[a-z0-9_]+|up)\b")


class PrometheusError(Exception):
    """Prometheus answered an API call with an HTTP error (status and body)."""


class Prometheus:
    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base = base
        self.proc = proc
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with OPENER.open(url, timeout=30) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:  # its response holds the socket: closed now, not whenever GC runs
                body = exc.read().decode(errors="replace")[:300]
            raise PrometheusError(f"{exc} {body}") from None
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        return list(data["result"]) if data["resultType"] == "vector" else [data["result"]]

    def try_query(self, expr: str) -> tuple[list[dict[str, Any]] | None, str]:
        try:
            return self.query(expr), ""
        except Exception as exc:
            return None, str(exc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("prometheus")
    require_service(binary is not None, "prometheus not found: apt-get install prometheus")
    started: list[Prometheus] = []

    def start(*targets: str) -> Prometheus:
        assert binary is not None
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "supervisor",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        started.append(prom)

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-2000:]}"
            with OPENER.open(f"{prom.base}/-/ready", timeout=5) as resp:
                return resp.status == 200

        wait_until(ready, 60, interval_s=0.2, what="prometheus to be ready")
        return prom

    yield start
    for prom in started:
        prom.proc.terminate()
        try:
            prom.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait(timeout=10)


def substitute(expr: str) -> str:
    for name, val in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", val).replace("$" + name, val)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((f"panel {p['title']!r} {t['refId']}", substitute(t["expr"])))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        assert m, f"variable {var['name']}: unsupported query {q!r}"
        out.append((f"variable ${var['name']}", substitute(f"count by ({m[2]}) ({m[1]})")))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in doc["groups"] for r in g["rules"]]


def uses(expr: str, names: Collection[str]) -> bool:
    return bool(set(METRIC.findall(expr)) & set(names))


def check_every_expression(prom: Prometheus, *, skip: Collection[str] = ()) -> int:
    """Every dashboard and alert expression parses and returns data (an alert's, with its
    comparisons made ``bool``: "nothing is wrong" is no data); every metric they name was
    scraped. Expressions naming a metric of ``skip`` are left out. Returns how many were
    checked."""
    names = set(prom.api("/api/v1/label/__name__/values"))
    failures = []
    dash = [(w, e) for w, e in dashboard_exprs() if not uses(e, skip)]
    alerts = [(w, e) for w, e in alert_exprs() if not uses(e, skip)]
    for where, expr in dash:
        result, error = prom.try_query(expr)
        if not result:
            failures.append(f"{where}: {expr}\n    -> {error or 'no data'}")
    for where, expr in alerts:
        result, error = prom.try_query(expr)  # usually empty: nothing is wrong
        if result is None:
            failures.append(f"{where}: {expr}\n    -> {error}")
        as_bool = COMPARISON.sub(r"\1 bool ", expr)  # the same, without filtering
        result, error = prom.try_query(as_bool)
        if not result:
            failures.append(f"{where} (bool): {as_bool}\n    -> {error or 'no data'}")
    exprs = [e for _, e in dash + alerts]
    unknown = {n for e in exprs for n in METRIC.findall(e)} - names
    unknown = {
        n
        for n in unknown
        if not any(n == k + s for k in names for s in ("_bucket", "_sum", "_count"))
    }
    assert not unknown, f"metrics used but never scraped: {sorted(unknown)}"
    assert not failures, "expressions without data:\n" + "\n".join(failures)
    return len(exprs)


def test_every_dashboard_and_alert_expression_returns_data(start_master, prometheus_for):
    m = start_master(*METRICS, "--max-memory-per-child", "1024", workers=2)
    prom = prometheus_for(http_address(m))
    wait_until(
        lambda: prom.query('up{job="supervisor"} == 1'),
        30,
        interval_s=0.2,
        what="prometheus to scrape the supervisor",
    )
    finish_all(
        m,
        [
            ("noop", {}, 20),
            ("fail", {"why": "dashboards"}, 2),
            ("again", {}, 2),
            ("picky", {}, 1),
            ("exit", {}, 1),
            ("long", {"seconds": 0.2, "key": "l"}, 3),
        ],
    )
    m.queue.set_public("some-key", "v")
    m.queue.broker.publish_component_status("ingest:m:orders", {**INGEST_DOC, "node": "m"})
    done = time.time()
    wait_until(
        lambda: prom.query(f"timestamp(supervisor_ingest_connected) > {done + 3}"),
        30,
        interval_s=0.2,
        what="scrapes after the workload",
    )
    assert check_every_expression(prom, skip=REDIS_ONLY) >= 40
    assert len(prom.query("supervisor_cluster_exporter == 1")) == 1  # one machine: the exporter
    assert prom.query("supervisor_broker_up == 1")


def test_prometheus_sees_the_true_counts_and_evaluates_every_rule(start_master, prometheus_for):
    m = start_master(*METRICS, workers=2)
    prom = prometheus_for(http_address(m))
    finish_all(m, [("noop", {}, 5), ("exit", {}, 1)])  # exit: 3 attempts, 3 crashed workers

    def scalar(expr: str) -> float | None:
        result = prom.query(expr)
        return float(result[0]["value"][1]) if result else None

    wait_until(
        lambda: (
            scalar('sum(supervisor_tasks_finished_total{type="noop"})') == 5
            and scalar('sum(supervisor_worker_restarts_total{reason="crash"})') == 3
        ),
        30,
        interval_s=0.2,
        what="prometheus to see the finished tasks and crashes",
    )
    assert scalar('sum(supervisor_tasks_finished_total{type="exit",status="dead"})') == 1
    assert scalar('sum(supervisor_task_attempts_failed_total{reason="worker_lost"})') == 3

    def rules_evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prom.api("/api/v1/rules")["groups"] for r in g["rules"]]
        return (
            rules
            if rules
            and all(
                r.get("lastEvaluation", "").startswith("2")
                and not r["lastEvaluation"].startswith("0001")
                for r in rules
            )
            else None
        )

    rules = wait_until(rules_evaluated, 30, interval_s=0.2, what="every rule to be evaluated")
    assert {r["name"] for r in rules} == {w.split(" ", 1)[1] for w, _ in alert_exprs()}
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
