"""The seed's ``get_scheduler()`` from any process: manage schedules in the database.

>>> from supervisor.scheduling.client import get_scheduler
>>> scheduler = get_scheduler()                      # SUPERVISOR_DATABASE or sqlite:///supervisor.db
>>> task_id = scheduler.add_scheduler_task(name="测试任务", task_type="test_task",
...     schedule_type="interval", interval_seconds=10, params={"message": "Hello"}, max_runs=5)

Every call is its own short transaction; the running scheduler process sees a change within a
second (it re-reads the earliest due time at least once a second). The task type is checked
against the types the running scheduler recorded for its app (when one has run on this
database); ``known_task_types`` overrides that.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from sqlalchemy.engine import Engine

from supervisor.db import make_engine
from supervisor.scheduling.store import ScheduleStore

DEFAULT_DATABASE = "sqlite:///supervisor.db"
_lock = threading.Lock()
_schedulers: dict[tuple[int, str], Scheduler] = {}


def default_database_url() -> str:
    """``SUPERVISOR_DATABASE``, else a SQLite file in the working directory."""
    return os.environ.get("SUPERVISOR_DATABASE") or DEFAULT_DATABASE


class RegisteredTaskTypes(Collection[str]):
    """A live view of the task types recorded in the database by the running scheduler.

    Empty (no scheduler has recorded its types) means "unknown": every type is accepted.
    """

    def __init__(self, store: ScheduleStore) -> None:
        self._store = store

    def _names(self) -> list[str]:
        return self._store.registered_task_types()

    def __contains__(self, name: object) -> bool:
        names = self._names()
        return not names or name in names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class Scheduler:
    """The seed's scheduler API over :class:`ScheduleStore` (every method is one transaction).

    ``add_scheduler_task(name, task_type, schedule_type, interval_seconds=, cron_expression=,
    execute_at=, params=, max_runs=, description=, **other ScheduleSpec fields) -> id``,
    ``get_task``, ``list_tasks(enabled_only=False)``, ``update_task(id, **fields)``,
    ``pause_task``, ``resume_task``, ``delete_task`` (each False for an unknown schedule),
    ``preview(id, n)`` (the next fire times). Each takes a schedule's id or its name (names are
    unique; an id wins). Invalid input, or a name already taken, raises ScheduleError naming
    the field.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        known_task_types: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        probe = ScheduleStore(engine, clock=clock)
        probe.migrate()
        known = known_task_types if known_task_types is not None else RegisteredTaskTypes(probe)
        self.store = ScheduleStore(engine, clock=clock, known_task_types=known)

    @classmethod
    def from_url(
        cls,
        database_url: str | None = None,
        *,
        known_task_types: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Scheduler:
        return cls(
            make_engine(database_url or default_database_url()),
            known_task_types=known_task_types,
            clock=clock,
        )

    def add_scheduler_task(self, *args: Any, **kwargs: Any) -> str:
        return self.store.add_scheduler_task(*args, **kwargs)

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        return self.store.get_task(task_id)

    def list_tasks(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        return self.store.list_tasks(enabled_only=enabled_only)

    def update_task(self, task_id: str, **fields: Any) -> bool:
        return self.store.update_task(task_id, **fields)

    def pause_task(self, task_id: str) -> bool:
        return self.store.pause_task(task_id)

    def resume_task(self, task_id: str) -> bool:
        return self.store.resume_task(task_id)

    def delete_task(self, task_id: str) -> bool:
        return self.store.delete_task(task_id)

    def preview(self, task_id: str, n: int = 10) -> list[float]:
        return self.store.preview(task_id, n)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def get_scheduler(database_url: str | None = None) -> Scheduler:
    """The process's scheduler for ``database_url`` (default: see :func:`default_database_url`).

    One instance per URL and process, made on first use (the seed's ``get_scheduler()``). It
    does not fire anything itself: the ``supervisor run`` scheduler process does.
    """
    url = database_url or default_database_url()
    key = (os.getpid(), url)
    with _lock:
        found = _schedulers.get(key)
        if found is None:
            found = _schedulers[key] = Scheduler.from_url(url)
        return found
