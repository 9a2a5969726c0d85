"""The durable broker: the embedded broker with the journal as its change sink.

Every state change of a task is appended to the :class:`~supervisor.broker.embedded.journal.Journal`
under the broker's lock, by the thread that made it, before the call returns: a push is safe when
it returns, and a hand-out is in the log before the worker sees the task (so a task that ran is
never found "queued" after a crash: a re-run always shows as an extra attempt). On start, the
unfinished tasks come back: queued, scheduled and retrying ones as they were; running ones as an
attempt that ended with reason ``worker_lost`` (their worker died with the master), through the
usual retry policy.

Queries over every record (list, counts, records evicted from memory) read the task table once
the log is folded into it. When it cannot be (the SQLite file is locked by a backup or a
migration), they raise :class:`~supervisor.errors.DatabaseBusy` instead of answering from a
table that is behind: never a silently wrong answer.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from loguru import logger

from supervisor.broker import base
from supervisor.broker.embedded import control
from supervisor.broker.embedded.journal import Journal
from supervisor.broker.embedded.memory import DAY_S, MemoryBroker
from supervisor.broker.embedded.tasktable import snapshot, task_record
from supervisor.broker.records import TaskRecord
from supervisor.errors import BrokerError

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


class JournalSink:
    """One journal write per request, whatever it changed: a push and the hand-over of that
    task to a parked worker, or a report and the next hand-out. It is made before the lock is
    released (the log keeps the broker's order) and before anyone is answered; and the room for
    it is made sure of before anything changes, so a full disk refuses the call cleanly.
    A change outside a request (a cancel from the HTTP API) is written at once."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        # Rows of the request being served. Only the holder of the broker's lock touches it.
        self._batch: list[tuple[Any, ...]] | None = None

    def begin(self, method: str, args: tuple[Any, ...]) -> None:
        self.journal.ensure_room(_room_for(method, args))
        self._batch = []

    def changed(self, rec: TaskRecord) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(snapshot(rec))
        else:
            self.journal.write(snapshot(rec))  # in the log (safe) when this returns

    def end(self) -> BaseException | None:
        rows, self._batch = self._batch, None
        if rows:
            try:
                self.journal.write_many(rows)
            except BrokerError as exc:
                return exc
        return None


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
        super().__init__(
            changes=JournalSink(journal),
            result_ttl_s=result_ttl_s,
            failure_ttl_s=failure_ttl_s,
            **options,
        )
        self._journal = journal
        self._janitor_interval = janitor_interval_s
        self._stop = threading.Event()
        self.log = logger.bind(component="broker")
        journal.migrate()
        self.recovered = self._recover()
        journal.start()
        threading.Thread(target=self._janitor, name="janitor", daemon=True).start()

    # -- queries over every record: the database, once up to date ---------------------------
    def _known(self, rec: TaskRecord | None) -> TaskRecord | None:
        """``rec`` from the table, unless its time to live passed (then it is unknown)."""
        if rec is None or control.expired(self.core, rec, self._clock()):
            return None
        return rec

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        found = super().get_task(task_id)
        if found is not None:
            return found
        rec = self._known(self._journal.get(task_id))
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
        with self.lock:
            for rec in rows:
                live = self.core.active.get(rec.task_id) or self.core.finished.get(rec.task_id)
                known = self._known(live or rec)
                if known is not None:
                    out.append(known.as_dict())
        return out

    def get_queue_stats(self) -> dict[str, int]:
        """Counts by status over every recorded task (the database's view)."""
        return self._journal.counts()

    def cancel(self, task_id: str) -> str:
        outcome = super().cancel(task_id)
        if outcome == "unknown" and self._known(self._journal.get(task_id)) is not None:
            return "finished"
        return outcome

    def retry_task(self, task_id: str) -> bool:
        with self.lock:
            known = task_id in self.core.finished or task_id in self.core.active
        # Read the database outside the broker lock: a slow query must not stall dispatch.
        stored = None if known else self._known(self._journal.get(task_id))
        with self.lock:
            core = self.core
            if (
                stored is not None
                and stored.status in base.FINAL_STATUSES
                and task_id not in core.finished
                and task_id not in core.active
            ):
                core.finished[task_id] = stored  # evicted from memory: bring it back
                core.counts.count(stored)
            return super().retry_task(task_id)

    def purge(self, status: str, older_than_s: float) -> int:
        """Delete finished records of ``status`` that finished more than ``older_than_s`` ago."""
        control.check_final(status)
        cutoff = self._clock() - older_than_s
        n = self._journal.delete(
            sa.and_(task_record.c.status == status, task_record.c.finished_at < cutoff)
        )
        super().purge(status, older_than_s)
        return n

    # -- lifecycle ---------------------------------------------------------------------------
    def _recover(self) -> int:
        recs = self._journal.load_active()
        now = self._clock()
        with self.lock:
            core = self.core
            for rec in recs:
                if rec.status == base.RUNNING:
                    rec.consumer = None
                    core.active[rec.task_id] = rec
                    core.counts.count(rec)  # tracked as running, so that fail can move it
                    detail = {"error": "the master stopped while the task was running"}
                    core.fail(rec, base.REASON_WORKER_LOST, detail, now)
                else:
                    delayed = rec.status if rec.status == base.RETRYING else base.SCHEDULED
                    core.enqueue(rec, delayed_status=delayed)
        if recs:
            self.log.info("recovered {} unfinished task(s) from the journal", len(recs))
        return len(recs)

    def _janitor(self) -> None:
        while not self._stop.wait(self._janitor_interval):
            self.expire_results()

    def expire_results(self) -> int:
        """Delete finished records whose time to live passed, in small batches."""
        now = self._clock()
        c = task_record.c
        core = self.core
        try:
            n = self._journal.delete(
                sa.or_(
                    sa.and_(c.status == base.SUCCEEDED, c.finished_at < now - core.result_ttl),
                    sa.and_(
                        c.status.in_((base.DEAD, base.CANCELLED)),
                        c.finished_at < now - core.failure_ttl,
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
        super().close()
        self._stop.set()
        self._journal.close()
