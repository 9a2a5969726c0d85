"""Cumulative histograms filled from drained events and exported at scrape time.

Not ``prometheus_client.Histogram``: those export ``_created`` series and need the global
"disable created" switch to avoid it; these are a few lists, and only the scrape thread (under
the collector's lock) touches them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Seconds. A task runs from milliseconds (a no-op) to its hard timeout (minutes, even an hour).
DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
# Seconds from ready to started: sub-millisecond with idle workers, minutes under a backlog.
QUEUE_WAIT_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class Histograms:
    """One histogram family: ``observe(labels, value)``; ``family()`` for the exposition."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        *,
        prefix_labels: Sequence[str] = (),
    ) -> None:
        """``prefix_labels``: labels given at export (e.g. ``node``), before ``labelnames``."""
        self.name = name
        self.documentation = documentation
        self.prefix_labels = list(prefix_labels)
        self.labelnames = list(labelnames)
        self.bounds = sorted(float(b) for b in buckets if b != math.inf)
        self._les = [floatToGoString(b) for b in (*self.bounds, math.inf)]
        # per label tuple: a count per bucket, +Inf last (not cumulative)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def ensure(self, labels: tuple[str, ...]) -> None:
        """Export the series (at zero) even before its first observation."""
        if labels not in self._counts:
            self._counts[labels] = [0] * (len(self.bounds) + 1)
            self._sums[labels] = 0.0

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.ensure(labels)
        self._counts[labels][bisect.bisect_left(self.bounds, value)] += 1
        self._sums[labels] += value

    def family(self, prefix: Sequence[str] = ()) -> HistogramMetricFamily:
        """The exposition; ``prefix``: the values of ``prefix_labels``."""
        fam = HistogramMetricFamily(
            self.name, self.documentation, labels=self.prefix_labels + self.labelnames
        )
        for labels in sorted(self._counts):
            running = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._les, self._counts[labels], strict=True):
                running += n
                buckets.append((le, running))
            fam.add_metric([*prefix, *labels], buckets, self._sums[labels])
        return fam
