"""The Prometheus collector: every metric computed at scrape time, in the broker process.

Sources, all read without asking another process or a database (the broker is read through
:class:`~supervisor.observability.view.MetricsSource`: its in-memory counters and ``stats()``,
never ``get_queue_stats()`` or ``list_tasks()``, so a locked task table cannot fail a scrape or
turn its figures into zeros):

* the broker's cumulative counters and O(priorities) ``stats()`` (tasks pushed, started,
  finished, failed attempts, retries; queue depth and age; delayed, running, store keys);
* the broker's event buffer, drained on each scrape into the duration / queue-wait / fire-lag
  histograms (only this collector drains it);
* the master's status, published into the broker every second (desired workers, restarts by
  reason, loop lag, state) and the scheduler's (fires, misfires, fire lag histogram);
* the shared-memory scoreboard (worker states and pids, the master's loop heartbeat) and psutil
  for each worker's RSS and CPU time.

Labels are bounded: task type (registered types only), status, reason, priority (0-10), worker
slot, state. Never a task id or a pid. Counters of registered types are exported at zero before
their first event, so rates and ratios have data from the first scrape.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from supervisor.broker import base
from supervisor.master import scoreboard as sb
from supervisor.observability.histograms import (
    DURATION_BUCKETS_S,
    QUEUE_WAIT_BUCKETS_S,
    Histograms,
)
from supervisor.observability.procstats import ProcSampler
from supervisor.observability.scheduler import scheduler_families
from supervisor.observability.view import MetricsSource
from supervisor.registry import PRIORITY_MAX, PRIORITY_MIN

FINISHED_STATUSES = base.FINAL_STATUSES
FAILURE_REASONS = (
    base.REASON_ERROR,
    base.REASON_TIMEOUT,
    base.REASON_WORKER_LOST,
    base.REASON_INVALID,
    base.REASON_RETRY,
)
RETRY_REASONS = (base.REASON_ERROR, base.REASON_TIMEOUT, base.REASON_WORKER_LOST, base.REASON_RETRY)
RESTART_REASONS = (
    "crash",
    "timeout",
    "hung",
    "recycle-tasks",
    "recycle-memory",
    "shutdown",
    "exit",
)
WORKER_STATES = ("booting", "idle", "busy", "exiting")
MASTER_STATES = ("running", "draining", "stopping")


def _version() -> str:
    from supervisor import __version__

    return __version__


class SupervisorCollector(Collector):
    """Yields every ``supervisor_*`` family; safe to call from concurrent scrape threads."""

    def __init__(
        self,
        broker: MetricsSource,
        scoreboard: sb.Scoreboard,
        *,
        graceful_timeout_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.scoreboard = scoreboard
        self.graceful_timeout_s = graceful_timeout_s
        self.monotonic = monotonic
        self._started = monotonic()
        self._lock = threading.Lock()
        self._procs = ProcSampler()
        self._duration = Histograms(
            "supervisor_task_duration_seconds",
            "Run time of finished task attempts (succeeded, dead or cancelled), by task type.",
            ["type"],
            DURATION_BUCKETS_S,
        )
        self._queue_wait = Histograms(
            "supervisor_task_queue_wait_seconds",
            "Time from ready (pushed, due, or retry backoff over) to started, by task type.",
            ["type"],
            QUEUE_WAIT_BUCKETS_S,
        )

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        stats = self.broker.stats()
        self._observe(self.broker.drain_events())
        status = self.broker.master_status()
        types = set(self.broker.known_task_types())
        counters: dict[tuple[str, str, str], int] = stats["counters"]
        types.update(t for _, t, _ in counters)
        yield from self._task_counters(counters, sorted(types))
        for t in types:
            self._duration.ensure((t,))
            self._queue_wait.ensure((t,))
        yield self._duration.family()
        yield self._queue_wait.family()
        yield from self._queue(stats)
        yield from self._workers(status)
        yield from self._master(status)
        yield from self._scheduler(status)
        info = GaugeMetricFamily(
            "supervisor_build_info",
            "Version of supervisor and Python (always 1).",
            labels=["version", "python"],
        )
        info.add_metric([_version(), platform.python_version()], 1)
        yield info

    def _observe(self, events: list[tuple[str, str, str, float]]) -> None:
        for event, task_type, _status, seconds in events:
            if event == "started":
                self._queue_wait.observe((task_type,), seconds)
            elif event == "finished":
                self._duration.observe((task_type,), seconds)

    @staticmethod
    def _task_counters(
        counters: dict[tuple[str, str, str], int], types: list[str]
    ) -> Iterator[Metric]:
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

    @staticmethod
    def _queue(stats: dict[str, Any]) -> Iterator[Metric]:
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
        yield GaugeMetricFamily(
            "supervisor_store_keys", "Keys in the public store.", value=stats["store_keys"]
        )
        yield GaugeMetricFamily(
            "supervisor_dispatching",
            "1 while the broker hands out tasks, 0 once shutdown began.",
            value=1 if stats["dispatching"] else 0,
        )

    def _workers(self, status: dict[str, Any]) -> Iterator[Metric]:
        by_state = dict.fromkeys(WORKER_STATES, 0)
        slots: list[tuple[int, int]] = []
        for slot in range(self.scoreboard.slots):
            view = self.scoreboard.read(slot)
            if view.pid <= 0 or view.state == sb.EMPTY:
                continue
            by_state[view.state_name] = by_state.get(view.state_name, 0) + 1
            slots.append((slot, view.pid))
        workers = GaugeMetricFamily(
            "supervisor_workers", "Worker processes by state.", labels=["state"]
        )
        for state, n in by_state.items():
            workers.add_metric([state], n)
        yield workers
        yield GaugeMetricFamily(
            "supervisor_workers_desired",
            "Worker processes wanted.",
            value=status.get("desired_workers", 0),
        )
        samples = self._procs.sample([pid for _, pid in slots])
        rss = GaugeMetricFamily(
            "supervisor_worker_resident_memory_bytes",
            "Resident memory of each worker process, by slot.",
            labels=["slot"],
        )
        cpu = CounterMetricFamily(
            "supervisor_worker_cpu_seconds_total",
            "CPU time (user + system) of the worker process now in each "
            "slot; restarts from 0 with a new process.",
            labels=["slot"],
        )
        for slot, pid in slots:
            sample = samples.get(pid)
            if sample is not None:
                rss.add_metric([str(slot)], sample.rss_bytes)
                cpu.add_metric([str(slot)], sample.cpu_s)
        yield rss
        yield cpu
        yield GaugeMetricFamily(
            "supervisor_worker_memory_limit_bytes",
            "max_memory_per_child in bytes (0: no limit).",
            value=status.get("max_memory_per_child_bytes", 0),
        )
        restarts = CounterMetricFamily(
            "supervisor_worker_restarts_total",
            "Worker processes that ended and were replaced or retired, by reason (crash, "
            "timeout, hung, recycle-tasks, recycle-memory, shutdown, exit).",
            labels=["reason"],
        )
        counts = status.get("restarts") or {}
        for reason in sorted(set(RESTART_REASONS) | set(counts)):
            restarts.add_metric([reason], counts.get(reason, 0))
        yield restarts

    def _master(self, status: dict[str, Any]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "supervisor_master_state",
            "1 for the master's current state (running, draining, stopping).",
            labels=["state"],
        )
        for name in MASTER_STATES:
            state.add_metric([name], 1 if status.get("state") == name else 0)
        yield state
        yield GaugeMetricFamily(
            "supervisor_master_loop_lag_seconds",
            "How late the master's last loop turn woke past its timer.",
            value=status.get("loop_lag_s", 0.0),
        )
        yield GaugeMetricFamily(
            "supervisor_master_heartbeat_age_seconds",
            "Seconds since the master's loop last ticked.",
            value=self.heartbeat_age_s(),
        )
        yield GaugeMetricFamily(
            "supervisor_graceful_timeout_seconds",
            "Seconds running tasks get to finish on SIGTERM.",
            value=self.graceful_timeout_s,
        )

    def heartbeat_age_s(self) -> float:
        view = self.scoreboard.read(self.scoreboard.master_slot)
        return max(0.0, self.monotonic() - view.heartbeat)

    def _scheduler(self, status: dict[str, Any]) -> Iterator[Metric]:
        doc, age_s = self.broker.scheduler_status()
        yield from scheduler_families(
            doc,
            age_s,
            since_start_s=self.monotonic() - self._started,
            enabled=status.get("scheduler") is not False,
        )


def build_registry(
    broker: MetricsSource, scoreboard: sb.Scoreboard, *, graceful_timeout_s: float = 0.0
) -> tuple[CollectorRegistry, SupervisorCollector]:
    """A registry of its own (not prometheus_client's global one) holding our collector."""
    registry = CollectorRegistry(auto_describe=False)
    collector = SupervisorCollector(broker, scoreboard, graceful_timeout_s=graceful_timeout_s)
    registry.register(collector)
    return registry, collector
