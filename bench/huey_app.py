"""The Huey 3 apps the Redis benchmark compares against, on the benchmark's Redis.

``huey_consumer bench.huey_app.huey_plain -w 2 -k process`` runs two worker processes, as our
node runs two workers. Huey's fastest Redis setup is used for each figure: blocking dequeue
(BRPOP) always; for the figures that wait on each result (serial, latency),
``huey_notify`` (``notify_result=True``: the producer blocks on a per-task list with BLPOP
instead of polling with a backoff that starts at 50 ms); for the throughput figures,
``huey_plain`` (no notification, which would cost each task an extra pipelined LPUSH+EXPIRE).
The Redis URL comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from huey import RedisHuey

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _app(name: str, *, notify: bool) -> SimpleNamespace:
    huey = RedisHuey(name, url=URL, results=True, notify_result=notify)

    @huey.task(name="noop")
    def noop() -> int:
        return 1

    @huey.task(name="stamp")
    def stamp() -> float:
        """The wall clock when the task started (epoch seconds)."""
        return time.time()

    return SimpleNamespace(huey=huey, noop=noop, stamp=stamp, notify=notify)


plain = _app("bench", notify=False)
notify = _app("benchn", notify=True)
huey_plain = plain.huey
huey_notify = notify.huey
