"""Small pieces every family module uses: a value read from another process's document, and a
gauge that carries only the ``node`` label."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily


def number(value: Any) -> float:
    """``value`` as a finite float; 0 for anything else (a document from another process)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def gauge(name: str, doc: str, node: str, value: float) -> GaugeMetricFamily:
    """A gauge with the ``node`` label only."""
    fam = GaugeMetricFamily(name, doc, labels=["node"])
    fam.add_metric([node], value)
    return fam
