"""The collector: every family from a broker, a scoreboard and the published statuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.broker import base
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.master import scoreboard as sb
from supervisor.observability.collector import build_registry
from supervisor.registry import TaskOptions
from supervisor.scheduling.status import LagHistogram, status_doc
from tests.helpers import require_service

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


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
    registry, _ = build_registry(broker, board, graceful_timeout_s=25)
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
    assert value(got, "supervisor_task_duration_seconds_count", type="ok") == 2
    assert value(got, "supervisor_task_duration_seconds_sum", type="ok") == pytest.approx(0.32)
    assert value(got, "supervisor_task_duration_seconds_bucket", type="ok", le="0.025") == 1
    assert value(got, "supervisor_task_duration_seconds_bucket", type="ok", le="0.5") == 2
    assert value(got, "supervisor_task_duration_seconds_bucket", type="ok", le="+Inf") == 2
    assert value(got, "supervisor_task_queue_wait_seconds_bucket", type="ok", le="2.5") == 2
    assert value(got, "supervisor_task_queue_wait_seconds_bucket", type="ok", le="1.0") == 1
    assert value(got, "supervisor_queue_depth", priority="9") == 1
    assert value(got, "supervisor_queue_depth", priority="0") == 0
    _, again = scrape(registry)  # drained events are not counted twice
    assert value(again, "supervisor_task_duration_seconds_count", type="ok") == 2


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
    assert value(got, "supervisor_dispatching") == 1


def test_workers_master_and_restarts(setup) -> None:
    broker, _, registry = setup
    _, got = scrape(registry)
    assert value(got, "supervisor_workers", state="idle") == 1
    assert value(got, "supervisor_workers", state="busy") == 1
    assert value(got, "supervisor_workers", state="booting") == 0
    assert value(got, "supervisor_worker_restarts_total", reason="crash") == 0
    assert value(got, "supervisor_master_state", state="running") == 0  # nothing published yet
    assert value(got, "supervisor_worker_resident_memory_bytes", slot="3") > 1 << 20
    assert value(got, "supervisor_worker_cpu_seconds_total", slot="0") > 0
    assert ("supervisor_worker_resident_memory_bytes", frozenset({("slot", "5")})) not in got
    assert value(got, "supervisor_master_heartbeat_age_seconds") < 5
    assert value(got, "supervisor_graceful_timeout_seconds") == 25
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
    assert value(got, "supervisor_workers_desired") == 4
    assert value(got, "supervisor_worker_restarts_total", reason="crash") == 3
    assert value(got, "supervisor_worker_restarts_total", reason="parent-gone") == 1
    assert value(got, "supervisor_worker_restarts_total", reason="hung") == 0
    assert value(got, "supervisor_master_state", state="draining") == 1
    assert value(got, "supervisor_master_loop_lag_seconds") == 0.25
    assert value(got, "supervisor_worker_memory_limit_bytes") == 512 << 20


def test_scheduler_families_exist_before_it_reports_then_follow_it(setup, clock) -> None:
    broker, _, registry = setup
    _, got = scrape(registry)
    assert value(got, "supervisor_scheduler_fires_total") == 0
    assert value(got, "supervisor_scheduler_misfires_total", action="skipped") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_count") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", le="+Inf") == 0
    assert value(got, "supervisor_scheduler_last_tick_age_seconds") >= 0
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
    assert value(got, "supervisor_scheduler_fires_total") == 7
    assert value(got, "supervisor_scheduler_misfires_total", action="skipped") == 2
    assert value(got, "supervisor_scheduler_misfires_total", action="coalesced") == 1
    assert value(got, "supervisor_scheduler_misfires_total", action="overlapped") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_count") == 3
    assert value(got, "supervisor_scheduler_fire_lag_seconds_sum") == pytest.approx(3.022)
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", le="0.025") == 2
    assert value(got, "supervisor_scheduler_last_tick_age_seconds") == pytest.approx(2)
    assert value(got, "supervisor_scheduler_consecutive_failures") == 1
    broker.publish_scheduler_status(
        {"counters": {"fired": "x"}, "lag": {"buckets": [[1, 2]]}, "db_failures": None}
    )  # malformed: zeros, no error
    _, got = scrape(registry)
    assert value(got, "supervisor_scheduler_fires_total") == 0
    assert value(got, "supervisor_scheduler_fire_lag_seconds_bucket", le="+Inf") == 0
    broker.publish_status({"state": "running", "scheduler": False})
    _, got = scrape(registry)
    assert ("supervisor_scheduler_last_tick_age_seconds", frozenset()) not in got


def test_labels_are_bounded_and_build_info_is_there(setup, clock) -> None:
    broker, _, registry = setup
    for _ in range(20):
        run(broker, clock, "ok", base.SUCCEEDED)
    text, got = scrape(registry)
    assert "some-task-id" not in text
    allowed = {
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
    broker, _, registry = setup
    run(broker, clock, "ok", base.SUCCEEDED)
    broker.publish_status({"state": "running", "restarts": {"crash": 1}})
    text, _ = scrape(registry)
    res = subprocess.run(
        [str(promtool), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


@pytest.mark.parametrize("doc", ["README.md", "deploy/README.md"])
def test_every_metric_family_is_documented(setup, doc: str) -> None:
    _, _, registry = setup
    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    names = {fam.name + ("_total" if fam.type == "counter" else "") for fam in registry.collect()}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"{doc} does not document: {missing}"
