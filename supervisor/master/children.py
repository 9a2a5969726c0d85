"""What the master builds from the settings and the app: the workers and the scheduler process
it forks, the task types' options, the app's start hooks.

Pre-fork work only: each builder returns an object whose constructor touches no process state;
the child does its own setup after the fork (see :meth:`supervisor.worker.loop.Worker.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor.broker.backend import Connector
from supervisor.config import Settings
from supervisor.master import scoreboard as sb
from supervisor.registry import TaskOptions, TaskRegistry
from supervisor.worker.loop import Worker


def resolve_options(registry: TaskRegistry, settings: Settings) -> dict[str, TaskOptions]:
    """Every registered task type's options, with the settings' defaults filled in."""
    return {
        name: opts.resolved(
            timeout_s=settings.default_timeout,
            soft_timeout_s=settings.default_soft_timeout,
            max_retries=settings.max_retries,
            backoff_base_s=settings.backoff_base,
            backoff_cap_s=settings.backoff_cap,
        )
        for name, opts in registry.all_options().items()
    }


def default_options(s: Settings) -> TaskOptions:
    """The options of a task type that sets none."""
    return TaskOptions(
        timeout_s=s.default_timeout,
        soft_timeout_s=s.default_soft_timeout,
        max_retries=s.max_retries,
        backoff_base_s=s.backoff_base,
        backoff_cap_s=s.backoff_cap,
    )


def build_worker(
    slot: int,
    *,
    settings: Settings,
    registry: TaskRegistry,
    options: dict[str, TaskOptions],
    scoreboard: sb.Scoreboard,
    connect: Connector,
    master_pid: int,
    close_fds: tuple[int, ...],
) -> Worker:
    """The worker for ``slot``; ``connect`` makes its broker client after the fork."""
    s = settings
    return Worker(
        slot=slot,
        registry=registry,
        options=options,
        scoreboard=scoreboard,
        connect=connect,
        master_pid=master_pid,
        max_tasks=s.max_tasks_per_child,
        max_tasks_jitter=s.max_tasks_per_child_jitter,
        max_memory_bytes=s.max_memory_per_child * 1024 * 1024,
        max_payload_bytes=s.max_payload_bytes,
        max_result_bytes=s.max_result_bytes,
        heartbeat_timeout_s=s.heartbeat_timeout,
        log_successes=s.log_successes,
        close_fds=close_fds,
        queues=s.queues or None,
    )


def build_scheduler(
    *,
    settings: Settings,
    registry: TaskRegistry,
    connect: Callable[[], Any],
    declared: list[Any] | None,
    close_fds: tuple[int, ...],
) -> Any:
    """A SchedulerProcess for the settings (forked later by its handle)."""
    from supervisor.scheduling.process import SchedulerProcess

    return SchedulerProcess(
        database_url=settings.database,
        connect=connect,
        task_types=registry.names(),
        config_schedules=declared,
        close_fds=close_fds,
    )


def run_start_hooks(registry: TaskRegistry, queue: Any) -> None:
    """The app's ``on_master_start`` hooks, each given the seed queue; one that raises is
    logged with its traceback and the others still run: a hook never stops the master."""
    for hook in registry.on_start:
        try:
            hook(queue)
        except Exception as exc:
            logger.bind(component="master").opt(exception=exc).error(
                "on_master_start hook {} failed: {}", getattr(hook, "__name__", hook), exc
            )
