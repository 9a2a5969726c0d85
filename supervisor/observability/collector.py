"""The Prometheus collector: every metric computed at scrape time, in the process that serves
the node's HTTP endpoints (the embedded broker's, or a Redis node's node process).

Sources, all read without a database (the broker is read through
:class:`~supervisor.observability.view.MetricsSource`: its counters and ``stats()``, never
``get_queue_stats()`` or ``list_tasks()``, so a locked task table cannot fail a scrape or turn
its figures into zeros):

* the broker's event buffer of this node, drained on each scrape into the duration / queue-wait
  histograms and the node's finished-task counters (only this collector drains it);
* the master's status, published into the broker every second (desired workers, restarts by
  reason, loop lag, state, lease renewals), and this node's scheduler's document (every node
  runs its own scheduler, with its own counters);
* the shared-memory scoreboard (worker states and pids, the master's loop heartbeat) and psutil
  for each worker's RSS and CPU time;
* on the cluster's exporter only (:mod:`supervisor.observability.cluster`): the broker's
  cumulative counters and O(priorities) ``stats()``, the nodes' lease health and the ingest
  children's documents.

Two kinds of family, so that ``sum()`` never counts a figure twice: per-node families carry a
``node`` label and come from every node; cluster-wide ones carry none and come from exactly one
node, the exporter (``supervisor_cluster_exporter{node}`` is 1 there). The embedded broker's one
node is always the exporter. When the broker does not answer, ``supervisor_broker_up{node}`` is
0 and only what the scoreboard and psutil tell is exported, with the histograms so far: absent
figures, never wrong ones.

Labels are bounded: node, task type (registered types only), status, reason, priority (0-10),
queue, worker slot, state, outcome. Never a task id or a pid. Counters of registered types are
exported at zero before their first event, so rates and ratios have data from the first scrape.
"""

from __future__ import annotations

import platform
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from supervisor.errors import BrokerError, DatabaseBusy
from supervisor.master import scoreboard as sb
from supervisor.observability.cluster import (
    FINISHED_STATUSES,
    health_families,
    queue_families,
    task_counter_families,
)
from supervisor.observability.families import gauge
from supervisor.observability.histograms import (
    DURATION_BUCKETS_S,
    QUEUE_WAIT_BUCKETS_S,
    Histograms,
)
from supervisor.observability.ingest import ingest_families
from supervisor.observability.node import lease_families, master_families, worker_families
from supervisor.observability.procstats import ProcSampler
from supervisor.observability.scheduler import scheduler_families
from supervisor.observability.view import MetricsSource

_log = logger.bind(component="metrics")


def _version() -> str:
    from supervisor import __version__

    return __version__


@dataclass
class Reading:
    """What one scrape read from the broker (``up`` False: it did not answer; then nothing
    else was read)."""

    up: bool = True
    status: dict[str, Any] | None = None
    dispatching: bool | None = None
    exporter: bool = False
    stats: dict[str, Any] | None = None
    scheduler: tuple[dict[str, Any], float | None] | None = None
    health: Any = None
    components: dict[str, dict[str, Any]] | None = None
    types: set[str] = field(default_factory=set)


def broker_node(broker: Any) -> str | None:
    """The node name a broker knows itself by (a Redis node's), or None (the embedded one)."""
    node = getattr(broker, "node", None)
    return node if isinstance(node, str) and node else None


class SupervisorCollector(Collector):
    """Yields every ``supervisor_*`` family; safe to call from concurrent scrape threads.

    ``node``: the name labelling the per-node families; default: the broker's node name, else
    the ``node`` of the master's status, else the host name."""

    def __init__(
        self,
        broker: MetricsSource,
        scoreboard: sb.Scoreboard,
        *,
        node: str | None = None,
        graceful_timeout_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.scoreboard = scoreboard
        self.graceful_timeout_s = graceful_timeout_s
        self.monotonic = monotonic
        self._fixed_node = node or broker_node(broker)
        self.node = self._fixed_node or socket.gethostname()
        self._started = monotonic()
        self._lock = threading.Lock()
        self._procs = ProcSampler()
        self._down_since: float | None = None
        self._duration = Histograms(
            "supervisor_task_duration_seconds",
            "Run time of finished task attempts (succeeded, dead or cancelled) on this node, "
            "by task type.",
            ["type"],
            DURATION_BUCKETS_S,
            prefix_labels=["node"],
        )
        self._queue_wait = Histograms(
            "supervisor_task_queue_wait_seconds",
            "Time from ready (pushed, due, or retry backoff over) to started on this node, by "
            "task type.",
            ["type"],
            QUEUE_WAIT_BUCKETS_S,
            prefix_labels=["node"],
        )
        self._finished: dict[tuple[str, str], int] = {}  # (type, status) -> on this node

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        got = self._read()
        node = self.node
        yield gauge(
            "supervisor_broker_up",
            "1 when this node's last scrape could read the broker (Redis answered), else 0.",
            node,
            1 if got.up else 0,
        )
        yield gauge(
            "supervisor_cluster_exporter",
            "1 on the one node that exports the cluster-wide families (see the README).",
            node,
            1 if got.exporter else 0,
        )
        yield from self._tasks_run(node, got.types)
        yield from worker_families(node, self.scoreboard, self._procs, got.status)
        yield from master_families(
            node,
            got.status,
            heartbeat_age_s=self.heartbeat_age_s(),
            graceful_timeout_s=self.graceful_timeout_s,
            dispatching=got.dispatching,
        )
        yield from lease_families(node, got.status)
        if got.stats is not None:
            yield from task_counter_families(got.stats["counters"], sorted(got.types))
            yield from queue_families(got.stats)
        if got.scheduler is not None:
            doc, age_s = got.scheduler
            yield from scheduler_families(
                node,
                doc,
                age_s,
                since_start_s=self.monotonic() - self._started,
                enabled=(got.status or {}).get("scheduler") is not False,
            )
        if got.health is not None:
            yield from health_families(got.health)
        if got.components is not None:
            yield from ingest_families(got.components)
        info = GaugeMetricFamily(
            "supervisor_build_info",
            "Version of supervisor and Python (always 1).",
            labels=["node", "version", "python"],
        )
        info.add_metric([node, _version(), platform.python_version()], 1)
        yield info

    # -- reading -----------------------------------------------------------------------------
    def _read(self) -> Reading:
        """Everything this scrape needs from the broker, or ``up=False`` (logged once per
        outage) when it does not answer. Drained events are observed at once: they are gone
        from the broker even if a later read fails."""
        broker = self.broker
        got = Reading()
        try:
            got.types = set(broker.known_task_types())
            self._observe(broker.drain_events())
            got.status = broker.master_status()
            got.dispatching = bool(broker.dispatching())
            node = self._fixed_node or got.status.get("node")
            if isinstance(node, str) and node:
                self.node = node
            got.scheduler = broker.scheduler_status()
            got.exporter = self._is_exporter()
            if got.exporter:
                got.stats = broker.stats()
                got.types.update(t for _, t, _ in got.stats["counters"])
                health = getattr(broker, "cluster_health", None)
                got.health = health() if callable(health) else None
                components = getattr(broker, "component_statuses", None)
                got.components = components() if callable(components) else None
        except DatabaseBusy:  # answering, but its table is locked: a 503 to retry, not "down"
            raise
        except BrokerError as exc:
            if self._down_since is None:
                self._down_since = self.monotonic()
                _log.warning("metrics: the broker does not answer ({}); broker_up is 0", exc)
            return Reading(up=False, types=got.types)
        if self._down_since is not None:
            _log.info("metrics: the broker answers again")
            self._down_since = None
        return got

    def _is_exporter(self) -> bool:
        check = getattr(self.broker, "is_cluster_exporter", None)
        return bool(check()) if callable(check) else True  # one node: it is the cluster

    def _observe(self, events: list[tuple[str, str, str, float]]) -> None:
        for event, task_type, status, seconds in events:
            if event == "started":
                self._queue_wait.observe((task_type,), seconds)
            elif event == "finished":
                self._duration.observe((task_type,), seconds)
                key = (task_type, status)
                self._finished[key] = self._finished.get(key, 0) + 1

    # -- families ----------------------------------------------------------------------------
    def _tasks_run(self, node: str, types: set[str]) -> Iterator[Metric]:
        """What this node's workers ran: durations, queue waits, finished tasks by status."""
        for t in types:
            self._duration.ensure((t,))
            self._queue_wait.ensure((t,))
            for status in FINISHED_STATUSES:
                self._finished.setdefault((t, status), 0)
        yield self._duration.family([node])
        yield self._queue_wait.family([node])
        finished = CounterMetricFamily(
            "supervisor_node_tasks_finished_total",
            "Tasks whose final attempt ran on this node, by final status (succeeded, dead, "
            "cancelled).",
            labels=["node", "type", "status"],
        )
        for (task_type, status), n in sorted(self._finished.items()):
            finished.add_metric([node, task_type, status], n)
        yield finished

    def heartbeat_age_s(self) -> float:
        view = self.scoreboard.read(self.scoreboard.master_slot)
        return max(0.0, self.monotonic() - view.heartbeat)


def build_registry(
    broker: MetricsSource,
    scoreboard: sb.Scoreboard,
    *,
    graceful_timeout_s: float = 0.0,
    node: str | None = None,
) -> tuple[CollectorRegistry, SupervisorCollector]:
    """A registry of its own (not prometheus_client's global one) holding our collector."""
    registry = CollectorRegistry(auto_describe=False)
    collector = SupervisorCollector(
        broker, scoreboard, node=node, graceful_timeout_s=graceful_timeout_s
    )
    registry.register(collector)
    return registry, collector
