"""Issue 12's ingest performance: messages per second through ``supervisor run --ingest``.

    python bench/bench_ingest.py                # 3 rounds of 20,000 messages (~2-3 minutes)
    python bench/bench_ingest.py --quick        # 1 round of 3,000: a smoke test, noisy ratios
    python bench/bench_ingest.py --messages 50000 --rounds 5 --json /tmp/ingest.json

Each round, in turns: a plain pika consumer (``basic_consume``, manual ``basic_ack`` per
message, the same prefetch as the ingest, JSON-decoding each body) -- the limit --, then
``supervisor run --ingest amqp://…/QUEUE`` into the embedded broker (``--durability journal``,
the default) and into Redis (a private ``redis-server``, AOF with ``appendfsync always``, so a
push is as durable as the journal's). Every figure drains a fresh queue preloaded with the same
number of persistent QueueManager-format messages (one priority, so FIFO) from the RabbitMQ at
``--rabbitmq``, timed from the first message taken to the last (the consumer's start-up is not
counted; for the node, by the broker's push times of the first and last task, the first batch
left out of the count). The node has one worker running the no-op handler as the tasks come
(``--workers``); its broker's task counts are polled every 10 ms until all are in. Medians of
the rounds, and the ratio of each median to the pika median, are printed; nothing is asserted.
The last line is a JSON summary.

``--app bench.bench_ingest:app`` is this module's: a no-op handler under each queue name in
``SV_BENCH_INGEST_QUEUES`` (the queues are fresh per figure, so the handler's name is too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from supervisor.registry import TaskRegistry  # noqa: E402

app = TaskRegistry()
for _queue in filter(None, os.environ.get("SV_BENCH_INGEST_QUEUES", "").split(",")):
    app.register(_queue, lambda params: None, timeout_s=30)

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
PREFETCH = 256  # supervisor.ingest.consumer.PREFETCH
POLL_S = 0.01
DEADLINE_S = 300.0


def _pika() -> Any:
    import pika

    return pika


def preload(url: str, queue: str, n: int) -> None:
    """Declare ``queue`` as the QueueManager does and put ``n`` persistent messages in it."""
    pika = _pika()
    from supervisor.queuemanager.amqpwire import dead_letter_queue, encode, queue_arguments

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(dead_letter_queue(queue), durable=True)
        ch.queue_declare(queue, durable=True, arguments=queue_arguments(queue))
        for i in range(n):
            body, props = encode(f"{queue}-{i}", {"n": i}, 5)  # one priority: FIFO
            ch.basic_publish("", queue, body, props)
        deadline = time.monotonic() + DEADLINE_S
        while ch.queue_declare(queue, passive=True).method.message_count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"queue {queue} did not reach {n} messages")
            conn.sleep(0.02)
    finally:
        conn.close()


def delete_queue(url: str, queue: str) -> None:
    pika = _pika()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_delete(queue)
        ch.queue_delete(f"{queue}.dead")
    finally:
        conn.close()


def plain_pika(url: str, queue: str, n: int) -> float:
    """Messages/s of a plain consumer with manual acks, first message to last."""
    pika = _pika()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    got = 0
    first = 0.0

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal got, first
        if not got:
            first = time.perf_counter()
        json.loads(body)
        ch.basic_ack(method.delivery_tag)
        got += 1

    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        ch.basic_consume(queue, on_message, auto_ack=False)
        deadline = time.monotonic() + DEADLINE_S
        while got < n:
            conn.process_data_events(time_limit=0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"plain pika consumer: {got} of {n} in {DEADLINE_S:g} s")
        elapsed = time.perf_counter() - first
    finally:
        conn.close()
    return (n - 1) / elapsed


class Node:
    """``supervisor run --ingest`` in a fresh folder (and, for Redis, a private server)."""

    def __init__(self, url: str, queue: str, *, broker: str, workers: int) -> None:
        self.tmp = tempfile.mkdtemp(prefix="supervisor-bench-ingest-")
        self.run_dir = os.path.join(self.tmp, "run")
        self.queue = queue
        self.redis: Any = None
        extra: list[str] = []
        if broker == "redis":
            from tests.redisserver import RedisServer

            self.redis = RedisServer()
            self.redis.start()
            extra = ["--broker", self.redis.url]
        self.command = [
            sys.executable, "-m", "supervisor", "run", "--app", "bench.bench_ingest:app",
            "--workers", str(workers), "--run-dir", self.run_dir,
            "--database", f"sqlite:///{self.tmp}/bench.db", "--metrics-port", "0",
            "--no-scheduler", "--log-format", "json", "--log-level", "WARNING",
            "--ingest", f"{url.rstrip('/')}/{queue}", *extra,
        ]  # fmt: skip
        env = dict(os.environ, SV_BENCH_INGEST_QUEUES=queue, PYTHONPATH=str(ROOT))
        self.log_path = os.path.join(self.tmp, "node.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.client = self._connect()

    def _connect(self) -> Any:
        import supervisor
        from supervisor.errors import SupervisorError

        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(os.path.join(self.run_dir, "address")):
                with contextlib.suppress(SupervisorError, OSError):
                    q = supervisor.connect(run_dir=self.run_dir, timeout_s=30.0)
                    q.broker.ping()
                    return q
            if time.monotonic() > deadline:
                raise RuntimeError(f"no broker within 30 s:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-3000:]

    def known(self) -> int:
        """Tasks the broker has a record of (all statuses)."""
        return sum(self.client.broker.get_queue_stats().values())

    def ingested(self, n: int) -> float:
        """Messages/s, from the broker's own push times: the first message's task (pushed
        with the first batch) to the last one's. The span leaves out the first batch's
        arrival, so its messages (at most PREFETCH) are left out of the count too."""
        deadline = time.monotonic() + DEADLINE_S
        while (k := self.known()) < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{k} of {n} ingested:\n{self.log_tail()}")
            time.sleep(POLL_S)
        first = self.client.get_task(f"{self.queue}-0")["pushed_at"]
        last = self.client.get_task(f"{self.queue}-{n - 1}")["pushed_at"]
        return (n - PREFETCH) / (last - first)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            close = getattr(self.client.broker, "close", None)
            if close is not None:
                close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def figure(kind: str, url: str, n: int, workers: int) -> float:
    queue = f"bench-ingest-{uuid.uuid4().hex[:10]}"
    preload(url, queue, n)
    try:
        if kind == "pika":
            return plain_pika(url, queue, n)
        node = Node(url, queue, broker=kind, workers=workers)
        try:
            return node.ingested(n)
        finally:
            node.close()
    finally:
        delete_queue(url, queue)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rabbitmq", default=RABBITMQ, help="RabbitMQ URL (vhost /)")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 round of 3,000 messages")
    p.add_argument("--json", help="also write the summary to this file")
    args = p.parse_args(argv)
    n, rounds = (3000, 1) if args.quick else (args.messages, args.rounds)
    from bench import machine

    print(f"machine: {machine.describe()}")
    print(f"{rounds} round(s) of {n} messages, prefetch {PREFETCH}, {args.workers} worker(s)")
    kinds = ("pika", "embedded", "redis")
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds:  # in turns, so a load spike hits one round of each, not one figure
            rate = figure(kind, args.rabbitmq, n, args.workers)
            runs[kind].append(rate)
            print(f"round {r + 1} {kind:>8}: {rate:8.0f} msg/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print()
    print(f"plain pika consumer, manual acks (the limit): {med['pika']:8.0f} msg/s")
    for kind in ("embedded", "redis"):
        ratio = med[kind] / med["pika"]
        verdict = "PASS" if ratio >= 0.5 else "MISS"
        print(
            f"--ingest into {kind:>8}: {med[kind]:8.0f} msg/s = {ratio:.2f}x the limit "
            f"(target >= 0.5x: {verdict}); rounds: {', '.join(f'{x:.0f}' for x in runs[kind])}"
        )
    summary = {
        "messages": n,
        "rounds": rounds,
        "workers": args.workers,
        "prefetch": PREFETCH,
        "runs": runs,
        "median": med,
        "ratio": {k: med[k] / med["pika"] for k in ("embedded", "redis")},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
