"""A task's life is readable from the broker's log: each failed attempt says what happens next,
and a task that goes dead has a line of its own at ERROR."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from supervisor.broker import base
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.registry import TaskOptions

pytestmark = pytest.mark.timeout(30)
W = "worker:0:1"


@pytest.fixture
def lines() -> Iterator[list[tuple[str, str]]]:
    out: list[tuple[str, str]] = []
    logger.enable("supervisor")
    sink = logger.add(lambda m: out.append((m.record["level"].name, m.record["message"])))
    yield out
    logger.remove(sink)


def broker(clock: Any) -> MemoryBroker:
    opts = TaskOptions(max_retries=2, backoff_base_s=2.0, backoff_cap_s=2.0, timeout_s=5.0)
    return MemoryBroker(clock=clock, rng=random.Random(1), task_types={"flaky": opts})


def test_a_retried_attempt_says_when_and_which_attempt(clock, lines) -> None:
    b = broker(clock)
    tid = b.push({"type": "flaky", "params": b"", "task_id": "t-1"})
    b.report(W, (b.pop(W)["task_id"], "failed", {"reason": "error", "error": "ValueError: x"}))
    eta = b.get_task(tid)["eta"] - clock()
    assert (
        "WARNING",
        f"task t-1 (flaky) failed (error: ValueError: x), attempt 1 of 3; retrying in {eta:.1f} s",
    ) in lines


def test_a_task_that_goes_dead_has_a_line_of_its_own(clock, lines) -> None:
    b = broker(clock)
    b.push({"type": "flaky", "params": b"", "task_id": "t-2"})
    for _ in range(3):
        clock.advance(10)
        b.pop(W)
        b.release_consumer(W, base.REASON_TIMEOUT, error="passed its hard timeout of 5 s")
    dead = [m for level, m in lines if level == "ERROR"]
    assert dead == [
        "task t-2 (flaky) is dead after 3 attempts: timeout: passed its hard timeout of 5 s"
    ]
    assert sum("retrying in" in m for _, m in lines) == 2


def test_a_shutdown_requeue_is_not_a_failure_line(clock, lines) -> None:
    b = broker(clock)
    b.push({"type": "flaky", "params": b""})
    b.pop(W)
    b.release_consumer(W, base.REASON_SHUTDOWN)
    assert not [m for level, m in lines if level in ("WARNING", "ERROR")]
