"""Control and queries over task records: cancel, list, count, purge.

A mixin of :class:`~supervisor.broker.embedded.memory.MemoryBroker` (the durable broker overrides
the
queries to read its database).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from supervisor.broker import base
from supervisor.broker.records import TaskRecord
from supervisor.errors import TaskError


class ControlMixin:
    _cond: threading.Condition
    _clock: Callable[[], float]
    _active: dict[str, TaskRecord]
    _finished: OrderedDict[str, TaskRecord]
    _held: dict[str, str]
    _by_status: Counter[str]

    def _finish(self, rec: TaskRecord, status: str, now: float) -> None:
        raise NotImplementedError

    def _uncount(self, rec: TaskRecord) -> None:
        raise NotImplementedError

    def _check_counts(self) -> None:
        raise NotImplementedError

    def cancel(self, task_id: str) -> str:
        """``cancelled`` (it was waiting), ``cancelling`` (it runs: its worker is told, then
        killed after a grace), ``finished`` or ``unknown``. Never retried afterwards."""
        with self._cond:
            rec = self._active.get(task_id)
            if rec is None:
                return "finished" if task_id in self._finished else "unknown"
            now = self._clock()
            if rec.cancel_requested_at is None:
                rec.cancel_requested_at = now
            if rec.status == base.RUNNING:
                return "cancelling"
            self._finish(rec, base.CANCELLED, now)  # its lane entry goes stale
            return base.CANCELLED

    def pending_cancels(self) -> list[tuple[str, str, float]]:
        """(consumer, task id, requested at) of running tasks a user cancelled."""
        with self._cond:
            return [
                (c, t, r.cancel_requested_at)
                for c, t in self._held.items()
                if (r := self._active.get(t)) is not None and r.cancel_requested_at is not None
            ]

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records in memory, newest first (the durable broker reads its database)."""
        with self._cond:
            recs = [
                r
                for r in (*self._active.values(), *self._finished.values())
                if (status is None or r.status == status)
                and (task_type is None or r.type == task_type)
                and (since is None or r.pushed_at >= since)
            ]
            recs.sort(key=lambda r: r.pushed_at, reverse=True)
            return [r.as_dict() for r in recs[: max(1, limit)]]

    def get_queue_stats(self) -> dict[str, int]:
        """Counts of the task records in memory by status."""
        with self._cond:
            return {s: n for s, n in self._by_status.items() if n}

    def purge(self, status: str, older_than_s: float) -> int:
        """Forget finished records of ``status`` that finished more than ``older_than_s`` ago."""
        if status not in base.FINAL_STATUSES:
            raise TaskError(
                f"only finished tasks can be purged "
                f"({', '.join(base.FINAL_STATUSES)}), got {status!r}"
            )
        with self._cond:
            cutoff = self._clock() - older_than_s
            old = [
                t
                for t, r in self._finished.items()
                if r.status == status and (r.finished_at or 0) < cutoff
            ]
            for t in old:
                self._uncount(self._finished.pop(t))
            return len(old)

    def held(self) -> dict[str, str]:
        """consumer -> task id, for every task being run now."""
        with self._cond:
            return dict(self._held)
