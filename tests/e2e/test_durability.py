"""Durable mode: kill -9 the whole process tree at random points, restart, lose nothing."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(240)


def _kill_tree(m) -> None:
    procs = [psutil.Process(m.proc.pid), *m.descendants()]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    m.wait_exit(10)
    psutil.wait_procs(procs, timeout=10)


def _lines(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_kill9_of_the_whole_tree_loses_no_task(start_master, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'durable.db'}"
    path = tmp_path / "executions.log"
    rng = random.Random(os.getpid())
    m = start_master(workers=2, database=db)
    ids = m.queue.push_tasks(
        [{"type": "record", "params": {"path": str(path), "work_s": 0.004}} for _ in range(2000)]
    )
    for round_no in range(5):
        target = min(1900, sum(_lines(path).values()) + rng.randint(20, 250))
        wait_until(
            lambda t=target: sum(_lines(path).values()) >= t,
            60,
            what=f"round {round_no}: {target} executions",
        )
        _kill_tree(m)
        m = start_master(workers=2, database=db)
    stats = wait_until(
        lambda: (s := m.queue.broker.get_queue_stats()).get("succeeded") == 2000 and s,
        120,
        what="all 2000 tasks to succeed after the restarts",
    )
    assert stats == {"succeeded": 2000}
    runs = _lines(path)
    assert set(runs) == set(ids)  # nothing lost, nothing invented
    reruns = 0
    for task_id in ids:
        rec = m.task(task_id)
        assert rec["status"] == "succeeded"
        assert 1 <= runs[task_id] <= rec["attempts"], (task_id, runs[task_id], rec)
        if rec["attempts"] > 1:
            reruns += 1
            assert all(e["reason"] == "worker_lost" for e in rec["errors"])
    assert reruns <= 5 * 2 * 2  # at most the tasks in flight at each kill (2 workers)


def test_queued_and_delayed_tasks_survive_a_restart(start_master, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'durable.db'}"
    m = start_master("--graceful-timeout", "5", workers=1, database=db)
    delayed = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    m2 = start_master(workers=1, database=db)
    rec = m2.task(delayed)
    assert rec["status"] == "scheduled" and rec["eta"] > 0
    assert m2.queue.stats()["scheduled"] == 1


def test_memory_mode_keeps_nothing(start_master, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'mem.db'}"
    m = start_master("--durability", "none", workers=1, database=db)
    delayed = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    assert "dropped with the in-memory broker" in m.log_text()
    m2 = start_master("--durability", "none", workers=1, database=db)
    assert m2.task(delayed) is None
