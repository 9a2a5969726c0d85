"""Ingest families, from the status documents ingest children publish to the broker's board
(:meth:`~supervisor.broker.base.StatusBoard.component_statuses`, kind ``ingest``).

Each document names its node and queue and carries cumulative counts (``ingested``,
``duplicates``, ``rejected``), a lag and a connected flag; the board adds its age. Every node's
documents are on the one board, so, like the cluster-wide families, they are exported by the
exporter only, labelled by the node the document names. The counts are counters (they restart
at 0 with the ingest child, which Prometheus reads as a reset). The document's URL is never
exported (it may hold a password). A document not refreshed for :data:`FORGET_AFTER_S` (its
node died) is left out; until then its age tells it is stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.observability.families import number

FORGET_AFTER_S = 3600.0
# outcome label -> the document's cumulative count
OUTCOMES = {"ingested": "ingested", "duplicate": "duplicates", "rejected": "rejected"}


def ingest_docs(components: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(node, queue) -> the freshest ``ingest`` document of that pair (malformed ones and those
    older than :data:`FORGET_AFTER_S` left out)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in components.values():
        if not isinstance(doc, dict) or doc.get("kind") != "ingest":
            continue
        node, queue = doc.get("node"), doc.get("queue")
        if not isinstance(node, str) or not isinstance(queue, str) or not node or not queue:
            continue
        age = doc.get("report_age_s")
        age_s = number(age) if age is not None else 0.0
        if age_s >= FORGET_AFTER_S:
            continue
        key = (node, queue)
        if key not in out or age_s < number(out[key].get("report_age_s")):
            out[key] = {**doc, "report_age_s": age_s}
    return out


def ingest_families(components: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    docs = ingest_docs(components)
    messages = CounterMetricFamily(
        "supervisor_ingest_messages_total",
        "Messages an ingest child took from its queue, by outcome: ingested (pushed as a "
        "task), duplicate (already pushed), rejected (not a valid task).",
        labels=["node", "queue", "outcome"],
    )
    lag = GaugeMetricFamily(
        "supervisor_ingest_lag_seconds",
        "How far behind its queue an ingest child is, as it reports.",
        labels=["node", "queue"],
    )
    connected = GaugeMetricFamily(
        "supervisor_ingest_connected",
        "1 while an ingest child is connected to its message broker.",
        labels=["node", "queue"],
    )
    age = GaugeMetricFamily(
        "supervisor_ingest_report_age_seconds",
        "Seconds since an ingest child last published its status.",
        labels=["node", "queue"],
    )
    for (node, queue), doc in sorted(docs.items()):
        for outcome, field in OUTCOMES.items():
            messages.add_metric([node, queue, outcome], max(0.0, number(doc.get(field))))
        lag.add_metric([node, queue], max(0.0, number(doc.get("lag_s"))))
        connected.add_metric([node, queue], 1 if doc.get("connected") is True else 0)
        age.add_metric([node, queue], doc["report_age_s"])
    yield messages
    yield lag
    yield connected
    yield age
