"""The collector: every family from a broker, a scoreboard and the published statuses; per-node
families labelled by node, cluster-wide ones only on the exporter, partial figures (and
``broker_up`` 0) while the broker does not answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.broker import base
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.errors import BrokerError
from supervisor.master import scoreboard as sb
from supervisor.observability.collector import build_registry
from supervisor.registry import TaskOptions
from supervisor.scheduling.status import LagHistogram, status_doc
from tests.helpers import BrokerSpy, require_service

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
N = "n1"  # the node name of the collectors here


def samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


@pytest.fixture
def setup(clock) -> tuple[MemoryBroker, sb.Scoreboard, Any]:
    opts = TaskOptions(max_retries=1, backoff_base_s=0.0, backoff_cap_s=0.0, timeout_s=10)
    broker = MemoryBroker(clock=clock, task_types={"ok": opts, "bad": opts})
    board = sb.Scoreboard(8)
    now = time.monotonic()
    board.reset(board.master_slot, os.getpid(), now)
    board.reset(0, os.getpid(), now)
    board.heartbeat(0, now, sb.IDLE)
    board.reset(3, os.getpid(), now)
    board.begin_task(3, "some-task-id", "ok", now, now + 10)
    board.reset(5, 0, now)  # being forked: no pid yet, not counted
    registry, _ = build_registry(broker, board, graceful_timeout_s=25, node=N)
    return broker, board, registry


def scrape(registry: Any) -> tuple[str, Samples]:
    text = generate_latest(registry).decode()
    return text, samples(text)


def run(
    broker: MemoryBroker,
    clock,
    task_type: str,
    outcome: str,
    *,
    wait: float = 0.0,
    took: float = 0.0,
) -> None:
    broker.push({"type": task_type, "params": b"p"})
    clock.advance(wait)
    task = broker.pop("worker:0:1")
    clock.advance(took)
    detail = None if outcome == base.SUCCEEDED else {"error": "x"}
    broker.report("worker:0:1", (task["task_id"], outcome, detail))


def test_task_counters_and_histograms_follow_the_broker(setup, clock) -> None:
    broker, _, registry = setup
    run(broker, clock, "ok", base.SUCCEEDED, wait=2.0, took=0.3)
    run(broker, clock, "ok", base.SUCCEEDED, took=0.02)
    run(broker, clock, "bad", "failed")  # retried at once (backoff 0) ...
    broker.report("worker:0:1", (broker.pop("worker:0:1")["task_id"], "failed", {"error": "y"}))
    broker.push({"type": "ok", "params": b"p", "priority": 9})
    _, got = scrape(registry)
    assert value(got, "supervisor_tasks_pushed_total", type="ok") == 3
    assert value(got, "supervisor_tasks_started_total", type="bad") == 2
    assert value(got, "supervisor_tasks_finished_total", type="ok", status="succeeded") == 2
    assert value(got, "supervisor_tasks_finished_total", type="bad", status="dead") == 1
    assert value(got, "supervisor_tasks_finished_total", type="ok", status="cancelled") == 0
    assert value(got, "supervisor_task_attempts_failed_total", type="bad", reason="error") == 2
    assert value(got, "supervisor_tasks_retried_total", type="bad", reason="error") == 1
    assert value(got, "supervisor_tasks_retried_total", type="ok", reason="timeout") == 0
    assert value(got, "supervisor_task_duration_seconds_count", node=N, type="ok") == 2
    assert value(got, "supervisor_task_duration_seconds_sum", node=N, type="ok") == pytest.approx(
        0.32
    )
    assert value(got, "supervisor_task_duration_seconds_bucket", node=N, type="ok", le="0.025") == 1
    assert value(got, "supervisor_task_duration_seconds_bucket", node=N, type="ok", le="0.5") == 2
    assert value(got, "supervisor_task_duration_seconds_bucket", node=N, type="ok", le="+Inf") == 2
    assert value(got, "supervisor_task_queue_wait_seconds_bucket", node=N, type="ok", le="2.5") == 2
    assert value(got, "supervisor_task_queue_wait_seconds_bucket", node=N, type="ok", le="1.0") == 1
    assert value(got, "supervisor_queue_depth", priority="9") == 1
    assert value(got, "supervisor_queue_depth", priority="0") == 0
    _, again = scrape(registry)  # drained events are not counted twice
    assert value(again, "supervisor_task_duration_seconds_count", node=N, type="ok") == 2


def test_queue_store_and_delayed_gauges(setup, clock) -> None:
    broker, _, registry = setup
    broker.push({"type": "ok", "params": b"p", "priority": 2})
    broker.push({"type": "ok", "params": b"p", "delay": 60})
    broker.push({"type": "ok", "params": b"p", "priority": 7})
    broker.pop("ext:1")
    broker.set_public("k", b"v")
    clock.advance(4)
    _, got = scrape(registry)
    assert value(got, "supervisor_queue_oldest_age_seconds", priority="2") == pytest.approx(4)
    assert value(got, "supervisor_tasks_delayed", status="scheduled") == 1
    assert value(got, "supervisor_tasks_delayed", status="retrying") == 0
    assert value(got, "supervisor_tasks_in_progress") == 1
    assert value(got, "supervisor_store_keys") == 1
    assert value(got, "supervisor_dispatching", node=N) == 1


def test_workers_master_and_restarts(setup) -> None:
    broker, _, registry = setup
    _, got = scrape(registry)
    assert value(got, "supervisor_workers", node=N, state="idle") == 1
    assert value(got, "supervisor_workers", node=N, state="busy") == 1
    assert value(got, "supervisor_workers", node=N, state="booting") == 0
    assert value(got, "supervisor_worker_restarts_total", node=N, reason="crash") == 0
    assert (
        value(got, "supervisor_master_state", node=N, state="running") == 0
    )  # nothing published yet
    assert value(got, "supervisor_worker_resident_memory_bytes", node=N, slot="3") > 1 << 20
    assert value(got, "supervisor_worker_cpu_seconds_total", node=N, slot="0") > 0
    assert (
        "supervisor_worker_resident_memory_bytes",
        frozenset({("slot", "5"), ("node", N)}),
    ) not in got
    assert value(got, "supervisor_master_heartbeat_age_seconds", node=N) < 5
    assert value(got, "supervisor_graceful_timeout_seconds", node=N) == 25
    broker.publish_status(
        {
            "state": "draining",
            "desired_workers": 4,
            "loop_lag_s": 0.25,
            "restarts": {"crash": 3, "recycle-tasks": 1, "parent-gone": 1},
            "max_memory_per_child_bytes": 512 << 20,
        }
    )
    _, got = scrape(registry)
    assert value(got, "supervisor_workers_desired", node=N) == 4
    assert value(got, "supervisor_worker_restarts_total", node=N, reason="crash") == 3
    assert value(got, "supervisor_worker_restarts_total", node=N, reason="parent-gone") == 1
    assert value(got, "supervisor_worker_restarts_total", node=N, reason="hung") == 0
    assert value(got, "supervisor_master_state", node=N, state="draining") == 1
    assert value(got, "supervisor_master_loop_lag_seconds", node=N) == 0.25
    assert value(got, "supervisor_worker_memory_limit_bytes", node=N) == 512 << 20


def test_scheduler_families_exist_before_it_reports_then_follow_it(setup, clock) -> None:
    broker, _, registry = setup
    _, got = scrape(registry)
    assert value(got, "supervisor_scheduler_fires_total", node=N) == 0
    assert value(got, "supervisor_scheduler_misfires_total", node=N, action="skipped") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_count", node=N) == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", node=N, le="+Inf") == 0
    assert value(got, "supervisor_scheduler_last_tick_age_seconds", node=N) >= 0
    lag = LagHistogram()
    for seconds in (0.002, 0.02, 3.0):
        lag.observe(seconds)
    doc = status_doc(
        pid=1,
        state="running",
        started_at=clock.now,
        now=clock.now,
        database="x",
        counters={"fired": 7, "misfired": 2, "coalesced": 1},
        lag=lag,
        next_due_at=None,
        enabled=3,
        db_failures=1,
        last_tick_s=0.001,
    )
    broker.publish_scheduler_status(doc)
    clock.advance(2)
    _, got = scrape(registry)
    assert value(got, "supervisor_scheduler_fires_total", node=N) == 7
    assert value(got, "supervisor_scheduler_misfires_total", node=N, action="skipped") == 2
    assert value(got, "supervisor_scheduler_misfires_total", node=N, action="coalesced") == 1
    assert value(got, "supervisor_scheduler_misfires_total", node=N, action="overlapped") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_count", node=N) == 3
    assert value(got, "supervisor_scheduler_fire_lag_seconds_sum", node=N) == pytest.approx(3.022)
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", node=N, le="0.025") == 2
    assert value(got, "supervisor_scheduler_last_tick_age_seconds", node=N) == pytest.approx(2)
    assert value(got, "supervisor_scheduler_consecutive_failures", node=N) == 1
    broker.publish_scheduler_status(
        {"counters": {"fired": "x"}, "lag": {"buckets": [[1, 2]]}, "db_failures": None}
    )  # malformed: zeros, no error
    _, got = scrape(registry)
    assert value(got, "supervisor_scheduler_fires_total", node=N) == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", node=N, le="+Inf") == 0
    broker.publish_status({"state": "running", "scheduler": False})
    _, got = scrape(registry)
    assert not [k for k in got if k[0] == "supervisor_scheduler_last_tick_age_seconds"]


def test_labels_are_bounded_and_build_info_is_there(setup, clock) -> None:
    broker, _, registry = setup
    for _ in range(20):
        run(broker, clock, "ok", base.SUCCEEDED)
    text, got = scrape(registry)
    assert "some-task-id" not in text
    allowed = {
        "node",
        "queue",
        "outcome",
        "type",
        "status",
        "reason",
        "priority",
        "slot",
        "state",
        "action",
        "le",
        "version",
        "python",
    }
    assert {k for _, labels in got for k, _ in labels} <= allowed
    info = [labels for name, labels in got if name == "supervisor_build_info"]
    assert len(info) == 1 and dict(info[0])["version"]
    assert all(name.startswith("supervisor_") for name, _ in got)


def test_exposition_passes_promtool_check_metrics(setup, clock) -> None:
    promtool = shutil.which("promtool")
    require_service(promtool is not None, "promtool not installed (apt-get install prometheus)")
    broker, board, _ = setup
    run(broker, clock, "ok", base.SUCCEEDED)
    broker.publish_status(
        {"state": "running", "restarts": {"crash": 1}, "backend": backend_counters()}
    )
    view = BrokerSpy(broker, cluster_health=health, component_statuses=ingest_board)
    registry, _ = build_registry(view, board, node=N)  # type: ignore[arg-type]
    text, _ = scrape(registry)  # every family, the cluster's and the ingest's too
    res = subprocess.run(
        [str(promtool), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_every_metric_family_is_documented(setup) -> None:
    """Every family, the cluster's and the ingest's too (a view that offers them all)."""
    broker, board, _ = setup
    view = BrokerSpy(broker, cluster_health=health, component_statuses=ingest_board)
    broker.publish_status({"state": "running", "backend": backend_counters()})
    registry, _ = build_registry(view, board, node=N)  # type: ignore[arg-type]
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    names = {fam.name + ("_total" if fam.type == "counter" else "") for fam in registry.collect()}
    assert "supervisor_ingest_messages_total" in names and "supervisor_cluster_nodes_live" in names
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"README.md does not document: {missing}"


# -- nodes and the cluster -------------------------------------------------------------------
PER_NODE = {
    "supervisor_broker_up",
    "supervisor_cluster_exporter",
    "supervisor_task_duration_seconds",
    "supervisor_task_queue_wait_seconds",
    "supervisor_node_tasks_finished_total",
    "supervisor_workers",
    "supervisor_worker_resident_memory_bytes",
    "supervisor_worker_cpu_seconds_total",
    "supervisor_workers_desired",
    "supervisor_worker_memory_limit_bytes",
    "supervisor_worker_restarts_total",
    "supervisor_master_heartbeat_age_seconds",
    "supervisor_graceful_timeout_seconds",
    "supervisor_dispatching",
    "supervisor_master_state",
    "supervisor_master_loop_lag_seconds",
    "supervisor_lease_renewals_total",
    "supervisor_leases_lost_total",
    "supervisor_scheduler_fires_total",
    "supervisor_scheduler_misfires_total",
    "supervisor_scheduler_fire_lag_seconds",
    "supervisor_scheduler_consecutive_failures",
    "supervisor_scheduler_last_tick_age_seconds",
    "supervisor_build_info",
}
# Cluster-wide families whose series name a node anyway (which node a figure is about).
ABOUT_A_NODE = {
    "supervisor_cluster_node_last_renew_age_seconds",
    "supervisor_cluster_node_lease_seconds",
    "supervisor_ingest_messages_total",
    "supervisor_ingest_lag_seconds",
    "supervisor_ingest_connected",
    "supervisor_ingest_report_age_seconds",
}


def health(**ages: float) -> Any:
    """A ClusterHealth as the Redis node's broker answers it: node -> seconds since renewed."""
    ages = ages or {N: 1.0, "n2": 45.0}

    def node(age: float) -> Any:
        return SimpleNamespace(renew_age_s=age, lease_s=30.0, live=age <= 30.0)

    nodes = {name: node(age) for name, age in ages.items()}
    return SimpleNamespace(
        nodes=nodes, leases_recovered=4, live_nodes=sum(n.live for n in nodes.values())
    )


def backend_counters() -> dict[str, Any]:
    return {"lease_renewals": {"ok": 12, "failed": 2}, "leases_lost": 1}


def ingest_board() -> dict[str, dict[str, Any]]:
    doc = {
        "kind": "ingest",
        "node": "n2",
        "queue": "orders",
        "url": "amqp://app:hunter2@mq:5672/",
        "ingested": 40,
        "duplicates": 3,
        "rejected": 1,
        "lag_s": 2.5,
        "connected": True,
        "report_age_s": 0.4,
    }
    return {
        "ingest:n2:orders": doc,
        "ingest:n2:orders-old": {**doc, "ingested": 1, "report_age_s": 9.0},  # same pair
        "ingest:n3:mail": {**doc, "node": "n3", "queue": "mail", "connected": False},
        "ingest:gone": {**doc, "node": "n4", "report_age_s": 7200.0},  # a dead node's
        "ingest:bad": {"kind": "ingest", "node": 3, "queue": None},
        "scheduler:n1": {"kind": "scheduler", "node": N},
    }


def family_names(got: Samples) -> set[str]:
    out = set()
    for name, _ in got:
        family = name
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] in PER_NODE:
                family = name[: -len(suffix)]
        out.add(family)
    return out


def test_per_node_families_carry_the_node_and_cluster_ones_do_not(setup, clock) -> None:
    broker, board, _ = setup
    run(broker, clock, "ok", base.SUCCEEDED, took=0.1)
    broker.publish_status({"state": "running", "backend": backend_counters()})
    view = BrokerSpy(broker, cluster_health=health, component_statuses=ingest_board)
    registry, _ = build_registry(view, board, node=N)  # type: ignore[arg-type]
    _, got = scrape(registry)
    for name, labels in got:
        if family_names({(name, labels): 0.0}) <= PER_NODE:
            assert ("node", N) in labels, name
        elif name not in ABOUT_A_NODE:
            assert "node" not in dict(labels), name
    assert family_names(got) >= PER_NODE
    assert value(got, "supervisor_cluster_exporter", node=N) == 1
    assert value(got, "supervisor_broker_up", node=N) == 1
    assert (
        value(got, "supervisor_node_tasks_finished_total", node=N, type="ok", status="succeeded")
        == 1
    )
    assert (
        value(got, "supervisor_node_tasks_finished_total", node=N, type="bad", status="dead") == 0
    )
    assert value(got, "supervisor_lease_renewals_total", node=N, outcome="ok") == 12
    assert value(got, "supervisor_lease_renewals_total", node=N, outcome="failed") == 2
    assert value(got, "supervisor_leases_lost_total", node=N) == 1
    assert value(got, "supervisor_task_records", status="succeeded") == 1
    assert value(got, "supervisor_task_records", status="queued") == 0
    assert value(got, "supervisor_queue_depth_by_queue", queue="default") == 0


def test_a_node_that_is_not_the_exporter_exports_only_its_own_figures(setup, clock) -> None:
    broker, board, _ = setup
    run(broker, clock, "ok", base.SUCCEEDED, took=0.1)
    broker.publish_scheduler_status({"counters": {"fired": 4}})  # its own scheduler's
    spy = BrokerSpy(
        broker,
        is_cluster_exporter=lambda: False,
        cluster_health=health,
        component_statuses=ingest_board,
    )
    registry, _ = build_registry(spy, board, node=N)  # type: ignore[arg-type]
    _, got = scrape(registry)
    assert family_names(got) <= PER_NODE, family_names(got) - PER_NODE
    assert value(got, "supervisor_cluster_exporter", node=N) == 0
    assert value(got, "supervisor_task_duration_seconds_count", node=N, type="ok") == 1
    assert value(got, "supervisor_scheduler_fires_total", node=N) == 4  # every node has one
    # nothing of the cluster was even read
    assert not {"stats", "cluster_health", "component_statuses"} & set(spy.calls)


def test_cluster_health_of_every_known_node_and_the_recovered_leases(setup) -> None:
    broker, board, _ = setup
    view = BrokerSpy(broker, cluster_health=lambda: health(n1=2.0, n2=45.0, n3=10.0))
    registry, _ = build_registry(view, board, node=N)  # type: ignore[arg-type]
    _, got = scrape(registry)
    assert value(got, "supervisor_cluster_nodes_live") == 2
    assert value(got, "supervisor_cluster_node_last_renew_age_seconds", node="n2") == 45
    assert value(got, "supervisor_cluster_node_lease_seconds", node="n2") == 30
    assert value(got, "supervisor_cluster_leases_recovered_total") == 4


def test_ingest_documents_become_counters_lag_and_connected(setup) -> None:
    broker, board, _ = setup
    view = BrokerSpy(broker, component_statuses=ingest_board)
    registry, _ = build_registry(view, board, node=N)  # type: ignore[arg-type]
    text, got = scrape(registry)
    orders = {"node": "n2", "queue": "orders"}
    msgs = "supervisor_ingest_messages_total"
    assert value(got, msgs, outcome="ingested", **orders) == 40  # the freshest of the pair
    assert value(got, msgs, outcome="duplicate", **orders) == 3
    assert value(got, msgs, outcome="rejected", **orders) == 1
    assert value(got, "supervisor_ingest_lag_seconds", **orders) == 2.5
    assert value(got, "supervisor_ingest_connected", **orders) == 1
    assert value(got, "supervisor_ingest_connected", node="n3", queue="mail") == 0
    assert value(got, "supervisor_ingest_report_age_seconds", **orders) == pytest.approx(0.4)
    assert "n4" not in text  # not refreshed for an hour: left out
    assert "hunter2" not in text and "amqp" not in text  # the URL is never exported
    ingest = [k for k in got if k[0] == "supervisor_ingest_connected"]
    assert len(ingest) == 2


def test_a_broker_that_does_not_answer_is_broker_up_0_not_a_failed_scrape(setup, clock) -> None:
    broker, board, _ = setup
    run(broker, clock, "ok", base.SUCCEEDED, took=0.1)
    down = [False]

    def maybe(name: str) -> Any:
        def call(*args: Any) -> Any:
            if down[0]:
                raise BrokerError("cannot reach Redis at redis://:***@r:6379/0")
            return getattr(broker, name)(*args)

        return call

    spy = BrokerSpy(broker, **{n: maybe(n) for n in ("master_status", "drain_events", "stats")})
    registry, _ = build_registry(spy, board, node=N)  # type: ignore[arg-type]
    _, before = scrape(registry)
    down[0] = True
    _, got = scrape(registry)
    assert value(got, "supervisor_broker_up", node=N) == 0
    assert value(got, "supervisor_cluster_exporter", node=N) == 0
    assert value(got, "supervisor_workers", node=N, state="idle") == 1  # the scoreboard's
    assert value(got, "supervisor_master_heartbeat_age_seconds", node=N) < 5
    assert value(got, "supervisor_task_duration_seconds_count", node=N, type="ok") == 1  # kept
    assert not any(name == "supervisor_queue_depth" for name, _ in got)  # absent, not 0
    assert not any(name == "supervisor_master_state" for name, _ in got)
    assert family_names(got) < family_names(before)
    down[0] = False
    _, again = scrape(registry)
    assert value(again, "supervisor_broker_up", node=N) == 1
    assert family_names(again) == family_names(before)


def test_the_node_label_is_the_brokers_else_the_masters_status_else_the_host(setup) -> None:
    broker, board, _ = setup
    registry, collector = build_registry(broker, board)
    import socket

    assert collector.node == socket.gethostname()
    broker.publish_status({"state": "running", "node": "from-status"})
    _, got = scrape(registry)
    assert value(got, "supervisor_broker_up", node="from-status") == 1
    named = BrokerSpy(broker)
    named.node = "redis-node"  # type: ignore[attr-defined]
    registry, collector = build_registry(named, board)  # type: ignore[arg-type]
    _, got = scrape(registry)
    assert collector.node == "redis-node"
    assert value(got, "supervisor_broker_up", node="redis-node") == 1
