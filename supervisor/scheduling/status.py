"""What the scheduler process reports: fire lag as a histogram, and its status document.

The status document (:func:`status_doc`) is published to the broker about once a second with
``publish_scheduler_status(doc)``, for ``supervisor status`` and the Prometheus metrics. Counters
are totals since the scheduler process started (a restarted process starts again from 0, which
Prometheus counters tolerate as a reset).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

# Upper bounds (seconds) of the fire-lag buckets; the Prometheus convention, +Inf implied.
LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
# Counters of ScheduleStore / BrokerPusher that the document carries (0 when never counted).
COUNTERS = (
    "fired",
    "late",
    "misfired",
    "coalesced",
    "overlapped",
    "push_failed",
    "duplicate",
    "retried",
    "confirmed",
    "expired",
    "undecided",
    "lost_race",
    "already_fired",
    "db_error",
    "broken",
    "corrupt_params",
)
MISFIRE_POLICIES = ("skip", "once", "all")


class LagHistogram:
    """Cumulative histogram of fire lag (push time - due time, seconds)."""

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS_S) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def observe(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self._counts[bisect.bisect_left(self.bounds, lag_s)] += 1
        self.count += 1
        self.sum_s += lag_s
        self.max_s = max(self.max_s, lag_s)

    def as_dict(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative count], ...], "count", "sum_s", "max_s"}``."""
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            cumulative += n
            buckets.append([bound, cumulative])
        return {
            "buckets": buckets,
            "count": self.count,
            "sum_s": round(self.sum_s, 6),
            "max_s": round(self.max_s, 6),
        }


def status_doc(
    *,
    pid: int,
    state: str,
    started_at: float,
    now: float,
    database: str,
    counters: Mapping[str, int],
    lag: LagHistogram,
    next_due_at: float | None,
    enabled: int | None,
    db_failures: int,
    last_tick_s: float,
    config_error: str | None = None,
) -> dict[str, Any]:
    """The document published to the broker; see the module docstring."""
    return {
        "pid": pid,
        "state": state,  # starting | running | backoff | stopping
        "started_at": started_at,
        "updated_at": now,
        "database": database,  # the URL with its password masked
        "schedules_enabled": enabled,
        "next_due_at": next_due_at,
        "db_failures": db_failures,  # consecutive failed ticks (0: healthy)
        "last_tick_s": round(last_tick_s, 6),
        "config_error": config_error,
        "counters": {name: int(counters.get(name, 0)) for name in COUNTERS},
        # Due times not fired because of the misfire policy, by policy.
        "misfires": {p: int(counters.get(f"misfire.{p}", 0)) for p in MISFIRE_POLICIES},
        "lag": lag.as_dict(),
    }
