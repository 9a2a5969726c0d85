"""Cluster-wide families: figures of the whole broker, exported by exactly one node.

With Redis every node reads the same queue, the same counters and the same records, so if each
exported them, ``sum()`` in Prometheus would count them once per node. So only the node holding
the exporter's role (:mod:`supervisor.broker.redis.nodes`; ``supervisor_cluster_exporter`` says
which) exports the families of this module, without a ``node`` label; the embedded broker's
only node always does. Per-node figures (workers, run times, restarts, leases renewed) are in
:mod:`supervisor.observability.collector`, labelled by ``node``, from every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.broker import base
from supervisor.registry import DEFAULT_QUEUE, PRIORITY_MAX, PRIORITY_MIN

FINISHED_STATUSES = base.FINAL_STATUSES
FAILURE_REASONS = (
    base.REASON_ERROR,
    base.REASON_TIMEOUT,
    base.REASON_WORKER_LOST,
    base.REASON_INVALID,
    base.REASON_RETRY,
)
RETRY_REASONS = (base.REASON_ERROR, base.REASON_TIMEOUT, base.REASON_WORKER_LOST, base.REASON_RETRY)
RECORD_STATUSES = base.ACTIVE_STATUSES + base.FINAL_STATUSES


def task_counter_families(
    counters: dict[tuple[str, str, str], int], types: list[str]
) -> Iterator[Metric]:
    """The broker's cumulative task counters, by type (every type in ``types`` at 0 first)."""

    def family(
        event: str, name: str, doc: str, label: str | None, known: tuple[str, ...]
    ) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=["type"] + ([label] if label else []))
        for t in types:
            values = {k[2]: v for k, v in counters.items() if k[0] == event and k[1] == t}
            if label is None:
                fam.add_metric([t], values.get("", 0))
                continue
            for key in sorted(set(known) | set(values)):
                fam.add_metric([t, key], values.get(key, 0))
        return fam

    yield family(
        "pushed",
        "supervisor_tasks_pushed_total",
        "Tasks accepted by the broker, by task type.",
        None,
        (),
    )
    yield family(
        "started",
        "supervisor_tasks_started_total",
        "Task attempts handed to a worker or consumer, by task type.",
        None,
        (),
    )
    yield family(
        "finished",
        "supervisor_tasks_finished_total",
        "Tasks that reached a final status (succeeded, dead, cancelled).",
        "status",
        FINISHED_STATUSES,
    )
    yield family(
        "failed",
        "supervisor_task_attempts_failed_total",
        "Task attempts that failed, by reason (error, timeout, worker_lost, invalid, retry).",
        "reason",
        FAILURE_REASONS,
    )
    yield family(
        "retried",
        "supervisor_tasks_retried_total",
        "Failed attempts put back for another attempt after a backoff, by reason.",
        "reason",
        RETRY_REASONS,
    )


def queue_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """Depth and age of the ready tasks, delayed and running tasks, records, store keys."""
    depth = GaugeMetricFamily(
        "supervisor_queue_depth",
        "Tasks ready to run now, by priority (0-10).",
        labels=["priority"],
    )
    age = GaugeMetricFamily(
        "supervisor_queue_oldest_age_seconds",
        "Age of the longest-waiting ready task, by priority (0 when none).",
        labels=["priority"],
    )
    for prio in range(PRIORITY_MIN, PRIORITY_MAX + 1):
        depth.add_metric([str(prio)], stats["by_priority"].get(prio, 0))
        age.add_metric([str(prio)], stats["oldest_age_s"].get(prio, 0.0))
    yield depth
    yield age
    by_queue = GaugeMetricFamily(
        "supervisor_queue_depth_by_queue",
        "Tasks ready to run now, by named queue.",
        labels=["queue"],
    )
    queues: dict[str, int] = {DEFAULT_QUEUE: 0, **(stats.get("by_queue") or {})}
    for name in sorted(queues):
        by_queue.add_metric([str(name)], queues[name])
    yield by_queue
    delayed = GaugeMetricFamily(
        "supervisor_tasks_delayed",
        "Tasks waiting for their time: scheduled (eta) or retrying (backoff).",
        labels=["status"],
    )
    delayed.add_metric([base.SCHEDULED], stats["scheduled"])
    delayed.add_metric([base.RETRYING], stats["retrying"])
    yield delayed
    yield GaugeMetricFamily(
        "supervisor_tasks_in_progress", "Tasks being run now.", value=stats["running"]
    )
    records = GaugeMetricFamily(
        "supervisor_task_records",
        "Task records the broker holds, by status (finished ones until their retention).",
        labels=["status"],
    )
    by_status: dict[str, int] = stats.get("by_status") or {}
    for status in sorted(set(RECORD_STATUSES) | set(by_status)):
        records.add_metric([status], by_status.get(status, 0))
    yield records
    yield GaugeMetricFamily(
        "supervisor_store_keys", "Keys in the public store.", value=stats["store_keys"]
    )


def health_families(health: Any) -> Iterator[Metric]:
    """The nodes' lease renewals as Redis saw them: every node known there (a dead one too,
    ever older, until it is forgotten), how many renew within their lease, leases recovered.
    ``health``: a :class:`~supervisor.broker.redis.nodes.ClusterHealth`."""
    live = GaugeMetricFamily(
        "supervisor_cluster_nodes_live",
        "Nodes whose master renewed its leases within its lease.",
        value=health.live_nodes,
    )
    age = GaugeMetricFamily(
        "supervisor_cluster_node_last_renew_age_seconds",
        "Seconds since each node's master last renewed its leases (Redis time), for every "
        "node known in Redis, a dead one too.",
        labels=["node"],
    )
    lease = GaugeMetricFamily(
        "supervisor_cluster_node_lease_seconds",
        "Each node's lease: past this without a renewal, its tasks are recovered elsewhere.",
        labels=["node"],
    )
    for name in sorted(health.nodes):
        node = health.nodes[name]
        age.add_metric([name], node.renew_age_s)
        lease.add_metric([name], node.lease_s)
    yield live
    yield age
    yield lease
    yield CounterMetricFamily(
        "supervisor_cluster_leases_recovered_total",
        "Task attempts failed as worker_lost (or timeout) by any node because their lease "
        "expired: their node stopped renewing.",
        value=health.leases_recovered,
    )
