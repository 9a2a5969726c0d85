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
    assert {"supervisor", "postgres", "prometheus", "grafana"} <= set(services)
    sup = services["supervisor"]
    assert (DEPLOY / sup["build"]["context"] / sup["build"]["dockerfile"]).is_file()
    assert sup["stop_signal"] == "SIGTERM"
    graceful = float(sup["environment"].get("SUPERVISOR_GRACEFUL_TIMEOUT", GRACEFUL_DEFAULT_S))
    assert seconds(sup["stop_grace_period"]) > graceful + 5 > 5
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


def test_the_deploy_files_describe_one_machine_without_redis() -> None:
    """The deploy files run one machine (the embedded broker): none of them runs or names a Redis
    that nothing in them would use (cluster files come with the rest of the scale-out work)."""
    for name in ("docker-compose.yml", "Dockerfile"):
        assert "redis" not in (DEPLOY / name).read_text().lower(), name
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        assert "redis" not in path.read_text().lower(), path.name


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV settings (what a pod gets unless its manifest says otherwise)."""
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def k8s_objects() -> dict[str, list[dict[str, Any]]]:
    """Kubernetes objects of deploy/kubernetes by kind."""
    objs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objs.setdefault(doc["kind"], []).append(doc)
    return objs


def k8s_one(kind: str) -> dict[str, Any]:
    found = k8s_objects().get(kind, [])
    assert len(found) == 1, f"{len(found)} {kind} objects, expected one"
    return found[0]


def workload() -> dict[str, Any]:
    """The one StatefulSet or Deployment that runs `supervisor run`."""
    objs = k8s_objects()
    found = objs.get("StatefulSet", []) + objs.get("Deployment", [])
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {**image_env(), **{e["name"]: e.get("value") for e in container.get("env", [])}}


def test_kubernetes_grace_probes_service_and_scraping() -> None:
    pod = workload()["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    env = container_env(container)
    graceful = float(env.get("SUPERVISOR_GRACEFUL_TIMEOUT", GRACEFUL_DEFAULT_S))
    # the stop budget: SIGKILL comes well after the drain (and the exit) is over
    assert spec["terminationGracePeriodSeconds"] > graceful + 5
    assert env["SUPERVISOR_METRICS_HOST"] == "0.0.0.0"
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert str(port["containerPort"]) == env.get("SUPERVISOR_METRICS_PORT", "9810")
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port["containerPort"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(port["containerPort"])
    assert notes["prometheus.io/path"] == "/metrics"
    service = k8s_one("Service")
    svc = service["spec"]
    assert svc["selector"].items() <= pod["metadata"]["labels"].items()
    assert any(p["targetPort"] in ("metrics", port["containerPort"]) for p in svc["ports"])
    monitor = k8s_one("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == "metrics"


def test_kubernetes_never_runs_two_pods_on_the_data() -> None:
    """One writer of the SQLite file and of the journal at a time: one replica, and a rollout
    that stops the old pod before the new one starts (a StatefulSet, or a Recreate Deployment)."""
    obj = workload()
    spec = obj["spec"]
    assert spec["replicas"] == 1
    if obj["kind"] == "StatefulSet":
        assert spec.get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
        assert spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        service = k8s_one("Service")
        assert spec["serviceName"] == service["metadata"]["name"]
        assert service["spec"].get("clusterIP") == "None"  # a StatefulSet's governing service
    else:
        assert spec["strategy"]["type"] == "Recreate", f"a rolling Deployment overlaps: {spec}"


def test_kubernetes_database_and_journal_live_on_a_persistent_volume() -> None:
    """Schedules, task records and unfinished tasks survive the pod being replaced: the SQLite
    file and the journal next to it (``<file>.tasklog``) are on a PersistentVolumeClaim."""
    obj = workload()
    pod = obj["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(container)
    url = env.get("SUPERVISOR_DATABASE", "")
    assert url.startswith("sqlite:////"), f"an absolute SQLite file, got {url!r}"
    database = Path(url.removeprefix("sqlite:///"))
    files = [database, Path(f"{database}.tasklog")]  # where open_journal puts the journal

    claims = {t["metadata"]["name"]: t for t in obj["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    persistent = set(claims) | {n for n, v in volumes.items() if "persistentVolumeClaim" in v}
    assert not set(claims) & set(volumes), "a claim template shadowed by a pod volume"
    for name, vol in volumes.items():
        if name not in persistent:
            assert "emptyDir" in vol or "configMap" in vol or "secret" in vol, name
    for claim in claims.values():
        assert claim["spec"]["accessModes"][0] in ("ReadWriteOnce", "ReadWriteOncePod")
        assert claim["spec"]["resources"]["requests"]["storage"]

    for path in files:
        mounts = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
        assert mounts, f"{path} is on no volume"
        deepest = max(mounts, key=lambda m: len(m["mountPath"]))
        assert deepest["name"] in persistent, f"{path} is on {deepest['name']}, not on a PVC"
    run_dir = env.get("SUPERVISOR_RUN_DIR", "")
    run_mount = max(
        (m for m in container["volumeMounts"] if Path(run_dir).is_relative_to(m["mountPath"])),
        key=lambda m: len(m["mountPath"]),
    )
    assert run_mount["name"] not in persistent  # socket and pid file are per pod


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


def test_the_cluster_compose_runs_three_nodes_on_a_safe_redis_and_postgres() -> None:
    doc = load_yaml(DEPLOY / "cluster" / "docker-compose.yml")
    worker, redis = doc["services"]["worker"], doc["services"]["redis"]
    assert worker["deploy"]["replicas"] == 3
    env = worker["environment"]
    assert env["SUPERVISOR_BROKER"].startswith("redis://redis:")
    assert env["SUPERVISOR_DATABASE"].startswith("postgresql+psycopg://")
    assert set(worker["depends_on"]) == {"redis", "postgres"}
    assert "redis" in worker["build"]["args"]["EXTRAS"].split(",")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    grace = float(worker["stop_grace_period"].rstrip("s"))
    assert grace > float(env["SUPERVISOR_GRACEFUL_TIMEOUT"]) + 5


def test_the_cluster_manifest_is_a_multi_replica_deployment_on_external_services() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "cluster" / "kubernetes.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Secret", "Deployment"}  # Redis and PostgreSQL come from elsewhere
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SUPERVISOR_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {"SUPERVISOR_BROKER", "SUPERVISOR_DATABASE"} <= set(kinds["Secret"]["stringData"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    graceful = float(env["SUPERVISOR_GRACEFUL_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] > graceful + 5
    assert "volumes" not in pod  # nothing on disk: any pod may go
