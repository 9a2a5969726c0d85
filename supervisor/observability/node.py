"""Per-node families: the workers, the master and its leases of the node that is scraped.

Every family here carries a ``node`` label (the node's name: ``--node-name``, else the host
name, or ``host:pid`` on Redis), from every node, in both modes, so one dashboard serves one
machine and a cluster. ``status`` is the master's published status document; None when the
broker did not answer (then only what the scoreboard and psutil tell is exported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.master import scoreboard as sb
from supervisor.observability.families import gauge, number
from supervisor.observability.procstats import ProcSampler

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
RENEWAL_OUTCOMES = ("ok", "failed")


def worker_families(
    node: str, scoreboard: sb.Scoreboard, procs: ProcSampler, status: dict[str, Any] | None
) -> Iterator[Metric]:
    by_state = dict.fromkeys(WORKER_STATES, 0)
    slots: list[tuple[int, int]] = []
    for slot in range(scoreboard.slots):
        view = scoreboard.read(slot)
        if view.pid <= 0 or view.state == sb.EMPTY:
            continue
        by_state[view.state_name] = by_state.get(view.state_name, 0) + 1
        slots.append((slot, view.pid))
    workers = GaugeMetricFamily(
        "supervisor_workers", "Worker processes by state.", labels=["node", "state"]
    )
    for state, n in by_state.items():
        workers.add_metric([node, state], n)
    yield workers
    samples = procs.sample([pid for _, pid in slots])
    rss = GaugeMetricFamily(
        "supervisor_worker_resident_memory_bytes",
        "Resident memory of each worker process, by slot.",
        labels=["node", "slot"],
    )
    cpu = CounterMetricFamily(
        "supervisor_worker_cpu_seconds_total",
        "CPU time (user + system) of the worker process now in each "
        "slot; restarts from 0 with a new process.",
        labels=["node", "slot"],
    )
    for slot, pid in slots:
        sample = samples.get(pid)
        if sample is not None:
            rss.add_metric([node, str(slot)], sample.rss_bytes)
            cpu.add_metric([node, str(slot)], sample.cpu_s)
    yield rss
    yield cpu
    if status is None:
        return
    yield gauge(
        "supervisor_workers_desired",
        "Worker processes wanted.",
        node,
        number(status.get("desired_workers", 0)),
    )
    yield gauge(
        "supervisor_worker_memory_limit_bytes",
        "max_memory_per_child in bytes (0: no limit).",
        node,
        number(status.get("max_memory_per_child_bytes", 0)),
    )
    restarts = CounterMetricFamily(
        "supervisor_worker_restarts_total",
        "Worker processes that ended and were replaced or retired, by reason (crash, "
        "timeout, hung, recycle-tasks, recycle-memory, shutdown, exit).",
        labels=["node", "reason"],
    )
    counts = status.get("restarts") or {}
    for reason in sorted(set(RESTART_REASONS) | set(counts)):
        restarts.add_metric([node, reason], number(counts.get(reason, 0)))
    yield restarts


def master_families(
    node: str,
    status: dict[str, Any] | None,
    *,
    heartbeat_age_s: float,
    graceful_timeout_s: float,
    dispatching: bool | None,
) -> Iterator[Metric]:
    yield gauge(
        "supervisor_master_heartbeat_age_seconds",
        "Seconds since the master's loop last ticked.",
        node,
        heartbeat_age_s,
    )
    yield gauge(
        "supervisor_graceful_timeout_seconds",
        "Seconds running tasks get to finish on SIGTERM.",
        node,
        graceful_timeout_s,
    )
    if dispatching is not None:
        yield gauge(
            "supervisor_dispatching",
            "1 while this node hands out tasks, 0 once its shutdown began.",
            node,
            1 if dispatching else 0,
        )
    if status is None:
        return
    state = GaugeMetricFamily(
        "supervisor_master_state",
        "1 for the master's current state (running, draining, stopping).",
        labels=["node", "state"],
    )
    for name in MASTER_STATES:
        state.add_metric([node, name], 1 if status.get("state") == name else 0)
    yield state
    yield gauge(
        "supervisor_master_loop_lag_seconds",
        "How late the master's last loop turn woke past its timer.",
        node,
        number(status.get("loop_lag_s", 0.0)),
    )


def lease_families(node: str, status: dict[str, Any] | None) -> Iterator[Metric]:
    """The master's lease counters (a backend with leases: Redis); nothing otherwise."""
    backend = (status or {}).get("backend")
    if not isinstance(backend, dict) or "lease_renewals" not in backend:
        return
    renewals = CounterMetricFamily(
        "supervisor_lease_renewals_total",
        "Rounds in which this node's master renewed the leases of its workers' tasks, by "
        "outcome (ok, failed: Redis did not answer).",
        labels=["node", "outcome"],
    )
    counts = backend.get("lease_renewals") or {}
    for outcome in RENEWAL_OUTCOMES:
        renewals.add_metric([node, outcome], number(counts.get(outcome, 0)))
    yield renewals
    lost = CounterMetricFamily(
        "supervisor_leases_lost_total",
        "Tasks of this node whose lease ran out and another node recovered (the worker is "
        "killed; its report would be refused).",
        labels=["node"],
    )
    lost.add_metric([node], number(backend.get("leases_lost", 0)))
    yield lost
