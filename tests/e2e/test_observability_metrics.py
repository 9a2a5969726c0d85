"""/metrics, /livez, /readyz and ``supervisor health`` of a real ``supervisor run``.

The metrics must tell the truth: after tasks with known outcomes the counters equal those counts
exactly, and a ``kill -9``ed worker is one restart with reason ``crash``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO
from tests.helpers import require_service, wait_until

pytestmark = pytest.mark.timeout(120)

METRICS = ("--metrics-port", "0")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers (also used by test_observability_prometheus) ------------------------------------
def http_address(m: Any, timeout_s: float = 20) -> str:
    path = m.run_dir / "http_address"
    return str(
        wait_until(
            lambda: path.exists() and path.read_text().strip(),
            timeout_s,
            what="RUN_DIR/http_address",
        )
    )


def get(address: str, path: str) -> tuple[int, bytes]:
    try:
        with OPENER.open(f"http://{address}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:  # its response holds the socket: closed here, not whenever GC runs
            return exc.code, exc.read()


def scrape(address: str) -> Samples:
    code, body = get(address, "/metrics")
    assert code == 200, body
    out: Samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def total(got: Samples, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` that carry ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in got.items() if n == name and want <= ls)


def supervisor_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def finish_all(m: Any, pushes: list[tuple[str, dict[str, Any], int]]) -> dict[str, list[str]]:
    """Push ``count`` tasks of each (type, params); wait until every one is finished."""
    ids: dict[str, list[str]] = {}
    for task_type, params, count in pushes:
        ids[task_type] = [
            m.queue.push_task({"type": task_type, "params": params}) for _ in range(count)
        ]
    every = [t for group in ids.values() for t in group]

    def finished() -> bool:
        return all((m.task(t) or {}).get("status") in ("succeeded", "dead") for t in every)

    wait_until(finished, 60, what=f"{len(every)} tasks to finish")
    return ids


# -- tests -----------------------------------------------------------------------------------
def test_counters_equal_the_known_outcomes(start_master) -> None:
    m = start_master(*METRICS, workers=2)
    address = http_address(m)
    finish_all(
        m, [("noop", {}, 7), ("fail", {"why": "test"}, 3), ("picky", {}, 2), ("again", {}, 2)]
    )
    got = scrape(address)
    finished = "supervisor_tasks_finished_total"
    assert value(got, finished, type="noop", status="succeeded") == 7
    assert value(got, finished, type="fail", status="dead") == 3  # 1 + max_retries=2 each
    assert value(got, finished, type="picky", status="dead") == 2  # Reject: dead at once
    assert value(got, finished, type="again", status="succeeded") == 2
    assert total(got, finished) == 14 == total(got, "supervisor_tasks_pushed_total")
    assert total(got, finished, status="cancelled") == 0
    failed = "supervisor_task_attempts_failed_total"
    assert value(got, failed, type="fail", reason="error") == 9
    assert value(got, failed, type="picky", reason="invalid") == 2
    assert value(got, failed, type="again", reason="retry") == 2
    assert total(got, failed) == 13
    assert value(got, "supervisor_tasks_retried_total", type="fail", reason="error") == 6
    assert value(got, "supervisor_tasks_retried_total", type="again", reason="retry") == 2
    assert value(got, "supervisor_tasks_started_total", type="fail") == 9
    assert total(got, "supervisor_tasks_started_total") == 7 + 9 + 2 + 4
    assert total(got, "supervisor_task_duration_seconds_count", type="noop") == 7
    node_finished = "supervisor_node_tasks_finished_total"  # the one node ran them all
    assert total(got, node_finished, type="noop", status="succeeded") == 7
    assert total(got, node_finished) == 14
    assert total(got, "supervisor_cluster_exporter") == 1 == total(got, "supervisor_broker_up")
    assert total(got, "supervisor_task_queue_wait_seconds_count", type="again") == 4
    assert value(got, "supervisor_tasks_in_progress") == 0
    assert total(got, "supervisor_queue_depth") == 0
    assert total(got, "supervisor_worker_restarts_total") == 0
    wait_until(
        lambda: total(scrape(address), "supervisor_workers_desired") == 2,
        what="the master's status in the metrics",
    )
    got = scrape(address)
    assert (
        total(got, "supervisor_workers", state="idle")
        + total(got, "supervisor_workers", state="busy")
        == 2
    )
    assert len([k for k in got if k[0] == "supervisor_worker_resident_memory_bytes"]) == 2
    assert total(got, "supervisor_master_state", state="running") == 1


def test_kill_9_of_a_worker_is_one_restart_with_reason_crash(start_master) -> None:
    m = start_master(*METRICS, workers=2)
    address = http_address(m)
    victim = m.wait_ready()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in m.wait_ready(), 20, what="a replacement worker")
    got = wait_until(
        lambda: (
            (g := scrape(address))
            and total(g, "supervisor_worker_restarts_total", reason="crash") >= 1
            and g
        ),
        what="the crash in the metrics",
    )
    assert total(got, "supervisor_worker_restarts_total", reason="crash") == 1
    assert total(got, "supervisor_worker_restarts_total") == 1
    assert total(got, "supervisor_workers_desired") == 2


def test_exposition_passes_promtool_check_metrics(start_master) -> None:
    promtool = shutil.which("promtool")
    require_service(promtool is not None, "promtool not found: apt-get install prometheus")
    m = start_master(*METRICS, workers=2)
    address = http_address(m)
    finish_all(m, [("noop", {}, 3), ("fail", {}, 1)])
    m.queue.set_public("k", "v")
    code, body = get(address, "/metrics")
    assert code == 200
    res = subprocess.run(
        [str(promtool), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
    assert b"supervisor_store_keys 1.0" in body


def test_livez_readyz_and_supervisor_health_follow_the_master(start_master) -> None:
    m = start_master(*METRICS, "--graceful-timeout", "30", workers=1)
    address = http_address(m)
    assert get(address, "/livez")[0] == 200
    wait_until(lambda: get(address, "/readyz")[0] == 200, what="/readyz 200")
    res = supervisor_cli("health", "--run-dir", str(m.run_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    res = supervisor_cli("health", "--url", f"http://{address}", "--ready")
    assert res.returncode == 0, res.stdout + res.stderr
    m.queue.push_task({"type": "hold", "params": {"key": "held", "once_only": True}})
    wait_until(lambda: m.queue.get_public("held"), what="the hold task to start")
    m.signal(signal.SIGTERM)  # draining: not ready, still alive

    def draining() -> dict[str, Any] | None:
        code, body = get(address, "/readyz")
        doc = json.loads(body)
        return doc if code == 503 and doc["reason"] == "master is draining" else None

    wait_until(draining, what="/readyz to say draining")
    assert get(address, "/livez")[0] == 200
    res = supervisor_cli("health", "--run-dir", str(m.run_dir), "--ready")
    assert res.returncode == 1 and "draining" in res.stderr
    m.queue.set_public("release", True)
    assert m.wait_exit(20) == 0
    res = supervisor_cli("health", "--url", address, "--timeout", "2")
    assert res.returncode == 1 and "unreachable" in res.stderr


def test_a_taken_metrics_port_stops_the_start_with_a_message(start_master) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = start_master("--metrics-port", str(port), workers=1, wait=False)
        assert m.wait_exit(20) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in m.log_text()


def test_no_metrics_serves_nothing(start_master) -> None:
    m = start_master("--no-metrics", workers=1)
    assert m.status()["master"]["state"] == "running"
    assert not (m.run_dir / "http_address").exists()
