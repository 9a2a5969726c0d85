"""The Celery 5 app the Redis benchmark compares against, on the benchmark's Redis.

``celery -A bench.celery_app worker -c 2 -P prefork -O fair`` runs two prefork worker
processes, as our node runs two workers. Redis is both the broker and the result backend
(results are kept, as ours and Huey's are). Acknowledgement is Celery's default (early: a task is
acked when a worker process takes it) unless ``BENCH_CELERY_ACKS_LATE=1``; the prefetch
multiplier is the default (4). The URL and queue come from ``BENCH_REDIS_URL`` and
``BENCH_CELERY_QUEUE``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench")


def configure(url: str, queue: str, *, acks_late: bool = False) -> None:
    """Point the app (in this process or a worker's) at ``url`` and ``queue``."""
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_default_queue=queue,
        task_acks_late=acks_late,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )


configure(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench"),
    acks_late=os.environ.get("BENCH_CELERY_ACKS_LATE") == "1",
)


@app.task(name="bench.noop")
def noop() -> int:
    return 1


@app.task(name="bench.stamp")
def stamp() -> float:
    """The wall clock when the task started (epoch seconds), for push-to-start latency."""
    return time.time()
