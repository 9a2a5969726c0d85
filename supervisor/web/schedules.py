"""Schedules for ``GET /api/schedules``, read in the broker process (its own engine, lazily).

A schedule's id is ``id`` in the answer (the store calls it ``task_id``). A database that is
locked or unreachable raises :class:`~supervisor.errors.DatabaseBusy` (the API answers 503,
retryable), never an empty list; only tables the scheduler has not created yet read as [].
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from supervisor.errors import DatabaseBusy

KEYS = (
    "id",
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
_RENAMED = {"id": "task_id"}
_NO_TABLE = ("no such table", "does not exist", "undefinedtable")


def schedule_doc(row: dict[str, Any]) -> dict[str, Any]:
    """One schedule as the API shows it."""
    return {k: row.get(_RENAMED.get(k, k)) for k in KEYS}


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
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            text = str(exc.orig if exc.orig is not None else exc).lower()
            if any(marker in text for marker in _NO_TABLE):
                return []  # no scheduler tables yet
            reason = "locked" if "locked" in text or "busy" in text else "unreachable"
            raise DatabaseBusy(
                f"the schedule database is {reason}: retry once it is free"
            ) from None
        return [schedule_doc(row) for row in rows]
