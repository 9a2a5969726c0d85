"""The master's log tells a worker's story: a hard-timeout kill and a crash, each with its
replacement and the new pid, in stable slots 0..N-1; successes at INFO only when asked."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import Master
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def lines(m: Master, level: str | None = None) -> list[dict[str, Any]]:
    return [r for r in m.logs() if level is None or r.get("level") == level]


def find(m: Master, pattern: str, level: str) -> list[re.Match[str]]:
    """Matches of ``pattern`` (the whole message) among the lines at ``level``."""
    rx = re.compile(pattern)
    return [
        match for r in lines(m, level) if (match := rx.fullmatch(r.get("message", ""))) is not None
    ]


def wait_find(m: Master, pattern: str, level: str, n: int = 1) -> list[re.Match[str]]:
    return wait_until(
        lambda: (found := find(m, pattern, level)) and len(found) >= n and found,
        20,
        what=f"{n} {level} line(s) matching {pattern!r}",
    )


def test_a_hard_timeout_kill_and_its_replacement_are_logged_with_the_new_pid(start_master):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "sleep", "params": {"key": "pid"}})
    pid = wait_until(lambda: m.queue.get_public("pid"), what="the task to start")
    m.wait_status(task_id, "dead")
    wait_find(
        m,
        rf"worker 0 \(pid {pid}\) killed: task {task_id} \(sleep\) passed its hard timeout "
        r"of 1 s",
        "WARNING",
    )
    [replaced] = wait_find(
        m, rf"worker 0 replaced: new pid (\d+) \(was {pid}, killed for a hard timeout\)", "INFO"
    )
    new = int(replaced.group(1))
    assert m.wait_ready() == [new]
    # the master's words are about the worker; the old "task released from worker:0:<pid>" is gone
    assert not [r for r in lines(m) if "released from worker:" in r.get("message", "")]


def test_a_crash_and_its_replacement_are_logged_and_slots_stay_within_0_to_n_minus_1(
    start_master,
):
    m = start_master(workers=2)
    task_id = m.queue.push_task({"type": "exit", "params": {"how": "kill"}})
    rec = m.wait_status(task_id, "dead", timeout_s=30)
    assert rec["attempts"] == 3
    died = wait_find(
        m,
        rf"worker ([01]) \(pid (\d+)\) died \(signal 9 \(SIGKILL\)\) while running task "
        rf"{task_id} \(exit\)",
        "WARNING",
        n=3,
    )
    for match in died:
        slot, pid = match.group(1), match.group(2)
        [rep] = wait_find(
            m, rf"worker {slot} replaced: new pid (\d+) \(was {pid}, died \(.*\)\)", "INFO"
        )
        assert int(rep.group(1)) != int(pid)
    pids = m.wait_ready()
    workers = m.status()["master"]["workers"]
    assert sorted(w["slot"] for w in workers) == [0, 1]
    assert set(pids) == {w["pid"] for w in workers}
    slots = {r["worker"] for r in lines(m) if "worker" in r}
    assert slots <= {0, 1, "0", "1"}, f"slots outside 0..1 in the log: {slots}"


def _run_noops(m: Master, n: int = 3) -> list[str]:
    ids = m.queue.push_tasks([{"type": "noop", "params": {}} for _ in range(n)])
    wait_until(
        lambda: all(m.task(t)["status"] == "succeeded" for t in ids), 20, what="noops to succeed"
    )
    return ids


def test_successes_are_not_logged_at_info_by_default(start_master):
    m = start_master(workers=1)  # the e2e masters log at DEBUG: the line is there, at DEBUG
    ids = _run_noops(m)
    for task_id in ids:
        wait_find(m, rf"task {task_id} \(noop\) succeeded in \d+\.\d{{3}} s", "DEBUG")
    assert not [r for r in lines(m, "INFO") if " succeeded in " in r.get("message", "")]


def test_log_successes_logs_each_success_at_info_with_its_duration(start_master):
    m = start_master("--log-successes", workers=1)
    for task_id in _run_noops(m):
        wait_find(m, rf"task {task_id} \(noop\) succeeded in \d+\.\d{{3}} s", "INFO")
