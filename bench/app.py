"""The task app the benchmark runs: ``supervisor run --app bench.app`` (from the repo root).

It registers the demo's own ``noop`` and ``cpu`` handlers, with the demo's options, but not the
demo's ``SCHEDULES`` (its producer schedule), which would keep pushing tasks during the
measurements.
``stamp`` is a no-op that returns the handler's wall-clock start, for push-to-handler latency.
``hold`` sleeps ``params["s"]`` seconds on its first attempt only and returns its start time: the
Redis recovery benchmark kills the node running it and times the second attempt elsewhere (a
short retry backoff, so the figure is the lease and its detection, not the retry policy).
"""

from __future__ import annotations

import time
from typing import Any

from supervisor import current_task, demo
from supervisor.registry import TaskRegistry

app = TaskRegistry()
for _name in ("noop", "cpu"):
    _handler = demo.app.handler(_name)
    _options = demo.app.options(_name)
    assert _handler is not None and _options is not None, f"demo has no task type {_name!r}"
    app.register(_name, _handler, timeout_s=_options.timeout_s)


@app.task("stamp", timeout_s=10)
def stamp(params: dict[str, Any]) -> float:
    """Return the wall clock when the handler started (epoch seconds)."""
    return time.time()


@app.task("hold", timeout_s=600, max_retries=3, backoff_base_s=0.01, backoff_cap_s=0.01)
def hold(params: dict[str, Any]) -> float:
    """Sleep ``params["s"]`` on the first attempt; return the wall clock at the start."""
    started = time.time()
    ctx = current_task()
    if ctx is not None and ctx.attempt == 1:
        time.sleep(float(params.get("s", 60)))
    return started
