"""What the machine is, and how much of it other people used while we measured.

The benchmark machine is shared (other engineers run test suites on it). :class:`CpuWindow`
tells, for one measurement, how many CPU-seconds the whole machine spent (``/proc/stat``) and how
many of those were ours (this process and every descendant it or its children reaped:
``RUSAGE_CHILDREN`` covers the Pool's workers, the manager, and the supervisor's master with its
broker and workers). The rest is other people's load: a figure taken while it was high is noise.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _machine_busy_s() -> float:
    """CPU-seconds all CPUs spent not idle since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return (total - idle) * _TICK_S


def _ours_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class CpuWindow:
    """Context manager: ``others_share`` = other people's CPU / (wall time x CPUs), 0-1."""

    wall_s: float = 0.0
    machine_s: float = 0.0
    ours_s: float = 0.0

    def __enter__(self) -> CpuWindow:
        self._t0 = (time.perf_counter(), _machine_busy_s(), _ours_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, machine, ours = self._t0
        self.wall_s = time.perf_counter() - wall
        self.machine_s = _machine_busy_s() - machine
        self.ours_s = _ours_s() - ours

    @property
    def others_share(self) -> float:
        cpus = os.cpu_count() or 1  # /proc/stat sums every CPU of the machine
        if self.wall_s <= 0:
            return 0.0
        return min(1.0, max(0.0, self.machine_s - self.ours_s) / (self.wall_s * cpus))
