"""Tasks through a real master: exactly-once under normal flow, crashes, timeouts, dead letters."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import gone
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def test_thousand_tasks_across_two_workers_each_run_exactly_once(start_master, tmp_path: Path):
    m = start_master(workers=2)
    path = tmp_path / "executions.log"
    ids = m.queue.push_tasks(
        [{"type": "record", "params": {"path": str(path)}} for _ in range(1000)]
    )
    wait_until(
        lambda: m.counter("finished", "record", "succeeded") == 1000,
        60,
        what="1000 record tasks to succeed",
    )
    lines = path.read_text().split()
    assert sorted(lines) == sorted(ids)  # every task once, none twice, none missing
    pids = {m.task(i)["result"] for i in ids[::50]}
    assert pids <= set(m.worker_pids())


def test_worker_killed_mid_task_is_replaced_and_the_task_runs_again(start_master):
    m = start_master(workers=2)
    before = set(m.worker_pids())
    task_id = m.queue.push_task({"type": "hold", "params": {"key": "hold"}})
    first = wait_until(lambda: m.queue.get_public("hold"), what="the task to start")
    assert first["attempt"] == 1
    os.kill(first["pid"], signal.SIGKILL)
    rec = m.wait_status(task_id, "succeeded")
    assert rec["attempts"] == 2
    assert rec["errors"][0]["reason"] == "worker_lost"
    assert rec["errors"][0]["exit_status"] == 128 + signal.SIGKILL
    after = set(m.wait_ready())
    assert first["pid"] not in after and len(after) == 2
    assert after & before  # the other worker was not touched
    assert m.status()["master"]["restarts"].get("crash") == 1


@pytest.mark.parametrize("task_type", ["sleep", "busy_c"])
def test_hard_timeout_kills_the_worker_even_in_sleep_or_c_code(start_master, task_type):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": task_type, "params": {"key": "pid"}})
    pid = wait_until(lambda: m.queue.get_public("pid"), what="the task to start")
    rec = m.wait_status(task_id, "dead", timeout_s=10)
    assert rec["errors"][-1]["reason"] == "timeout"
    # Killed within one second of the 1 s deadline (plus scheduling noise on a busy machine).
    assert rec["errors"][-1]["at"] - rec["started_at"] < 1.0 + 1.0
    wait_until(lambda: gone(pid), what="the killed worker to be gone")
    new = m.wait_ready()
    assert pid not in new
    assert m.status()["master"]["restarts"].get("timeout") == 1


def test_soft_timeout_raises_inside_the_handler(start_master):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "soft", "params": {"key": "soft"}})
    rec = m.wait_status(task_id, "dead")
    assert m.queue.get_public("soft") == "cleaned up"
    assert rec["errors"][-1]["reason"] == "timeout"
    assert "SoftTimeLimitExceeded" in rec["traceback"]
    assert m.status()["master"]["restarts"].get("timeout") is None  # no kill was needed


@pytest.mark.parametrize("how", ["exit", "kill", "segv"])
def test_task_that_kills_its_worker_ends_dead_while_others_flow(start_master, how):
    m = start_master(workers=2)
    bad = m.queue.push_task({"type": "exit", "params": {"how": how}})
    good = m.queue.push_tasks([{"type": "noop", "params": {}} for _ in range(200)])
    rec = m.wait_status(bad, "dead", timeout_s=30)
    assert rec["attempts"] == 3  # max_retries=2: counted at hand-out, so no endless loop
    assert [e["reason"] for e in rec["errors"]] == ["worker_lost"] * 3
    wait_until(
        lambda: all(m.task(t)["status"] == "succeeded" for t in good),
        30,
        what="the other tasks to succeed",
    )
    assert m.proc.poll() is None
    m.wait_ready()


def test_failing_task_retries_with_backoff_then_dead_and_can_be_pushed_again(start_master):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "fail", "params": {"why": "bad input"}})
    rec = m.wait_status(task_id, "dead")
    assert rec["attempts"] == 3
    assert "ValueError: always fails: bad input" in rec["error"]
    assert "Traceback" in rec["traceback"]
    assert m.queue.retry_task(task_id)
    rec = m.wait_status(task_id, "dead")
    assert len(rec["errors"]) == 6  # history kept across the replay


def test_unknown_task_type_is_refused_at_push(start_master):
    from supervisor.errors import UnknownTaskType

    m = start_master(workers=1)
    with pytest.raises(UnknownTaskType, match=r"'nope' is not registered; known: .*noop"):
        m.queue.push_task({"type": "nope", "params": {}})


def test_recycles_after_max_tasks_per_child(start_master):
    m = start_master("--max-tasks-per-child", "5", workers=1)
    first = m.wait_ready()
    ids = m.queue.push_tasks([{"type": "noop", "params": {}} for _ in range(12)])
    wait_until(
        lambda: all(m.task(t)["status"] == "succeeded" for t in ids), 30, what="12 tasks to succeed"
    )
    wait_until(
        lambda: m.status()["master"]["restarts"].get("recycle-tasks", 0) >= 2, what="two recycles"
    )
    assert set(m.wait_ready()).isdisjoint(first)


def test_recycles_a_worker_over_its_memory_limit(start_master):
    m = start_master("--max-memory-per-child", "64", workers=1)
    task_id = m.queue.push_task({"type": "hog", "params": {"mib": 96}})
    rec = m.wait_status(task_id, "succeeded")
    wait_until(
        lambda: m.status()["master"]["restarts"].get("recycle-memory") == 1, what="a memory recycle"
    )
    wait_until(lambda: gone(rec["result"]), what="the hog worker to exit")
    assert rec["result"] not in m.wait_ready()


def test_hung_idle_worker_is_replaced(start_master):
    m = start_master("--heartbeat-timeout", "1", workers=1)
    [pid] = m.wait_ready()
    os.kill(pid, signal.SIGSTOP)  # hangs it between tasks: no heartbeat
    try:
        wait_until(lambda: gone(pid), 10, what="the hung worker to be killed")
        [new] = m.wait_ready()
        assert new != pid
        assert m.status()["master"]["restarts"].get("hung") == 1
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass


def test_delayed_task_waits_in_the_broker(start_master, tmp_path: Path):
    m = start_master(workers=1)
    path = tmp_path / "delayed.log"
    t0 = time.time()
    task_id = m.queue.push_task({"type": "record", "params": {"path": str(path)}}, delay=1.0)
    assert m.task(task_id)["status"] == "scheduled"
    rec = m.wait_status(task_id, "succeeded")
    assert rec["started_at"] >= t0 + 1.0


def test_hard_timeout_kills_the_handlers_children_too(start_master):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "family", "params": {"key": "fam"}})
    pids = wait_until(lambda: m.queue.get_public("fam"), what="the task and its child to start")
    m.wait_status(task_id, "dead")
    wait_until(
        lambda: gone(pids["worker"]) and gone(pids["child"]),
        5,
        what="the worker and the child it spawned to be killed",
    )


def test_reject_goes_dead_at_once(start_master):
    m = start_master(workers=1)
    rec = m.wait_status(m.queue.push_task({"type": "picky", "params": {"x": 1}}), "dead")
    assert rec["attempts"] == 1
    assert rec["error"] == "rejected: params must have 'size', got ['x']"


def test_retry_exception_waits_its_delay(start_master):
    m = start_master(workers=1)
    rec = m.wait_status(m.queue.push_task({"type": "again", "params": {}}), "succeeded")
    assert rec["result"] == 2
    assert rec["errors"][0]["reason"] == "retry"
    assert rec["started_at"] - rec["errors"][0]["at"] >= 0.3


def test_result_over_the_cap_fails_with_a_clear_error(start_master):
    m = start_master("--max-result-bytes", "1000", workers=1)
    ok = m.wait_status(
        m.queue.push_task({"type": "big_result", "params": {"size": 10}}), "succeeded"
    )
    assert ok["result"] == "x" * 10
    rec = m.wait_status(m.queue.push_task({"type": "big_result", "params": {"size": 5000}}), "dead")
    assert rec["attempts"] == 1  # not retried: it would be as big again
    assert "is 5002 bytes as JSON; the limit is 1000 (max_result_bytes)" in rec["error"]
