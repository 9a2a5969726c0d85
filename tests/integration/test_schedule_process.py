"""The scheduler process for real: forked, on a real broker process and a SQLite file.

Fire lag at the due time, SIGTERM, kill -9 and restart without a lost or doubled due time, two
scheduler processes on one file, and a database URL that can never work.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.server import start_broker_process
from supervisor.client.proxy import BrokerClient
from supervisor.client.queue import Queue
from supervisor.errors import ExitCode
from supervisor.scheduling.client import Scheduler
from supervisor.scheduling.process import SchedulerProcess
from supervisor.scheduling.service import SchedulerOptions
from tests.helpers import wait_until
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(90)


class Harness:
    def __init__(self, tmp_path: Path, url: str) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="sched-")  # short: a socket path has a limit
        self.authkey = secrets.token_bytes(16)
        self.broker_pid, self.address = start_broker_process(
            address=os.path.join(self.sock_dir, "b.sock"),
            authkey=self.authkey,
            make_broker=lambda: MemoryBroker(task_types=None),
        )
        self.url = url
        self.api = Scheduler.from_url(self.url)
        self.queue = Queue(BrokerClient(self.address, self.authkey, timeout_s=10))
        self.pids: list[int] = []
        self.done: list[dict[str, Any]] = []

    def start(self, **kw: Any) -> int:
        proc = SchedulerProcess(
            database_url=kw.pop("database_url", self.url),
            address=self.address,
            authkey=self.authkey,
            **kw,
        )
        pid = proc.start()
        self.pids.append(pid)
        return pid

    def consume(self) -> list[dict[str, Any]]:
        """Run (acknowledge) everything queued now; return all tasks run so far."""
        while (task := self.queue.pop_task(timeout=0)) is not None:
            self.done.append(task)
            self.queue.task_done(task["task_id"])
        return self.done

    def wait_done(self, n: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        return wait_until(
            lambda: len(self.consume()) >= n and self.done, timeout_s, what=f"{n} scheduled tasks"
        )

    def stop(self, pid: int, sig: int = signal.SIGTERM, timeout_s: float = 10) -> int:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                self.pids.remove(pid)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        pytest.fail(f"scheduler {pid} did not exit within {timeout_s} s after signal {sig}")

    def close(self) -> None:
        for pid in [*self.pids, self.broker_pid]:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.api.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    kind = getattr(request, "param", "sqlite")
    with backend_url(kind, tmp_path) as url:
        made = Harness(tmp_path, url)
        yield made
        made.close()


sqlite_only = pytest.mark.parametrize("h", ["sqlite"], indirect=True)


def test_a_poke_wakes_the_scheduler_at_the_due_time_and_sigterm_stops_it(h: Harness) -> None:
    """Without a poke the scheduler would sleep 30 s (its longest sleep and status period
    here), so a fire close to its due time proves the change woke it. The bound is generous:
    this is a loaded 2-core CI box, not a benchmark (bench/ measures the lag)."""
    slow = SchedulerOptions(max_sleep_s=30.0, status_every_s=30.0, retry_every_s=30.0)
    pid = h.start(task_types=["report"], options=slow)
    wait_until(
        lambda: h.api.store.registered_task_types() == ["report"],
        10,
        what="the scheduler to prepare the database",
    )
    for k in range(3):  # due long before its 30-second look: the API's poke wakes it
        h.api.add_scheduler_task(
            name=f"once-{k}",
            task_type="report",
            schedule_type="once",
            execute_at=time.time() + 0.15 + 0.1 * k,
            params={"k": k},
        )
    done = h.wait_done(3)
    lags = [t["pushed_at"] - t["scheduled_at"] for t in done]
    assert all(0 <= lag < 0.5 for lag in lags), lags
    assert sorted(t["params"]["k"] for t in done) == [0, 1, 2]
    started = time.monotonic()
    assert h.stop(pid) == 0
    assert time.monotonic() - started < 2.0


@sqlite_only
def test_kill_9_between_fires_loses_and_doubles_nothing(h: Harness) -> None:
    sid = h.api.add_scheduler_task(
        name="tick",
        task_type="t",
        schedule_type="interval",
        interval_seconds=0.3,
        misfire_policy="all",
        misfire_grace_s=60,
        overlap="queue",
    )
    pid = h.start()
    h.wait_done(2)
    h.stop(pid, signal.SIGKILL)
    down_since = time.time()
    wait_until(lambda: time.time() - down_since > 1.0, 5, what="some due times to pass")
    pid = h.start()
    h.wait_done(len(h.done) + 6)
    h.stop(pid)
    h.consume()
    due = [t["scheduled_at"] for t in h.done]
    assert len(due) == len(set(due)), "a due time fired twice"
    task = h.api.get_task(sid)
    assert task is not None
    anchor = min(due)
    expected = [anchor + 0.3 * k for k in range(round((max(due) - anchor) / 0.3) + 1)]
    assert sorted(due) == pytest.approx(expected), "a due time was lost"
    assert task["run_count"] == len(due)


def test_two_scheduler_processes_on_one_file_never_double_fire(h: Harness) -> None:
    for k in range(10):
        h.api.add_scheduler_task(
            name=f"s{k}",
            task_type="t",
            schedule_type="interval",
            interval_seconds=0.25,
            overlap="queue",
        )
    pids = [h.start(), h.start()]
    h.wait_done(60, timeout_s=30)
    for pid in pids:
        assert h.stop(pid) == 0
    h.consume()
    keys = [(t["schedule_id"], t["scheduled_at"]) for t in h.done]
    assert len(keys) == len(set(keys))
    assert sum(t["run_count"] for t in h.api.list_tasks()) == len(keys)


@sqlite_only
def test_a_database_url_that_cannot_work_exits_with_usage(h: Harness) -> None:
    pid = h.start(database_url="nosuchdialect://x")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            h.pids.remove(pid)
            assert os.waitstatus_to_exitcode(status) == ExitCode.USAGE
            return
        time.sleep(0.01)
    pytest.fail("the scheduler did not exit on a bad database URL")
