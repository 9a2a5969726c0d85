"""The durable broker: the embedded broker plus a journal, so a restart loses nothing.

Every state change of a task is appended to the :class:`~supervisor.broker.embedded.journal.Journal`
under the broker's lock, by the thread that made it, before the call returns: a push is safe when
it returns, and a hand-out is in the log before the worker sees the task (so a task that ran is
never found "queued" after a crash: a re-run always shows as an extra attempt). On start, the
unfinished tasks come back: queued, scheduled and retrying ones as they were; running ones as an
attempt that ended with reason ``worker_lost`` (their worker died with the master), through the
usual retry policy.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from loguru import logger

from supervisor.broker import base
from supervisor.broker.embedded.journal import Journal
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.tasktable import snapshot, task_record
from supervisor.broker.records import TaskRecord
from supervisor.errors import BrokerError, TaskError

DAY_S = 86_400.0


ROOM_BYTES = 1 << 20  # journal room made sure of before a hot call changes anything


def _room_for(method: str, args: tuple[Any, ...]) -> int:
    """An upper bound, in practice, of what one hot call appends: a push and its hand-over
    carry the params twice; a report's errors are bounded (4 KB + 16 KB a failed attempt)."""
    messages = args[0] if method == "push_many" and args else args[:1] if method == "push" else ()
    params = 0
    if isinstance(messages, list | tuple):
        for m in messages:
            if isinstance(m, dict) and isinstance(m.get("params"), bytes):
                params += len(m["params"]) + 1024
    return ROOM_BYTES + 2 * params


class DurableBroker(MemoryBroker):
    def __init__(
        self,
        *,
        journal: Journal,
        result_ttl_s: float = 7 * DAY_S,
        failure_ttl_s: float = 30 * DAY_S,
        janitor_interval_s: float = 60.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._journal = journal
        self._result_ttl = result_ttl_s
        self._failure_ttl = failure_ttl_s
        self._janitor_interval = janitor_interval_s
        # Rows of the request being served, written as one frame at its end. Only the holder of
        # the broker's lock touches it, and serve_hot/exchange never wait while they hold it.
        self._batch: list[tuple[Any, ...]] | None = None
        self._stop = threading.Event()
        self.log = logger.bind(component="broker")
        journal.migrate()
        self.recovered = self._recover()
        journal.start()
        threading.Thread(target=self._janitor, name="janitor", daemon=True).start()

    # -- the journal hook (called with the broker's lock held) ------------------------------
    def _changed(self, rec: TaskRecord) -> None:
        batch = self._batch
        if batch is not None:  # inside exchange(): one write for the report and the hand-out
            batch.append(snapshot(rec))
        else:
            self._journal.write(snapshot(rec))  # in the log (safe) when this returns

    # -- the worker's hot path ---------------------------------------------------------------
    def exchange(self, consumer: str, report: Any, wait_s: float | None) -> dict[str, Any] | None:
        # The worker's hot path: the outcome of its last task and the hand-out of the next are
        # journaled in one write, under the broker's (reentrant) lock so that the log keeps the
        # broker's order. Only when nothing is ready does it wait, as a plain pop.
        with self._cond:
            self._begin_changes("exchange", ())
            try:
                if report is not None:
                    self.report(consumer, report)
                msg = super().pop(consumer, 0.0)
            finally:
                failed = self._end_changes()
            if failed is not None:
                raise failed
        return msg if msg is not None else self.pop(consumer, wait_s)

    # One journal write per request, whatever it changed: a push and the hand-over of that task
    # to a parked worker, or a report and the next hand-out. It is made before the lock is
    # released (the log keeps the broker's order) and before anyone is answered; and the room
    # for it is made sure of before anything changes, so a full disk refuses the call cleanly.
    def _begin_changes(self, method: str, args: tuple[Any, ...]) -> None:
        self._journal.ensure_room(_room_for(method, args))
        self._batch = []

    def _end_changes(self) -> BaseException | None:
        rows, self._batch = self._batch, None
        if rows:
            try:
                self._journal.write_many(rows)
            except BrokerError as exc:
                return exc
        return None

    def retry_task(self, task_id: str) -> bool:
        with self._cond:
            known = task_id in self._finished or task_id in self._active
        # Read the database outside the broker lock: a slow query must not stall dispatch.
        stored = None if known else self._journal.get(task_id)
        with self._cond:
            if (
                stored is not None
                and stored.status in base.FINAL_STATUSES
                and task_id not in self._finished
                and task_id not in self._active
            ):
                self._finished[task_id] = stored  # evicted from memory: bring it back
                self._count(stored)
            return super().retry_task(task_id)

    # -- queries fall back to the database ---------------------------------------------------
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        found = super().get_task(task_id)
        if found is not None:
            return found
        rec = self._journal.get(task_id)
        return None if rec is None else rec.as_dict()

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records from the database, newest first (active ones as the broker sees them)."""
        rows = self._journal.query(status=status, task_type=task_type, since=since, limit=limit)
        out = []
        with self._cond:
            for rec in rows:
                live = self._active.get(rec.task_id) or self._finished.get(rec.task_id)
                out.append((live or rec).as_dict())
        return out

    def cancel(self, task_id: str) -> str:
        outcome = super().cancel(task_id)
        if outcome == "unknown" and self._journal.get(task_id) is not None:
            return "finished"
        if outcome == "cancelling":  # record the request: a restart must not retry the task
            with self._cond:
                rec = self._active.get(task_id)
                if rec is not None:
                    self._changed(rec)
        return outcome

    def get_queue_stats(self) -> dict[str, int]:
        """Counts by status over every recorded task (the database's view)."""
        return self._journal.counts()

    def purge(self, status: str, older_than_s: float) -> int:
        """Delete finished records of ``status`` that finished more than ``older_than_s`` ago."""
        if status not in base.FINAL_STATUSES:
            raise TaskError(
                f"only finished tasks can be purged "
                f"({', '.join(base.FINAL_STATUSES)}), got {status!r}"
            )
        cutoff = self._clock() - older_than_s
        n = self._journal.delete(
            sa.and_(task_record.c.status == status, task_record.c.finished_at < cutoff)
        )
        with self._cond:
            for tid in [
                t
                for t, r in self._finished.items()
                if r.status == status and (r.finished_at or 0) < cutoff
            ]:
                self._uncount(self._finished.pop(tid))
        return n

    # -- lifecycle ---------------------------------------------------------------------------
    def _recover(self) -> int:
        recs = self._journal.load_active()
        now = self._clock()
        with self._cond:
            for rec in recs:
                if rec.status == base.RUNNING:
                    rec.consumer = None
                    self._active[rec.task_id] = rec
                    self._count(rec)  # tracked as running, so that _fail can move it
                    self._fail(
                        rec,
                        base.REASON_WORKER_LOST,
                        {"error": "the master stopped while the task was running"},
                        now,
                    )
                else:
                    delayed = rec.status if rec.status == base.RETRYING else base.SCHEDULED
                    self._enqueue(rec, delayed_status=delayed)
        if recs:
            self.log.info("recovered {} unfinished task(s) from the journal", len(recs))
        return len(recs)

    def _janitor(self) -> None:
        while not self._stop.wait(self._janitor_interval):
            self.expire_results()

    def expire_results(self) -> int:
        """Delete finished records whose result TTL passed, in small batches."""
        now = self._clock()
        c = task_record.c
        try:
            n = self._journal.delete(
                sa.or_(
                    sa.and_(c.status == base.SUCCEEDED, c.finished_at < now - self._result_ttl),
                    sa.and_(
                        c.status.in_((base.DEAD, base.CANCELLED)),
                        c.finished_at < now - self._failure_ttl,
                    ),
                )
            )
        except Exception as exc:
            self.log.error("expiring old task records failed: {}", exc)
            return 0
        if n:
            self.log.info("expired {} finished task record(s)", n)
        return n

    def close(self) -> None:
        self.stop_dispatcher()
        self._stop.set()
        self._journal.close()
