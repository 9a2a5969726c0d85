"""Counts of task records by status and of ready tasks by priority, kept on every change.

Metrics are scraped every few seconds, so ``stats`` must not walk the records: the core counts
each record under its status as it changes (``count`` / ``uncount``). ``counted`` (task id ->
the status it is counted under) makes un-counting a record that was put in place directly
(journal recovery) a no-op; a record removed directly (purge) shows as a size mismatch, and the
counts are rebuilt (``check``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from supervisor.broker import base
from supervisor.broker.records import TaskRecord
from supervisor.registry import DEFAULT_QUEUE, PRIORITY_MAX


class StatusCounts:
    def __init__(self) -> None:
        self.counted: dict[str, str] = {}
        self.by_status: Counter[str] = Counter()
        self.ready = [0] * (PRIORITY_MAX + 1)
        self.ready_by_queue: Counter[str] = Counter()

    def count(self, rec: TaskRecord) -> None:
        self.counted[rec.task_id] = rec.status
        self.by_status[rec.status] += 1
        if rec.status == base.QUEUED:
            self.ready[rec.priority] += 1
            self.ready_by_queue[rec.queue or DEFAULT_QUEUE] += 1

    def uncount(self, rec: TaskRecord) -> None:
        status = self.counted.pop(rec.task_id, None)
        if status is None:
            return  # never counted: put in place directly
        self.by_status[status] -= 1
        if status == base.QUEUED:
            self.ready[rec.priority] -= 1
            self.ready_by_queue[rec.queue or DEFAULT_QUEUE] -= 1

    def check(self, tracked: int, records: Callable[[], Iterable[TaskRecord]]) -> None:
        """Rebuild from ``records()`` if records were added or removed behind ``count`` (an
        O(1) check first: ``tracked`` is how many records there are)."""
        if len(self.counted) == tracked:
            return
        self.counted = {}
        self.by_status = Counter()
        self.ready = [0] * (PRIORITY_MAX + 1)
        self.ready_by_queue = Counter()
        for rec in records():
            self.count(rec)

    def nonzero(self) -> dict[str, int]:
        return {status: n for status, n in self.by_status.items() if n}
