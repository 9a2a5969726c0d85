"""Scheduler metric families, from the document the scheduler process publishes to the broker
(:func:`supervisor.scheduling.status.status_doc`, about once a second).

Every node runs its own scheduler, so the families carry the ``node`` label and come from
every node; ``sum()`` over them is the cluster's. The families exist before the scheduler's
first report (counters at 0, an empty histogram), so
dashboards and alerts have data from the first scrape. The document comes from another process:
a malformed value reads as 0 rather than failing the scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from supervisor.observability.families import gauge, number
from supervisor.scheduling.status import LAG_BUCKETS_S

# misfire action label -> the scheduler's counter (due times it did not push, and why)
MISFIRE_COUNTERS = {"skipped": "misfired", "coalesced": "coalesced", "overlapped": "overlapped"}


def _lag(node: str, doc: dict[str, Any]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(
        "supervisor_scheduler_fire_lag_seconds",
        "Time from a schedule's due time to the push of its task.",
        labels=["node"],
    )
    lag = doc.get("lag")
    buckets: list[tuple[str, float]] = []
    if isinstance(lag, dict) and isinstance(lag.get("buckets"), list):
        try:
            buckets = [(floatToGoString(float(le)), number(n)) for le, n in lag["buckets"]]
        except (TypeError, ValueError):
            buckets = []
    if not buckets or buckets[-1][0] != "+Inf":
        buckets = [(floatToGoString(b), 0.0) for b in (*LAG_BUCKETS_S, math.inf)]
        total = 0.0
    else:
        total = number(lag.get("sum_s")) if isinstance(lag, dict) else 0.0
    fam.add_metric([node], buckets, total)
    return fam


def scheduler_families(
    node: str,
    doc: dict[str, Any],
    age_s: float | None,
    *,
    since_start_s: float,
    enabled: bool = True,
) -> Iterator[Metric]:
    """The families of ``node``'s scheduler. ``doc``: its last published document ({} if
    none); ``age_s``: seconds since it came (None: never); ``since_start_s``: the broker's age,
    the tick age until a first report."""
    raw = doc.get("counters")
    counters: dict[str, Any] = raw if isinstance(raw, dict) else {}
    fires = CounterMetricFamily(
        "supervisor_scheduler_fires_total", "Schedule due times pushed as tasks.", labels=["node"]
    )
    fires.add_metric([node], number(counters.get("fired")))
    yield fires
    misfires = CounterMetricFamily(
        "supervisor_scheduler_misfires_total",
        "Schedule due times not pushed, by action: skipped (too "
        "late), coalesced (into one run), overlapped (previous run "
        "still going).",
        labels=["node", "action"],
    )
    for action, key in MISFIRE_COUNTERS.items():
        misfires.add_metric([node, action], number(counters.get(key)))
    yield misfires
    yield _lag(node, doc)
    yield gauge(
        "supervisor_scheduler_consecutive_failures",
        "Scheduler ticks failed in a row (database unreachable).",
        node,
        number(doc.get("db_failures")),
    )
    if not enabled:
        return  # --no-scheduler: no tick age, so no "scheduler stalled" alert
    yield gauge(
        "supervisor_scheduler_last_tick_age_seconds",
        "Seconds since the scheduler last reported (since start if it never did).",
        node,
        since_start_s if age_s is None else age_s,
    )
