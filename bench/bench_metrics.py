"""Scrape cost of /metrics: 32 workers, after 200 worker restarts, and with many task records.

    python bench/bench_metrics.py                  # the issue's figure (target: < 50 ms)
    python bench/bench_metrics.py --workers 8 --restarts 50 --scrapes 20   # quicker

It starts ``supervisor run --app tests.e2e.app --workers 32 --metrics-port 0`` from the repo
root in a tmp run folder (crash-loop breaker off, 0.05 s restart backoff cap), and times
sequential GET /metrics from this process:

1. idle: every worker ready;
2. during a crash storm: ``exit`` tasks kill their worker (os._exit), three attempts each,
   until the master counts ``--restarts`` crash restarts; then idle again;
3. with ``--records`` delayed tasks waiting in the broker (and the finished records of 1-2).

Then, in-process, ``MemoryBroker.stats()`` at 60,000 records beside the full walk it replaced.
Every wait polls with a deadline; it prints figures and always exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import connect  # noqa: E402
from supervisor.broker import base  # noqa: E402
from supervisor.broker.embedded import control  # noqa: E402
from supervisor.broker.embedded.memory import MemoryBroker  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TARGET_MS = 50.0


def poll(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_metrics: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def scrape(address: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with OPENER.open(f"http://{address}/metrics", timeout=30) as resp:
        body = resp.read()
    return time.perf_counter() - t, body


def crash_restarts(body: bytes) -> int:
    for line in body.decode().splitlines():
        if line.startswith("supervisor_worker_restarts_total{") and 'reason="crash"' in line:
            return int(float(line.split()[-1]))
    return 0


def figure(name: str, times_s: list[float], body: bytes, *, judged: bool = True) -> dict[str, Any]:
    ms = sorted(t * 1000 for t in times_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    series = sum(1 for line in body.decode().splitlines() if line and line[0] != "#")
    row = {
        "figure": name,
        "scrapes": len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": p95,
        "max_ms": ms[-1],
        "series": series,
        "bytes": len(body),
    }
    verdict = ("PASS" if p95 < TARGET_MS else "MISS") if judged else "(info: CPU busy forking)"
    print(
        f"{name:<38} {len(ms):>4} {row['p50_ms']:>8.2f} {p95:>8.2f} {ms[-1]:>8.2f} "
        f"{series:>7} {len(body):>8}  {verdict}",
        flush=True,
    )
    return row


def timed_scrapes(address: str, n: int) -> tuple[list[float], bytes]:
    times, body = [], b""
    for _ in range(n):
        t, body = scrape(address)
        times.append(t)
    return times, body


def stats_micro(records: int) -> list[dict[str, Any]]:
    """stats() with ``records`` task records in memory (half queued, half finished)."""
    b = MemoryBroker(finished_records=records)
    b.push_many(
        [{"type": "t", "params": b"p", "priority": random.randint(0, 10)} for _ in range(records)]
    )
    for _ in range(records // 2):
        b.report("worker:0", (b.pop("worker:0")["task_id"], base.SUCCEEDED, None))

    def walk() -> int:  # what stats() did before: every lane entry and every record
        with b.lock:
            n = sum(1 for lane in b.core.ready for t, s in lane if control.is_live(b.core, t, s))
            counts: dict[str, int] = {}
            for r in (*b.core.active.values(), *b.core.finished.values()):
                counts[r.status] = counts.get(r.status, 0) + 1
            return n

    out = []
    for name, fn in (("stats() now", b.stats), ("full walk (before)", walk)):
        best = min(_time(fn) for _ in range(10))
        out.append({"figure": f"{name} at {records:,} records", "best_ms": best * 1000})
        print(f"{name + f' at {records:,} records':<38} best of 10: {best * 1000:8.3f} ms")
    return out


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--restarts", type=int, default=200)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "supervisor",
            "run",
            "--app",
            "tests.e2e.app",
            "--workers",
            str(args.workers),
            "--run-dir",
            str(run_dir),
            "--database",
            f"sqlite:///{tmp}/supervisor.db",
            "--metrics-port",
            "0",
            "--crash-limit",
            "0",
            "--restart-backoff-cap",
            "0.05",
            "--log-format",
            "json",
            "--log-level",
            "ERROR",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(Path(tmp) / "master.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rows += run_figures(args, run_dir, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rows += stats_micro(60_000)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def run_figures(
    args: argparse.Namespace, run_dir: Path, proc: subprocess.Popen[bytes]
) -> list[dict[str, Any]]:
    addr_file = run_dir / "http_address"
    address = poll(
        lambda: addr_file.exists() and addr_file.read_text().strip(), 60, "RUN_DIR/http_address"
    )
    q = poll(lambda: _connect(run_dir), 60, "the broker")

    def ready() -> bool:
        assert proc.poll() is None, "the master exited"
        workers = q.broker.get_status()["master"].get("workers", [])
        return len(workers) == args.workers and all(w["state"] == "idle" for w in workers)

    poll(ready, 120, f"{args.workers} idle workers")
    print(f"{args.workers} workers, target p95 < {TARGET_MS:g} ms; times in ms", flush=True)
    print(
        f"{'figure':<38} {'n':>4} {'p50':>8} {'p95':>8} {'max':>8} {'series':>7} {'bytes':>8}",
        flush=True,
    )
    rows = [figure(f"{args.workers} workers idle", *timed_scrapes(address, args.scrapes))]

    per_task = 3  # the "exit" type: max_retries=2, each attempt kills its worker
    q.push_tasks([{"type": "exit", "params": {}}] * -(-args.restarts // per_task))
    storm: list[float] = []
    body = b""
    t0 = time.monotonic()
    while True:
        t, body = scrape(address)
        storm.append(t)
        if crash_restarts(body) >= args.restarts:
            break
        if time.monotonic() - t0 > 300:
            raise SystemExit("bench_metrics: the crash storm took over 300 s")
    rows.append(figure(f"during {args.restarts} crash restarts", storm, body, judged=False))
    poll(ready, 120, "the workers to be ready again")
    times, body = timed_scrapes(address, args.scrapes)
    rows.append(figure(f"idle after {crash_restarts(body)} restarts", times, body))

    for i in range(0, args.records, 5000):
        q.push_tasks([{"type": "noop", "params": {}, "delay": 3600}] * min(5000, args.records - i))
    rows.append(figure(f"+ {args.records:,} delayed tasks", *timed_scrapes(address, args.scrapes)))
    return rows


def _connect(run_dir: Path) -> Any:
    try:
        return connect(run_dir=str(run_dir), timeout_s=10)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
