"""The in-memory task record (the durable one in SQL comes with the task-state work)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TaskRecord:
    task_id: str
    type: str
    params: bytes
    priority: int
    status: str
    pushed_at: float
    eta: float | None = None
    attempts: int = 0
    seq: int = 0
    ready_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    consumer: str | None = None
    lease_until: float | None = None
    result: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    schedule_id: str | None = None
    scheduled_at: float | None = None
    unique_key: str | None = None
    cancel_requested_at: float | None = None
    queue: str | None = None  # the named queue; None until the broker routes it by type

    def message(self) -> dict[str, Any]:
        """What a consumer receives (see :mod:`supervisor.broker.base`)."""
        return {
            "task_id": self.task_id,
            "type": self.type,
            "params": self.params,
            "priority": self.priority,
            "attempt": self.attempts,
            "pushed_at": self.pushed_at,
            "scheduled_at": self.scheduled_at,
            "schedule_id": self.schedule_id,
            "queue": self.queue,
        }

    def as_dict(self) -> dict[str, Any]:
        last = self.errors[-1] if self.errors else None
        return {
            "task_id": self.task_id,
            "type": self.type,
            "params": self.params,
            "priority": self.priority,
            "status": self.status,
            "attempts": self.attempts,
            "pushed_at": self.pushed_at,
            "eta": self.eta,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "consumer": self.consumer,
            "result": self.result,
            "errors": [dict(e) for e in self.errors],
            "error": last["error"] if last else None,
            "traceback": last["traceback"] if last else None,
            "schedule_id": self.schedule_id,
            "scheduled_at": self.scheduled_at,
            "unique_key": self.unique_key,
            "cancel_requested_at": self.cancel_requested_at,
            "queue": self.queue,
        }
