"""What a running handler can learn about its task: ``supervisor.current_task()``."""

from __future__ import annotations

import contextvars
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
