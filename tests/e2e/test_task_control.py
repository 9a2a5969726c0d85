"""Query and control: cancel (queued, delayed, running), retry, unique keys, the tasks CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, gone
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def _cli(m, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--run-dir", str(m.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_cancel_queued_and_delayed_tasks_removes_them_at_once(start_master):
    m = start_master(workers=1)
    m.queue.push_task({"type": "long", "params": {"seconds": 5, "key": "busy"}})
    wait_until(lambda: m.queue.get_public("busy"), what="the worker to be busy")
    queued = m.queue.push_task({"type": "noop", "params": {}})
    delayed = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)
    assert m.queue.cancel_task(queued) == "cancelled"
    assert m.queue.cancel_task(delayed) == "cancelled"
    assert m.task(queued)["status"] == "cancelled" and m.task(delayed)["status"] == "cancelled"
    assert m.queue.cancel_task(queued) == "finished"
    assert m.queue.cancel_task("no-such-task") == "unknown"
    assert m.queue.stats()["scheduled"] == 0


def test_cancel_running_task_that_cooperates(start_master):
    m = start_master("--cancel-grace", "30", workers=1)
    task_id = m.queue.push_task({"type": "coop", "params": {"key": "coop"}})
    pid = wait_until(lambda: m.queue.get_public("coop"), what="the task to start")
    assert m.queue.cancel_task(task_id) == "cancelling"
    rec = m.wait_status(task_id, "cancelled")
    assert m.queue.get_public("coop:cleanup") is True
    assert rec["attempts"] == 1
    assert not gone(pid)  # the worker lives on: nobody had to kill it


def test_cancel_running_task_that_ignores_it_kills_its_worker(start_master):
    m = start_master("--cancel-grace", "0.5", workers=1)
    task_id = m.queue.push_task({"type": "stubborn", "params": {"key": "stub"}})
    pid = wait_until(lambda: m.queue.get_public("stub"), what="the task to start")
    out = _cli(m, "tasks", "cancel", task_id)
    assert out.returncode == 0 and "cancelling" in out.stdout
    rec = m.wait_status(task_id, "cancelled")
    assert rec["attempts"] == 1  # not retried
    wait_until(lambda: gone(pid), what="the stubborn worker to be killed")
    m.wait_ready()
    assert m.status()["master"]["restarts"].get("cancelled") == 1


UNIQUE_PUSHER = """
import json, sys
from supervisor import connect
q = connect(run_dir=sys.argv[1])
print(json.dumps([q.push_task({"type": "long", "params": {"seconds": 0.5, "key": "u"},
                                "unique_key": "report-42"}) for _ in range(20)]))
"""


def test_unique_key_under_concurrent_pushes_from_several_processes(start_master):
    m = start_master(workers=1)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UNIQUE_PUSHER, str(m.run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        for _ in range(4)
    ]
    ids = set()
    results = [p.communicate(timeout=60) for p in procs]  # reap all before asserting
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        ids.update(json.loads(out))
    assert len(ids) == 1  # 80 pushes, one task
    (task_id,) = ids
    m.wait_status(task_id, "succeeded")
    again = m.queue.push_task({"type": "noop", "params": {}, "unique_key": "report-42"})
    assert again != task_id  # the key is free once the task finished


def test_tasks_cli_list_show_stats_purge(start_master, tmp_path: Path):
    m = start_master(workers=1)
    ok = [m.queue.push_task({"type": "noop", "params": {"i": i}}) for i in range(3)]
    bad = m.queue.push_task({"type": "fail", "params": {"why": "x"}})
    for t in ok:
        m.wait_status(t, "succeeded")
    m.wait_status(bad, "dead")
    listed = json.loads(_cli(m, "tasks", "list", "--status", "succeeded", "--json").stdout)
    assert {r["task_id"] for r in listed} == set(ok)
    assert listed[0]["params"] == {"i": 2}  # newest first, params decoded
    table = _cli(m, "tasks", "list", "--type", "fail")
    assert bad in table.stdout and "ValueError" in table.stdout
    stats = json.loads(_cli(m, "tasks", "stats", "--json").stdout)
    assert stats["succeeded"] == 3 and stats["dead"] == 1
    assert _cli(m, "tasks", "show", "nope").returncode == 1
    out = _cli(m, "tasks", "purge", "--status", "succeeded", "--older-than", "0s")
    assert out.returncode == 0 and "purged 3 succeeded" in out.stdout
    assert m.task(ok[0]) is None
    assert _cli(m, "tasks", "list", "--since", "yesterday-ish").returncode == 2
    retried = _cli(m, "tasks", "retry", bad)
    assert retried.returncode == 0
    assert m.wait_status(bad, "dead")["attempts"] == 3
