"""Schedules for ``GET /api/schedules``, read in the broker process (its own engine, lazily)."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

_KEYS = (
    "task_id",
    "name",
    "task_type",
    "schedule_type",
    "enabled",
    "next_run_at",
    "run_count",
    "interval_seconds",
    "cron_expression",
    "execute_at",
    "timezone",
    "priority",
    "max_runs",
    "description",
)


class ScheduleLister:
    """Callable returning the schedules as JSON-able dicts ([] before the scheduler made its
    tables)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._store: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> list[dict[str, Any]]:
        from supervisor.db import make_engine
        from supervisor.scheduling.store import ScheduleStore

        with self._lock:
            if self._store is None:
                self._store = ScheduleStore(make_engine(self.database_url))
        try:
            rows = self._store.list_tasks()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return []  # no scheduler tables yet
        return [{k: row.get(k) for k in _KEYS} for row in rows]
