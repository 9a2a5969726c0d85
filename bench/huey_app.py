"""The Huey 3 app the Redis benchmark compares against: a no-op, on the benchmark's Redis.

``huey_consumer bench.huey_app.huey -w 2 -k process`` runs two worker processes, as our node
runs two workers. The Redis URL comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os

from huey import RedisHuey

huey = RedisHuey(
    "bench", url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), results=True
)


@huey.task()
def noop() -> int:
    return 1
