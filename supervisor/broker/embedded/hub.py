"""The broker's side rooms: the public store, and the status documents other processes publish.

A mixin of :class:`~supervisor.broker.embedded.memory.MemoryBroker`: nothing here touches the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from supervisor.broker.embedded.store import MemoryStore
from supervisor.errors import TaskError
from supervisor.registry import TaskOptions


class HubMixin:
    _cond: threading.Condition
    _clock: Callable[[], float]
    _status: dict[str, Any]
    _dispatching: bool
    _types: dict[str, TaskOptions] | None
    _scheduler: dict[str, Any]
    _scheduler_at: float | None
    store: MemoryStore

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def publish_status(self, status: dict[str, Any]) -> None:
        """The master's view of its workers, for ``supervisor status``."""
        with self._cond:
            self._status = status

    def get_status(self) -> dict[str, Any]:
        """Everything ``supervisor status`` shows: the master's, the queue's, the scheduler's."""
        scheduler, age = self.scheduler_status()
        return {
            "master": self._status,
            "stats": self.stats(),
            "scheduler": {**scheduler, "report_age_s": age} if scheduler else None,
        }

    def master_status(self) -> dict[str, Any]:
        """The master's last published status (empty before the first); no lock taken:
        ``publish_status`` replaces the dict whole, it is never changed in place."""
        return self._status

    def dispatching(self) -> bool:
        return self._dispatching

    def known_task_types(self) -> list[str]:
        """The registered task type names (empty when any type is accepted)."""
        with self._cond:
            return sorted(self._types or ())

    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        """The scheduler process's status document, about once a second (for ``status`` and
        the metrics); see :func:`supervisor.scheduling.status.status_doc` for its keys. The
        broker notes when it came, so a scheduler that stops reporting shows its age."""
        if not isinstance(doc, dict):
            raise TaskError(f"scheduler status must be a dict, got {type(doc).__name__}")
        with self._cond:
            self._scheduler = doc
            self._scheduler_at = self._clock()

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        """The scheduler's last published doc and its age in seconds (None: never published)."""
        with self._cond:
            at = self._scheduler_at
            return dict(self._scheduler), (None if at is None else self._clock() - at)

    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.store.set_public(key, value, ttl)

    def get_public(self, key: str) -> bytes | None:
        return self.store.get_public(key)

    def delete_public(self, key: str) -> bool:
        return self.store.delete_public(key)

    def cleanup(self) -> int:
        return self.store.cleanup()

    def get_store_size(self) -> int:
        return self.store.get_store_size()

    def list_keys(self) -> list[str]:
        return self.store.list_keys()

    def clear_store(self) -> None:
        self.store.clear_store()

    def ping(self) -> str:
        return "pong"
