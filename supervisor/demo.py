"""The demo app: ``supervisor run --app supervisor.demo --log-successes``.

Within its first half minute the log tells every part of a task's life: successes (``cpu``),
failed attempts that are retried (``flaky``, which fails at random and mostly succeeds on a later
attempt, now and then runs out of attempts and goes dead), and a task that ignores its soft
timeout until the master kills its worker at the hard timeout and forks a replacement (``stuck``,
retried once, then dead).

The producer is a declared schedule, :data:`SCHEDULES` (``demo-producer``: a ``produce`` task
every :data:`PRODUCE_EVERY_S` seconds), not a task that re-queues itself. Schedules are upserted
by name at every start, and ``max_instances=1`` keeps at most one ``produce`` task queued or
running, so however often the demo is restarted on the same database there is exactly one
producer. It needs the scheduler: with ``--no-scheduler`` the demo waits for tasks pushed by hand.
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

PRODUCER_SCHEDULE = "demo-producer"
PRODUCE_EVERY_S = 2.0
# At most one ``stuck`` task per this many seconds, the first one in the first batch: its two
# hard-timeout kills each cost a worker for ``stuck``'s timeout_s, which should not crowd out
# the rest of the demo.
STUCK_EVERY_S = 20.0
STUCK_KEY = "demo:stuck-pushed"

SCHEDULES = [
    dict(
        name=PRODUCER_SCHEDULE,
        task_type="produce",
        schedule_type="interval",
        interval_seconds=PRODUCE_EVERY_S,
        params={"batch": 4},
        priority=8,
        max_instances=1,
        overlap="skip",
        description="the demo's producer: a mixed batch of tasks every 2 s",
    )
]


@app.task("cpu", timeout_s=30)
def cpu(params: dict[str, Any]) -> int:
    """Sum of squares below ``n``: about 10 ms of CPU for n=200_000."""
    n = int(params.get("n", 200_000))
    return sum(i * i for i in range(n))


@app.task("flaky", max_retries=3, backoff_base_s=0.5, backoff_cap_s=2)
def flaky(params: dict[str, Any]) -> str:
    """Fails with probability ``p`` (default 0.5) on each attempt; dead after 4 failures."""
    task = current_task()
    if random.random() < float(params.get("p", 0.5)):
        raise RuntimeError(f"flaky failure on attempt {task.attempt if task else '?'}")
    return "ok"


@app.task("stuck", timeout_s=3, soft_timeout_s=1, max_retries=1, backoff_base_s=0.5)
def stuck(params: dict[str, Any]) -> None:
    """Ignores its soft timeout and sleeps on until the master kills it (each attempt)."""
    deadline = time.monotonic() + float(params.get("seconds", 60))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except Exception:
            log.info("stuck task ignores its soft timeout")


@app.task("noop", timeout_s=10)
def noop(params: dict[str, Any]) -> None:
    """Does nothing (for benchmarks)."""
    return None


@app.task("produce", timeout_s=10, priority=8)
def produce(params: dict[str, Any]) -> int:
    """Push one mixed batch: ``batch`` cpu tasks, half as many flaky ones and, at most once per
    :data:`STUCK_EVERY_S` (remembered in the public store), a stuck one. Returns how many."""
    from supervisor.client.seed import get_queue

    q = get_queue()
    batch = int(params.get("batch", 4))
    tasks: list[dict[str, Any]] = [
        {"type": "cpu", "params": {"n": random.randint(100_000, 400_000)}} for _ in range(batch)
    ]
    tasks += [{"type": "flaky", "params": {"p": 0.5}, "priority": 6} for _ in range(batch // 2)]
    if q.get_public(STUCK_KEY) is None:
        q.set_public(STUCK_KEY, time.time(), ttl=STUCK_EVERY_S)
        tasks.append({"type": "stuck", "params": {}, "priority": 2})
    q.push_tasks(tasks)
    return len(tasks)
