"""The demo app: ``supervisor run --app supervisor.demo``.

Four task types show what the supervisor does: ``cpu`` (CPU-bound work), ``flaky`` (fails at
random and succeeds on retry), ``stuck`` (exceeds its soft and then its hard timeout: the worker
is killed and replaced) and ``produce`` (a producer that keeps them coming, re-queuing itself).
"""

from __future__ import annotations

import random
import time
from typing import Any

from loguru import logger

from supervisor.registry import TaskRegistry
from supervisor.worker.context import current_task

app = TaskRegistry()
log = logger.bind(component="demo")


@app.task("cpu", timeout_s=30)
def cpu(params: dict[str, Any]) -> int:
    """Sum of squares below ``n``: about 10 ms of CPU for n=200_000."""
    n = int(params.get("n", 200_000))
    return sum(i * i for i in range(n))


@app.task("flaky", max_retries=5, backoff_base_s=0.5, backoff_cap_s=5)
def flaky(params: dict[str, Any]) -> str:
    """Fails with probability ``p`` (default 0.5) on each attempt."""
    task = current_task()
    if random.random() < float(params.get("p", 0.5)):
        raise RuntimeError(f"flaky failure on attempt {task.attempt if task else '?'}")
    return "ok"


@app.task("stuck", timeout_s=3, soft_timeout_s=1, max_retries=1, backoff_base_s=1)
def stuck(params: dict[str, Any]) -> None:
    """Ignores its soft timeout and spins in a loop until the master kills it."""
    deadline = time.monotonic() + float(params.get("seconds", 60))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except Exception:
            log.warning("stuck task ignores its soft timeout")


@app.task("noop", timeout_s=10)
def noop(params: dict[str, Any]) -> None:
    """Does nothing (for benchmarks)."""
    return None


@app.task("produce", timeout_s=10, priority=8)
def produce(params: dict[str, Any]) -> int:
    """Push a mixed batch, then re-queue itself ``every`` seconds later (``rounds`` times)."""
    from supervisor.client.seed import get_queue

    q = get_queue()
    batch = int(params.get("batch", 10))
    tasks: list[dict[str, Any]] = [{"type": "cpu", "params": {"n": 200_000}} for _ in range(batch)]
    tasks += [{"type": "flaky", "params": {"p": 0.5}, "priority": 6} for _ in range(batch // 2)]
    if random.random() < 0.2:
        tasks.append({"type": "stuck", "params": {}, "priority": 2})
    q.push_tasks(tasks)
    rounds = int(params.get("rounds", 0))  # 0: forever
    if rounds != 1:
        q.push_task(
            {"type": "produce", "params": {**params, "rounds": max(0, rounds - 1)}},
            delay=float(params.get("every", 2.0)),
        )
    return len(tasks)


@app.on_master_start
def start_producer(queue: Any) -> None:
    queue.push_task({"type": "produce", "params": {"batch": 10, "every": 2.0}})
