"""The task app the benchmark runs: ``supervisor run --app bench.app`` (from the repo root).

It registers the demo's own ``noop`` and ``cpu`` handlers, with the demo's options, but not the
demo's ``SCHEDULES`` (its producer schedule), which would keep pushing tasks during the
measurements.
``stamp`` is a no-op that returns the handler's wall-clock start, for push-to-handler latency.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor import demo
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
