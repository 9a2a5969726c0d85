"""Issue 10's performance section: supervisor on Redis against Huey 3 on the same Redis.

On a private ``redis-server`` (a free port, a temp folder, AOF ``everysec``), in one run, no-op
tasks pushed by one external producer (this process) to 2 workers:

- one at a time (push, wait for the result, repeat) and a batch push, for supervisor
  (``supervisor run --broker redis://… --workers 2``) and for Huey (``huey_consumer -w 2 -k
  process``), taken in turns, medians of ``--rounds`` rounds;
- push-to-start latency with idle workers (supervisor), p50 and p99;
- the figures' ratios: targets >= 2x Huey one at a time, >= 5x Huey batch.

Run from the repo root with the package installed and ``pip install huey``:
``python bench/bench_redis.py [--quick] [--rounds 3]``. Performance is printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import supervisor  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402

WORKERS = 2


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.0005)


@contextlib.contextmanager
def supervisor_node(url: str, prefix: str, tmp: str) -> Iterator[supervisor.Queue]:
    run_dir = os.path.join(tmp, "run")
    log = open(os.path.join(tmp, "node.log"), "wb")  # noqa: SIM115
    cmd = [
        sys.executable, "-m", "supervisor", "run", "--app", "bench.app",
        "--workers", str(WORKERS), "--run-dir", run_dir, "--broker", url,
        "--key-prefix", prefix, "--database", f"sqlite:///{tmp}/bench.db",
        "--metrics-port", "0", "--log-level", "WARNING", "--no-scheduler",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        q = supervisor.connect(broker=url, key_prefix=prefix)

        def idle() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited: {Path(tmp, 'node.log').read_text()[-2000:]}")
            workers = (q.broker.get_status().get("master") or {}).get("workers") or []
            return len(workers) == WORKERS and all(w["state"] == "idle" for w in workers)

        wait_for(idle, 30, "the node's workers")
        yield q
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


@contextlib.contextmanager
def huey_consumer(url: str, tmp: str) -> Iterator[Any]:
    env = dict(os.environ, BENCH_REDIS_URL=url, PYTHONPATH=str(ROOT))
    log = open(os.path.join(tmp, "huey.log"), "wb")  # noqa: SIM115
    exe = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
    proc = subprocess.Popen(
        [exe, "bench.huey_app.huey", "-w", str(WORKERS), "-k", "process", "-q"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.environ["BENCH_REDIS_URL"] = url
    from bench import huey_app

    huey_app.huey.storage.flush_all()
    try:
        wait_for(lambda: huey_app.noop()(blocking=True, timeout=1) == 1, 30, "huey")
        yield huey_app
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


def ours_one_at_a_time(q: supervisor.Queue, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        tid = q.push_task({"type": "noop", "params": {}})
        wait_for(lambda t=tid: (q.broker.get_task(t) or {}).get("status") == "succeeded", 10, "a")
    return n / (time.perf_counter() - start)


def ours_batch(q: supervisor.Queue, n: int) -> float:
    start = time.perf_counter()
    ids = q.push_tasks([{"type": "noop", "params": {}} for _ in range(n)])
    last = ids[-1]
    wait_for(lambda: q.broker.get_queue_stats().get("succeeded", 0) >= n, 120, "the batch")
    del last
    return n / (time.perf_counter() - start)


def ours_latency(q: supervisor.Queue, n: int) -> tuple[float, float]:
    lat = []
    for _ in range(n):
        pushed = time.time()
        tid = q.push_task({"type": "stamp", "params": {}})
        rec = wait_for(
            lambda t=tid: (r := q.broker.get_task(t)) and r["status"] == "succeeded" and r, 10, "s"
        )
        lat.append(float(rec["result"]) - pushed)
    lat.sort()
    return lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


def huey_one_at_a_time(app: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        app.noop()(blocking=True, timeout=10)
    return n / (time.perf_counter() - start)


def huey_batch(app: Any, n: int) -> float:
    start = time.perf_counter()
    results = [app.noop() for _ in range(n)]
    for r in results:
        r(blocking=True, timeout=120)
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds taken in turns (medians)")
    args = ap.parse_args()
    one, batch, lat_n = (200, 1000, 200) if args.quick else (2000, 10000, 1000)
    fig: dict[str, list[float]] = {
        "ours_one": [],
        "ours_batch": [],
        "huey_one": [],
        "huey_batch": [],
    }
    lat: tuple[float, float] = (0.0, 0.0)
    server = RedisServer()
    server.start()
    try:
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                prefix = f"b{uuid.uuid4().hex[:8]}"
                with supervisor_node(server.url, prefix, tmp) as q:
                    fig["ours_one"].append(ours_one_at_a_time(q, one))
                    fig["ours_batch"].append(ours_batch(q, batch))
                    lat = ours_latency(q, lat_n)
            with tempfile.TemporaryDirectory() as tmp, huey_consumer(server.url, tmp) as app:
                fig["huey_one"].append(huey_one_at_a_time(app, one))
                fig["huey_batch"].append(huey_batch(app, batch))
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in fig.items()}
    print(f"one at a time: ours {med['ours_one']:,.0f}/s, Huey {med['huey_one']:,.0f}/s "
          f"= {med['ours_one'] / med['huey_one']:.2f}x (target >= 2x)")  # fmt: skip
    print(f"batch: ours {med['ours_batch']:,.0f}/s, Huey {med['huey_batch']:,.0f}/s "
          f"= {med['ours_batch'] / med['huey_batch']:.2f}x (target >= 5x)")  # fmt: skip
    print(f"push-to-start latency, idle workers: p50 {lat[0]:.2f} ms, p99 {lat[1]:.2f} ms "
          "(targets 1 / 5 ms)")  # fmt: skip
    for k, v in fig.items():
        print(f"  {k}: " + ", ".join(f"{x:,.0f}" for x in v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
