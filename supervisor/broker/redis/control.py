"""Task records and control on Redis: cancel, list, count, retry, purge."""

from __future__ import annotations

from typing import Any

from supervisor.broker import base
from supervisor.broker.redis import codec
from supervisor.broker.redis.core import Core
from supervisor.errors import TaskError

SCAN_COUNT = 1000


class ControlMixin(Core):
    def cancel(self, task_id: str) -> str:
        """``cancelled`` (it was waiting: finished at once, never run), ``cancelling`` (it
        runs: flagged; its master learns it from :meth:`renew` or :meth:`pending_cancels`
        and stops the worker, and whatever ends the attempt ends the task cancelled),
        ``finished`` or ``unknown``."""
        return codec.text(self._run("cancel", [task_id]))

    def pending_cancels(self) -> list[tuple[str, str, float]]:
        """(consumer, task id, requested at) of running tasks a user cancelled whose consumer
        is on this node."""
        with self._guard():
            pending = self._client.hgetall(self._keys.cancel)
            ids = list(pending)
            owners = self._client.hmget(self._keys.owner, ids) if ids else []
        out = []
        prefix = self._node + "/"
        for task_id, owner in zip(ids, owners, strict=True):
            token = codec.text(owner)
            if not token.startswith(prefix):
                continue
            consumer = token[len(prefix) :].rpartition("|")[0]
            at = codec.time_or_none(codec.text(pending[task_id]))
            out.append((consumer, codec.text(task_id), at or 0.0))
        return out

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records newest first (by push time), filtered by status, type and push time.

        Walks the record hash (HSCAN; live tasks plus at most ``finished_records`` finished
        ones), and with a task table the finished records that have left Redis: an admin
        query, not for a hot path."""
        found: list[dict[str, Any]] = []
        with self._guard():
            for _, blob in self._client.hscan_iter(self._keys.task, count=SCAN_COUNT):
                rec = codec.decode_raw(blob)
                if (
                    (status is None or rec["status"] == status)
                    and (task_type is None or rec["type"] == task_type)
                    and (since is None or (rec["pushed_at"] or 0.0) >= since)
                ):
                    found.append(rec)
            found.sort(key=lambda r: r["pushed_at"] or 0.0, reverse=True)
            found = found[: max(1, limit)]
            pipe = self._client.pipeline(transaction=False)
            for rec in found:
                pipe.hget(self._keys.params, rec["task_id"])
                pipe.hget(self._keys.result, rec["task_id"])
            extra = pipe.execute() if found else []
        out = [
            codec.as_dict(rec, extra[2 * i], codec.decode_result(extra[2 * i + 1]))
            for i, rec in enumerate(found)
        ]
        if self._history is None:
            return out
        seen = {r["task_id"] for r in out}  # Redis has the newer state of a record in both
        older = self._history.query(status=status, task_type=task_type, since=since, limit=limit)
        out += [r.as_dict() for r in older if r.task_id not in seen]
        out.sort(key=lambda r: r["pushed_at"] or 0.0, reverse=True)
        return out[: max(1, limit)]

    def get_queue_stats(self) -> dict[str, int]:
        """Counts of task records by status (statuses with none left out)."""
        with self._guard():
            counts = self._client.hgetall(self._keys.nstatus)
        return {codec.text(k): int(v) for k, v in counts.items() if int(v) > 0}

    def retry_task(self, task_id: str) -> bool:
        """Queue a dead or cancelled task again with its attempts reset (its errors kept).
        False when it is not dead/cancelled, or another live task holds its unique key."""
        return bool(int(self._run("retry", [task_id])))

    def purge(self, status: str, older_than_s: float) -> int:
        """Forget finished records of ``status`` that finished more than ``older_than_s`` ago;
        return how many. Raises TaskError for a status that is not final."""
        if status not in base.FINAL_STATUSES:
            raise TaskError(
                f"only finished tasks can be purged "
                f"({', '.join(base.FINAL_STATUSES)}), got {status!r}"
            )
        now = self._clock()
        cutoff_ms = (now - float(older_than_s)) * 1000.0
        return int(self._run("purge", [status, repr(cutoff_ms)], now))
