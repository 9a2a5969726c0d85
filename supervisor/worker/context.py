"""What a running handler can learn about its task: ``supervisor.current_task()``."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    type: str
    attempt: int
    priority: int
    scheduled_at: float | None  # the due time, for tasks fired by a schedule
    worker_slot: int


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "supervisor_task", default=None
)


def current_task() -> TaskContext | None:
    """The task this worker is running now, or None outside a handler."""
    return _current.get()


# Set by the worker: a callable telling whether a cancel was asked for the running task.
_cancel_probe: list[Callable[[], bool]] = []


def cancel_requested() -> bool:
    """True once ``supervisor tasks cancel`` (or ``Queue.cancel_task``) asked the running task
    to stop. A handler that checks it can clean up and raise :class:`~supervisor.Cancelled`;
    one that does not is killed after the cancel grace."""
    return bool(_cancel_probe[0]()) if _cancel_probe else False
