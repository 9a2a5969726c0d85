"""A worker's task is released even when the broker does not answer the first time."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from loguru import logger

from supervisor.errors import BrokerError
from supervisor.master.pool import WorkerPool
from supervisor.master.scoreboard import Scoreboard, clip_id

pytestmark = pytest.mark.timeout(30)


class FlakyClient:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[Any, ...]] = []

    def release_consumer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("release_consumer", *args))
        if self.failures:
            self.failures -= 1
            raise BrokerError("broker call release_consumer failed: timed out")
        return "task-1"


def _pool(broker: Any, fork: Any = None, workers: int = 1) -> WorkerPool:
    from supervisor.config import Settings

    settings = dataclasses.replace(Settings.defaults(), workers=workers)
    return WorkerPool(
        settings=settings,
        broker=broker,
        scoreboard=Scoreboard(2),
        make_worker=lambda slot: None,
        fork=fork or (lambda child: 0),
        kill=lambda pid, sig: None,
    )


def test_a_failed_release_is_kept_and_retried_on_the_next_tick():
    pool = _pool(FlakyClient(failures=1))
    pool.client = pool.broker  # type: ignore[attr-defined]
    pool.log = logger
    pool.pending_releases = [("worker:0:42", "worker_lost", "worker lost (signal 9)", 137)]
    pool.release_pending()
    assert pool.pending_releases  # kept: nothing else would ever give the task back
    pool.release_pending()
    assert pool.pending_releases == []
    assert [c[:3] for c in pool.client.calls] == [  # type: ignore[attr-defined]
        ("release_consumer", "worker:0:42", "worker_lost")
    ] * 2


def test_the_scoreboard_keeps_a_comparable_prefix_of_long_task_ids():
    board = Scoreboard(1)
    long_id = "x" * 150 + "é"
    board.reset(0, 1, 0.0)
    board.begin_task(0, long_id, "t", 0.0, 1.0)
    assert board.read(0).task_id == clip_id(long_id) == "x" * 100


def test_a_failed_fork_backs_the_slot_off_instead_of_killing_the_master():
    def no_fork(child: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    pool = _pool(FlakyClient(failures=0), fork=no_fork, workers=1)
    assert pool.spawn(0, now=100.0) is None
    assert pool.workers == {} and pool.slots[0].spawn_after > 100.0
    pool.manage(now=100.0)  # still backing off: no new attempt, no exception
    assert pool.workers == {}
    first = pool.slots[0].spawn_after
    pool.manage(now=first)  # due: tries again, fails again, backs off longer
    assert pool.slots[0].spawn_after - first > first - 100.0 - 1e-9


def test_a_failed_scheduler_fork_is_retried_after_a_backoff():
    from supervisor.master.scheduler_handle import SchedulerChild

    class NoFork:
        def start(self) -> int:
            raise BlockingIOError(11, "Resource temporarily unavailable")

    child = SchedulerChild(NoFork)
    assert child.start(now=50.0) == 0
    assert child.pid == 0 and child.spawn_after is not None and child.spawn_after > 50.0
    assert child.next_wake(50.0) == child.spawn_after - 50.0
