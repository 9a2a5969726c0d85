"""One measurement each, for ours, Huey and Celery on the same Redis (no-op tasks, one external
producer: this process).

* ``one``: ``n`` pushes, one call per task, without waiting in between; the clock runs from the
  first push until all ``n`` have finished (issue 2's definition of "one at a time").
* ``serial``: push one task, wait for its result, push the next (one producer round trip each).
* ``batch``: ``n`` tasks pushed in the peer's bulk form (ours: ``push_tasks`` of ``batch`` tasks;
  Celery: one ``group``; Huey has no bulk push, so its fastest form is one call per task), the
  clock until all have finished.
* ``latency``: push one ``stamp`` task to idle workers (a pause after each, so they are parked
  in their blocking wait), latency = the handler's ``time.time()`` - this process's just
  before the push (one machine, one wall clock); ours also gives the record's ``started_at``.
* ``cpu``: ``count`` x ``demo.cpu({"n": n})`` (~10 ms each) pushed at once, against
  ``multiprocessing.Pool(2)`` (``bench.baselines.pool_cpu``).

Finishing is watched the cheapest way each peer offers, never by spinning (this process shares
the 2 CPUs with the workers): ours, an HGET of the cumulative ``finished`` counter the scripts
keep (``{p}:counts``; the records themselves are capped) every 5 ms, and for one task, Redis
keyspace notifications on the result hash (switched on for that figure only, on this private
Redis) then ``get_task``; Huey, the size of its result hash every 5 ms, and for one task its
``notify_result`` BLPOP; Celery, its result set (Redis pub/sub).
"""

from __future__ import annotations

import random
import time
from typing import Any

import supervisor
from bench.redis_procs import wait_for

WATCH_PAUSE_S = 0.005
PARK_S = (0.002, 0.004)  # pause between latency samples: the workers are back in BLPOP
SEP = "\x1f"


def _finished(q: supervisor.Queue, task_type: str) -> int:
    """The cumulative count of ``task_type`` tasks that succeeded (one HGET)."""
    broker = q.broker
    field = SEP.join(("finished", task_type, "succeeded"))
    return int(broker._client.hget(broker._keys.name("counts"), field) or 0)


def _wait_finished(q: supervisor.Queue, task_type: str, target: int, timeout_s: float) -> None:
    wait_for(lambda: _finished(q, task_type) >= target, timeout_s, f"{task_type} x{target}",
             WATCH_PAUSE_S)  # fmt: skip


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0-100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class ResultWatch:
    """Wait for one of our tasks to succeed without polling: keyspace notifications of hash
    commands on the result hash (``notify-keyspace-events Kh`` while the watch is open)."""

    def __init__(self, q: supervisor.Queue) -> None:
        self.q = q
        client = q.broker._client
        self._old = client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self.pubsub.subscribe(f"__keyspace@{db}__:{q.broker._keys.name('result')}")
        wait_for(lambda: self.pubsub.subscribed, 5, "the subscription")

    def wait(self, tid: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            rec = self.q.broker.get_task(tid)
            if rec and rec["status"] == "succeeded":
                return rec
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for task {tid}")
            self.pubsub.get_message(timeout=0.05)
            while self.pubsub.get_message(timeout=0):  # drain: one get_task for a burst
                pass

    def close(self) -> None:
        self.pubsub.close()
        self.q.broker._client.config_set("notify-keyspace-events", self._old or "")


# -- ours ------------------------------------------------------------------------------------
def ours_one(q: supervisor.Queue, n: int) -> float:
    base = _finished(q, "noop")
    task = {"type": "noop", "params": {}}
    start = time.perf_counter()
    for _ in range(n):
        q.push_task(task)
    _wait_finished(q, "noop", base + n, 120)
    return n / (time.perf_counter() - start)


def ours_batch(q: supervisor.Queue, n: int, batch: int) -> float:
    base = _finished(q, "noop")
    tasks = [{"type": "noop", "params": {}} for _ in range(batch)]
    start = time.perf_counter()
    for i in range(0, n, batch):
        q.push_tasks(tasks[: min(batch, n - i)])
    _wait_finished(q, "noop", base + n, 120)
    return n / (time.perf_counter() - start)


def ours_serial(q: supervisor.Queue, n: int) -> float:
    watch = ResultWatch(q)
    try:
        start = time.perf_counter()
        for _ in range(n):
            watch.wait(q.push_task({"type": "noop", "params": {}}))
        return n / (time.perf_counter() - start)
    finally:
        watch.close()


def ours_latency(q: supervisor.Queue, n: int) -> dict[str, list[float]]:
    handler, started = [], []
    watch = ResultWatch(q)
    try:
        for _ in range(n):
            time.sleep(random.uniform(*PARK_S))
            pushed = time.time()
            rec = watch.wait(q.push_task({"type": "stamp", "params": {}}))
            handler.append((float(rec["result"]) - pushed) * 1000)
            started.append((float(rec["started_at"]) - pushed) * 1000)
    finally:
        watch.close()
    return {"handler_ms": handler, "started_ms": started}


def ours_cpu(q: supervisor.Queue, count: int, cpu_n: int) -> float:
    base = _finished(q, "cpu")
    start = time.perf_counter()
    q.push_tasks([{"type": "cpu", "params": {"n": cpu_n}} for _ in range(count)])
    _wait_finished(q, "cpu", base + count, 300)
    return count / (time.perf_counter() - start)


# -- Huey ------------------------------------------------------------------------------------
def huey_one(app: Any, n: int) -> float:
    """Also Huey's batch figure: it has no bulk push."""
    storage = app.huey.storage
    storage.flush_results()
    start = time.perf_counter()
    for _ in range(n):
        app.noop()
    wait_for(lambda: storage.result_store_size() >= n, 120, "huey tasks", WATCH_PAUSE_S)
    elapsed = time.perf_counter() - start
    storage.flush_results()
    return n / elapsed


def huey_serial(app: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        app.noop()(blocking=True, timeout=10)
    return n / (time.perf_counter() - start)


def huey_latency(app: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        time.sleep(random.uniform(*PARK_S))
        pushed = time.time()
        out.append((app.stamp()(blocking=True, timeout=10) - pushed) * 1000)
    return out


# -- Celery ----------------------------------------------------------------------------------
def celery_one(app: Any, n: int) -> float:
    from celery.result import ResultSet

    start = time.perf_counter()
    results = [app.noop.delay() for _ in range(n)]
    ResultSet(results).get(timeout=120)
    return n / (time.perf_counter() - start)


def celery_batch(app: Any, n: int) -> float:
    from celery import group

    start = time.perf_counter()
    group(app.noop.s() for _ in range(n)).apply_async().get(timeout=120)
    return n / (time.perf_counter() - start)


def celery_serial(app: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        app.noop.delay().get(timeout=10)
    return n / (time.perf_counter() - start)


def celery_latency(app: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        time.sleep(random.uniform(*PARK_S))
        pushed = time.time()
        out.append((app.stamp.delay().get(timeout=10) - pushed) * 1000)
    return out
