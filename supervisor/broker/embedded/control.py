"""Control and queries over the task core's records: cancel, retry, TTL, list, count, purge, stats.

Functions of a :class:`~supervisor.broker.embedded.core.TaskCore`, called with the broker's lock
held. ``stats`` is O(priorities + task types), whatever the number of records: it is scraped
often. The durable broker answers the queries over every record from its database instead.
"""

from __future__ import annotations

from typing import Any

from supervisor.broker import base
from supervisor.broker.embedded.core import TaskCore
from supervisor.broker.records import TaskRecord
from supervisor.errors import TaskError
from supervisor.registry import PRIORITY_MAX, PRIORITY_MIN


def expired(core: TaskCore, rec: TaskRecord, now: float) -> bool:
    """Whether a finished record outlived its time to live (it is then unknown)."""
    if rec.finished_at is None or rec.status not in base.FINAL_STATUSES:
        return False
    ttl = core.result_ttl if rec.status == base.SUCCEEDED else core.failure_ttl
    return rec.finished_at + ttl <= now


def lookup(core: TaskCore, task_id: str) -> TaskRecord | None:
    """The live or finished record of ``task_id`` (None: unknown, or past its TTL)."""
    rec = core.active.get(task_id) or core.finished.get(task_id)
    return None if rec is None or expired(core, rec, core.clock()) else rec


def expire_finished(core: TaskCore, now: float) -> int:
    """Forget finished records past their TTL, oldest first. Records are in the order they
    finished: the scan stops at the first one younger than the shorter TTL."""
    young_after = now - min(core.result_ttl, core.failure_ttl)
    gone = []
    for task_id, rec in core.finished.items():
        if (rec.finished_at or now) > young_after:
            break
        if expired(core, rec, now):
            gone.append(task_id)
    for task_id in gone:
        core.counts.uncount(core.finished.pop(task_id))
    return len(gone)


def cancel(core: TaskCore, task_id: str) -> str:
    """``cancelled`` (it was waiting), ``cancelling`` (it runs: its master is told, then kills
    it after a grace), ``finished`` or ``unknown``. Never retried afterwards."""
    rec = core.active.get(task_id)
    if rec is None:
        return "finished" if lookup(core, task_id) is not None else "unknown"
    now = core.clock()
    if rec.cancel_requested_at is None:
        rec.cancel_requested_at = now
    if rec.status == base.RUNNING:
        core.changes.changed(rec)  # recorded: a restart must not retry the task
        return "cancelling"
    core.finish(rec, base.CANCELLED, now)  # its lane entry goes stale
    return base.CANCELLED


def pending_cancels(core: TaskCore) -> list[tuple[str, str, float]]:
    return [
        (c, t, r.cancel_requested_at)
        for c, t in core.held.items()
        if (r := core.active.get(t)) is not None and r.cancel_requested_at is not None
    ]


def retry(core: TaskCore, task_id: str) -> bool:
    """Queue a dead or cancelled task again, attempts reset, its error history kept."""
    rec = lookup(core, task_id)
    if rec is None or rec.status not in (base.DEAD, base.CANCELLED):
        return False
    if core.existing_unique(rec) not in (None, task_id):
        return False  # another live task holds its unique key now
    rec.attempts = 0
    rec.eta = None
    rec.finished_at = None
    rec.cancel_requested_at = None
    core.enqueue(rec)  # takes it out of the finished records
    return True


def check_final(status: str) -> None:
    if status not in base.FINAL_STATUSES:
        raise TaskError(
            f"only finished tasks can be purged ({', '.join(base.FINAL_STATUSES)}), got {status!r}"
        )


def purge(core: TaskCore, status: str, older_than_s: float) -> int:
    """Forget finished records of ``status`` that finished more than ``older_than_s`` ago."""
    check_final(status)
    cutoff = core.clock() - older_than_s
    old = [
        t for t, r in core.finished.items() if r.status == status and (r.finished_at or 0) < cutoff
    ]
    for t in old:
        core.counts.uncount(core.finished.pop(t))
    return len(old)


def list_records(
    core: TaskCore, status: str | None, task_type: str | None, since: float | None, limit: int
) -> list[dict[str, Any]]:
    now = core.clock()
    recs = [
        r
        for r in (*core.active.values(), *core.finished.values())
        if (status is None or r.status == status)
        and (task_type is None or r.type == task_type)
        and (since is None or r.pushed_at >= since)
        and not expired(core, r, now)
    ]
    recs.sort(key=lambda r: r.pushed_at, reverse=True)
    return [r.as_dict() for r in recs[: max(1, limit)]]


def check_counts(core: TaskCore) -> None:
    core.counts.check(
        len(core.active) + len(core.finished),
        lambda: (*core.active.values(), *core.finished.values()),
    )


def queue_size(core: TaskCore) -> int:
    core.promote(core.clock())
    check_counts(core)
    return sum(core.counts.ready)


def oldest_ready_at(core: TaskCore, prio: int) -> float | None:
    """When the longest-waiting ready task of priority ``prio`` became ready (None: none).

    Lanes are FIFO by ready time except entries put back at the front (shutdown requeues),
    which sit before every other entry: look at those and the first ordinary live entry of
    each queue's lane. Stale entries at the head are dropped on the way (``take`` would skip
    them anyway)."""
    oldest: float | None = None
    for lanes in core.ready.values():
        lane = lanes[prio]
        core.head(lane)
        for task_id, seq in lane:
            if not core.live(task_id, seq):
                continue
            rec = core.active[task_id]
            ready_at = rec.ready_at if rec.ready_at is not None else core.clock()
            oldest = ready_at if oldest is None else min(oldest, ready_at)
            if seq not in core.front_seqs:
                break
    return oldest


def stats(core: TaskCore) -> dict[str, Any]:
    """The queue's part of ``Broker.stats`` (the broker adds the store's size)."""
    now = core.clock()
    core.promote(now)
    check_counts(core)
    by_priority: dict[int, int] = {}
    oldest: dict[int, float] = {}
    for prio in range(PRIORITY_MIN, PRIORITY_MAX + 1):
        if core.counts.ready[prio]:
            by_priority[prio] = core.counts.ready[prio]
            ready_at = oldest_ready_at(core, prio)
            oldest[prio] = 0.0 if ready_at is None else max(0.0, now - ready_at)
    counts = core.counts.nonzero()
    return {
        "queued": sum(by_priority.values()),
        "by_priority": by_priority,
        "by_queue": {q: n for q, n in core.counts.ready_by_queue.items() if n},
        "oldest_age_s": oldest,
        "scheduled": counts.get(base.SCHEDULED, 0),
        "retrying": counts.get(base.RETRYING, 0),
        "running": len(core.held),
        "by_status": counts,
        "dispatching": core.dispatching,
        "counters": dict(core.counters),
    }
