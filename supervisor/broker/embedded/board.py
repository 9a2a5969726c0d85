"""The status board: the documents the master and the scheduler publish for ``status``.

The master publishes its view of its workers about once a second (and whenever they change);
the scheduler process its status document. The board notes when the scheduler's came, so one
that stops reporting shows its age. Nothing here touches the queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from supervisor.broker.validate import check_component
from supervisor.errors import TaskError

MAX_COMPONENTS = 1000  # a board is not a database: a runaway publisher is refused


class Board:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._master: dict[str, Any] = {}
        self._scheduler: dict[str, Any] = {}
        self._scheduler_at: float | None = None  # board clock of the last scheduler publish
        self._components: dict[str, tuple[dict[str, Any], float]] = {}

    def publish_status(self, status: dict[str, Any]) -> None:
        """The master's view of its workers (replaces the previous one, whole)."""
        self._master = status

    def master_status(self) -> dict[str, Any]:
        """The master's last published status (empty before the first); no lock taken: it is
        replaced whole, never changed in place."""
        return self._master

    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        if not isinstance(doc, dict):
            raise TaskError(f"scheduler status must be a dict, got {type(doc).__name__}")
        with self._lock:
            self._scheduler = doc
            self._scheduler_at = self._clock()

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        """The scheduler's last document and its age in seconds (None: never published)."""
        with self._lock:
            at = self._scheduler_at
            return dict(self._scheduler), (None if at is None else self._clock() - at)

    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        check_component(name, doc)
        with self._lock:
            if name not in self._components and len(self._components) >= MAX_COMPONENTS:
                raise TaskError(f"the board holds {MAX_COMPONENTS} components already")
            self._components[name] = (dict(doc), self._clock())

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            items = list(self._components.items())
        return {name: {**doc, "report_age_s": now - at} for name, (doc, at) in items}

    def status(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Everything ``supervisor status`` shows, around the broker's ``stats``."""
        scheduler, age = self.scheduler_status()
        return {
            "master": self._master,
            "stats": stats,
            "scheduler": {**scheduler, "report_age_s": age} if scheduler else None,
        }
