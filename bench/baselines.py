"""The baselines, measured in the same run as the supervisor: what this machine allows.

* ``multiprocessing.Pool(2)``: the limit for forked workers that get work over a pipe.
* a raw ``multiprocess`` manager queue, 1 producer and 2 consumer processes: the limit of any
  design that spends one manager call per task (the stdlib manager is measured too, for scale).

Both run the demo's own handlers (``supervisor.demo.noop`` and ``supervisor.demo.cpu``).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from supervisor.demo import cpu, noop

WORKERS = 2
_CONSUMER_READY_S = 30.0
_DRAIN_S = 120.0


def calibrate_cpu_n(target_s: float = 0.010, probe_n: int = 200_000, rounds: int = 7) -> int:
    """The ``n`` for which ``demo.cpu({"n": n})`` takes about ``target_s`` here (median)."""
    cpu({"n": probe_n})  # warm up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        cpu({"n": probe_n})
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return max(1_000, int(round(probe_n * target_s / median, -3)))


def time_cpu_call(n: int, rounds: int = 7) -> float:
    """Median seconds of one ``demo.cpu({"n": n})`` call in this process."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        cpu({"n": n})
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _pool_noop(_: int) -> None:
    return noop({})


def _pool_cpu(n: int) -> int:
    return cpu({"n": n})


def pool_noop(count: int, *, chunksize: int | None) -> float:
    """Tasks/s of ``count`` no-op calls on ``Pool(2)``.

    ``chunksize=1``: ``imap_unordered``, one task per pipe message (the fair comparison with
    one task per broker call). ``None``: ``Pool.map`` with its default chunksize.
    """
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(_pool_noop, range(WORKERS * 10), chunksize=1)  # workers up and warm
        t0 = time.perf_counter()
        if chunksize is None:
            pool.map(_pool_noop, range(count))
        else:
            for _ in pool.imap_unordered(_pool_noop, range(count), chunksize=chunksize):
                pass
        elapsed = time.perf_counter() - t0
    return count / elapsed


def pool_default_chunksize(count: int) -> int:
    """What ``Pool.map`` picks for ``count`` items on 2 workers (its own formula)."""
    chunksize, extra = divmod(count, WORKERS * 4)
    return chunksize + 1 if extra else chunksize


def pool_cpu(count: int, n: int) -> float:
    """Tasks/s of ``count`` ``demo.cpu`` calls on ``Pool(2)``, one task per message."""
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(_pool_noop, range(WORKERS * 10), chunksize=1)
        t0 = time.perf_counter()
        for _ in pool.imap_unordered(_pool_cpu, [n] * count, chunksize=1):
            pass
        elapsed = time.perf_counter() - t0
    return count / elapsed


def _consume(tasks: Any, ready: Any, done: Any) -> None:
    """A consumer process: one manager call per item, as a worker of that design would."""
    ready.put(True)
    got = 0
    while True:
        item = tasks.get()
        if item is None:
            break
        noop(item["params"])
        got += 1
    done.put(got)


def manager_queue(count: int, *, flavor: str = "multiprocess") -> float:
    """Tasks/s end to end through a manager queue: 1 producer, 2 consumer processes.

    The clock runs from the first ``put`` until both consumers have taken every item (each
    reports on a second queue after its stop sentinel). Items are small task-like dicts.
    """
    if flavor == "multiprocess":
        import multiprocess as mp
    else:
        mp = multiprocessing
    with mp.Manager() as manager:
        tasks, ready, done = manager.Queue(), manager.Queue(), manager.Queue()
        consumers = [
            mp.Process(target=_consume, args=(tasks, ready, done), daemon=True)
            for _ in range(WORKERS)
        ]
        for c in consumers:
            c.start()
        try:
            for _ in consumers:
                ready.get(timeout=_CONSUMER_READY_S)
            item = {"type": "noop", "params": {}}
            t0 = time.perf_counter()
            for _ in range(count):
                tasks.put(item)
            for _ in consumers:
                tasks.put(None)
            got = sum(done.get(timeout=_DRAIN_S) for _ in consumers)
            elapsed = time.perf_counter() - t0
        finally:
            for c in consumers:
                c.join(timeout=10)
                if c.is_alive():
                    c.kill()
                    c.join(timeout=10)
    if got != count:
        raise RuntimeError(f"manager queue: consumers took {got} items, expected {count}")
    return count / elapsed
