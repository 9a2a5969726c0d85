"""deploy/ and grafana/ files parse and carry what running in production needs.

Prometheus files are also checked with the real ``promtool`` (Debian's ``prometheus`` package);
the live evaluation of every expression is in tests/e2e/test_observability_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import FIELDS
from tests.helpers import require_service

yaml = pytest.importorskip("yaml", reason="pyyaml is in the [test] extra")

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GRAFANA = ROOT / "grafana"
GRACEFUL_DEFAULT_S = next(f.default for f in FIELDS if f.name == "graceful_timeout")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(text))
    assert m, f"not a duration: {text!r}"
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m[2]]


def test_dockerfile_slim_non_root_exec_entrypoint_stopsignal_healthcheck() -> None:
    steps = dockerfile()
    words = [w for w, _ in steps]
    base = next(rest for w, rest in steps if w == "FROM")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    user = [rest for w, rest in steps if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert words.index("USER") < words.index("ENTRYPOINT")
    entry = json.loads(next(rest for w, rest in steps if w == "ENTRYPOINT"))  # exec form
    assert entry[:2] == ["supervisor", "run"]
    assert next(rest for w, rest in steps if w == "STOPSIGNAL") == "SIGTERM"
    health = next(rest for w, rest in steps if w == "HEALTHCHECK")
    cmd = json.loads(health.split("CMD", 1)[1])
    assert cmd[:2] == ["supervisor", "health"]
    assert "9810" in next(rest for w, rest in steps if w == "EXPOSE")
    env = " ".join(rest for w, rest in steps if w == "ENV")
    assert "SUPERVISOR_METRICS_HOST=0.0.0.0" in env  # probes come from outside the container
    for word, rest in steps:  # built from the repository root: every COPY source is there
        if word == "COPY":
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_compose_brings_up_the_stack_with_provisioning_mounted() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"supervisor", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    sup = services["supervisor"]
    assert (DEPLOY / sup["build"]["context"] / sup["build"]["dockerfile"]).is_file()
    assert sup["stop_signal"] == "SIGTERM"
    graceful = float(sup["environment"].get("SUPERVISOR_GRACEFUL_TIMEOUT", GRACEFUL_DEFAULT_S))
    assert seconds(sup["stop_grace_period"]) > graceful > 0
    assert sup["healthcheck"]["test"][1:3] == ["supervisor", "health"]
    assert sup["environment"]["SUPERVISOR_METRICS_HOST"] == "0.0.0.0"
    mounts = {}
    for name in ("prometheus", "grafana"):
        for vol in services[name]["volumes"]:
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts a missing {src}"
                mounts[dst] = (DEPLOY / src).resolve()
    assert (mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    assert (mounts["/etc/prometheus"] / "alerts.yml").is_file()
    prov = load_yaml(mounts["/etc/grafana/provisioning/dashboards"] / "supervisor.yml")
    path = prov["providers"][0]["options"]["path"]
    assert (mounts[path] / "supervisor.json").is_file()
    ds = load_yaml(mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")
    assert ds["datasources"][0]["type"] == "prometheus"
    assert "prometheus:9090" in ds["datasources"][0]["url"]
    assert prov["providers"][0]["folder"]


def k8s_objects() -> dict[str, dict[str, Any]]:
    objs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in objs, f"two {doc['kind']} objects"
                objs[doc["kind"]] = doc
    return objs


def test_kubernetes_grace_probes_service_and_scraping() -> None:
    objs = k8s_objects()
    assert {"Deployment", "Service", "ServiceMonitor"} <= set(objs)
    pod = objs["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    graceful = float(env.get("SUPERVISOR_GRACEFUL_TIMEOUT", GRACEFUL_DEFAULT_S))
    assert spec["terminationGracePeriodSeconds"] > graceful
    assert env["SUPERVISOR_METRICS_HOST"] == "0.0.0.0"
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert str(port["containerPort"]) == env.get("SUPERVISOR_METRICS_PORT", "9810")
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port["containerPort"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(port["containerPort"])
    assert notes["prometheus.io/path"] == "/metrics"
    svc = objs["Service"]["spec"]
    assert svc["selector"].items() <= pod["metadata"]["labels"].items()
    assert any(p["targetPort"] in ("metrics", port["containerPort"]) for p in svc["ports"])
    monitor = objs["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()
    )
    assert monitor["endpoints"][0]["port"] == "metrics"


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_alert_rules_cover_the_issue_and_carry_for_severity_description() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "SupervisorNoWorkerAlive",
        "SupervisorCrashLoop",
        "SupervisorQueueBacklogGrowing",
        "SupervisorOldestTaskTooOld",
        "SupervisorTaskFailureRatioHigh",
        "SupervisorSchedulerStalled",
        "SupervisorSchedulerMisfiring",
        "SupervisorWorkerMemoryNearLimit",
    } <= names
    for r in rules:
        assert seconds(r["for"]) > 0, r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["description"] and r["annotations"]["summary"], r["alert"]
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    )
    assert len(tested & names) >= 3


def test_dashboard_uses_its_datasource_variable_everywhere() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "supervisor.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for word in (
        "status",
        "duration",
        "queue depth",
        "oldest",
        "workers",
        "restarts",
        "retries",
        "scheduler",
        "memory",
        "cpu",
    ):
        assert word in titles, word
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def promtool() -> str:
    path = shutil.which("promtool")
    require_service(path is not None, "promtool not found: apt-get install prometheus")
    assert path is not None
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_prometheus_files(args: list[str]) -> None:
    res = subprocess.run(
        [promtool(), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
