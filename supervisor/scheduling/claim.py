"""Firing due schedules: each due time is pushed at most once.

The guarantee, and why it holds:

1. **Claim, commit, then push.** One transaction claims a batch of due schedules (up to
   ``batch_size``): it (a) re-reads their rows, locked -- ``BEGIN IMMEDIATE`` on SQLite,
   ``FOR UPDATE SKIP LOCKED`` where the database has it --, (b) inserts one ``schedule_fire``
   row per due time to fire, unique on ``(schedule_id, due_at)``, with status ``claimed``, and
   (c) advances each row's ``next_run_at``, ``run_count`` and ``last_run_at`` with a
   compare-and-set on the ``next_run_at`` it read. Only after the commit are the fires pushed
   (the ``fire`` / ``fire_many`` callbacks), and then their rows are marked ``pushed`` (or
   ``failed``), in one transaction per call.
2. A crash (``kill -9``) before the commit leaves nothing behind: the due times are still due
   and fire after the restart (subject to the misfire policy). A crash after the commit leaves
   them recorded: no later claim fires them again, because ``next_run_at`` has moved past them
   and, should anything move it back (a resume, an edit, a second scheduler), the unique fire
   row refuses the insert. The push comes after the commit, so no sequence of crashes fires a
   due time twice.
3. Two schedulers on one database: the row locks (or SQLite's single writer) serialize them;
   the one that comes second sees ``next_run_at`` advanced, or skips the rows the first one
   holds. Were the lock missing (an engine not made by
   :func:`~supervisor.db.make_engine`), the compare-and-set or the unique fire
   row fails for the loser: its batch rolls back and is claimed again one schedule at a time,
   so only the schedule really taken by the other scheduler is given up.

Why batches: a transaction costs far more than a row, so claiming 100 due schedules in one
keeps a burst of due times within milliseconds of their due time (see ``bench/``).

The price of at-most-once is the window between commit and push: a crash there, or a push that
raises, leaves a fire row ``claimed`` or ``failed`` and the run not queued. Such rows are logged
and kept; :mod:`supervisor.scheduling.recover` pushes them again under the same deterministic
task id (``sched-<schedule>-<due ms>``).

The parts: this module is the claim transaction (lock, insert fire rows, compare-and-set);
:mod:`supervisor.scheduling.plan` decides per row, :mod:`supervisor.scheduling.fires` pushes
after the commit and records the outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from supervisor.scheduling.fires import (
    Claimed,
    FireCallback,
    FireMany,
    FireOutcome,
    mark,
    push_all,
)
from supervisor.scheduling.models import schedule_fire, scheduler_task, writer
from supervisor.scheduling.plan import Plan, finish_reason, log_plan, plan_row
from supervisor.scheduling.rows import fire_task_id

__all__ = ["DEFAULT_BATCH", "ActiveCount", "FireCallback", "FireMany", "FireOutcome", "claim_due"]

ActiveCount = Callable[[str], int]
_log = logger.bind(component="scheduler")
DEFAULT_BATCH = 100  # due schedules claimed per transaction


class _LostRace(Exception):
    pass


# The hot statements, built once (building a statement costs more than running it on SQLite).
_NO_LIMIT = 2**31 - 1  # fits an INTEGER bind everywhere
_DUE = (
    sa.select(scheduler_task.c.task_id, scheduler_task.c.overlap, scheduler_task.c.run_count)
    .where(
        scheduler_task.c.enabled.is_(True),
        scheduler_task.c.next_run_at <= sa.bindparam("now", type_=sa.Float),
    )
    .order_by(scheduler_task.c.next_run_at)
    .limit(sa.bindparam("lim", type_=sa.Integer))
)
_LOCK_DUE = (
    sa.select(scheduler_task)
    .where(
        scheduler_task.c.task_id.in_(sa.bindparam("ids", expanding=True)),
        scheduler_task.c.enabled.is_(True),
        scheduler_task.c.next_run_at <= sa.bindparam("now", type_=sa.Float),
    )
    .order_by(scheduler_task.c.next_run_at)
    .with_for_update(skip_locked=True)
)
_ALREADY = sa.select(schedule_fire.c.schedule_id, schedule_fire.c.due_at).where(
    schedule_fire.c.schedule_id.in_(sa.bindparam("sids", expanding=True)),
    schedule_fire.c.due_at.in_(sa.bindparam("dues", expanding=True)),
)


def claim_due(
    engine: Engine,
    now: float,
    fire: FireCallback,
    *,
    counters: Counter[str],
    active_instances: ActiveCount | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    fire_many: FireMany | None = None,
) -> list[FireOutcome]:
    """Fire the enabled schedules due at ``now`` (at most ``limit``), ``batch_size`` per claim.

    Each batch is pushed right after its commit, through ``fire_many`` when given (one broker
    round trip) or ``fire`` per message. ``active_instances(schedule_id)`` is asked, before the
    transaction, for schedules with ``overlap="skip"``. Returns what was handed to the push.
    Skips, misfires and lost races are logged and added to ``counters``; a database error is
    logged, counted as ``db_error`` and ends the call (the rest is claimed at the next one).
    """
    with engine.connect() as conn:
        due = [
            (r[0], r[1], r[2])
            for r in conn.execute(_DUE, {"now": now, "lim": _NO_LIMIT if limit is None else limit})
        ]
    outcomes: list[FireOutcome] = []
    for start in range(0, len(due), max(1, batch_size)):
        chunk = due[start : start + max(1, batch_size)]
        # Asked before the transaction: no broker round trip while holding the write lock. A
        # schedule that never ran has no live run to ask about.
        active = (
            {
                sid: active_instances(sid)
                for sid, overlap, runs in chunk
                if overlap == "skip" and runs
            }
            if active_instances is not None
            else {}
        )
        claims, ok = _claim_chunk(engine, [sid for sid, _, _ in chunk], now, counters, active)
        outcomes.extend(push_all(claims, fire=fire, fire_many=fire_many, counters=counters))
        if not ok:
            break
    mark(engine, outcomes)  # one transaction for the whole call
    return outcomes


def _claim_chunk(
    engine: Engine, ids: list[str], now: float, counters: Counter[str], active: dict[str, int]
) -> tuple[list[Claimed], bool]:
    """Claim ``ids`` in one transaction; one by one if another scheduler took one of them.

    Returns the claims and False when a database error stopped the claiming.
    """
    try:
        return _claim_txn(engine, ids, now, counters, active), True
    except (_LostRace, IntegrityError):
        if len(ids) == 1:
            counters["lost_race"] += 1
            _log.bind(schedule_id=ids[0]).info(
                "schedule {} was claimed by another scheduler; not firing it here", ids[0]
            )
            return [], True
    except OperationalError as exc:
        counters["db_error"] += 1
        _log.warning(
            "could not claim {} due schedule(s) ({}); retrying at the next tick", len(ids), exc
        )
        return [], False
    claims: list[Claimed] = []
    for sid in ids:
        got, ok = _claim_chunk(engine, [sid], now, counters, active)
        claims.extend(got)
        if not ok:
            return claims, False
    return claims, True


def _claim_txn(
    engine: Engine, ids: list[str], now: float, counters: Counter[str], active: dict[str, int]
) -> list[Claimed]:
    with writer(engine).begin() as conn:
        rows = conn.execute(_LOCK_DUE, {"ids": ids, "now": now}).mappings().all()
        plans = [plan_row(row, now, active.get(row["task_id"], 0)) for row in rows]
        _drop_already_fired(conn, plans)
        inserts = [
            {
                "schedule_id": p.sid,
                "due_at": d,
                "task_id": fire_task_id(p.sid, d),
                "claimed_at": now,
                "status": "claimed",
            }
            for p in plans
            for d in p.due
        ]
        if inserts:
            conn.execute(schedule_fire.insert(), inserts)
        _advance(conn, plans, now)
    for plan in plans:  # after the commit: a rolled-back batch logs and counts nothing
        log_plan(plan, now, counters)
    return [
        Claimed(
            p.sid,
            p.row["name"],
            {"type": p.row["task_type"], "params": p.params, "priority": p.row["priority"]},
            p.due,
        )
        for p in plans
        if p.decision is not None
    ]


def _drop_already_fired(conn: sa.Connection, plans: list[Plan]) -> None:
    wanted = [p for p in plans if p.due]
    if not wanted:
        return
    found = {
        (sid, float(due))
        for sid, due in conn.execute(
            _ALREADY,
            {"sids": [p.sid for p in wanted], "dues": sorted({d for p in wanted for d in p.due})},
        )
    }
    for p in wanted:
        p.already = tuple(d for d in p.due if (p.sid, d) in found)
        p.due = tuple(d for d in p.due if (p.sid, d) not in found)


_ADVANCE = (
    sa.update(scheduler_task)
    .where(
        scheduler_task.c.task_id == sa.bindparam("b_sid"),
        scheduler_task.c.next_run_at == sa.bindparam("b_old"),
        scheduler_task.c.enabled.is_(True),
    )
    .values(
        next_run_at=sa.bindparam("b_next"),
        run_count=scheduler_task.c.run_count + sa.bindparam("b_fired", type_=sa.Integer),
        skipped_count=scheduler_task.c.skipped_count + sa.bindparam("b_skipped", type_=sa.Integer),
        last_run_at=sa.func.coalesce(
            sa.bindparam("b_last", type_=sa.Float), scheduler_task.c.last_run_at
        ),
        enabled=sa.bindparam("b_enabled", type_=sa.Boolean),
        disabled_reason=sa.bindparam("b_reason", type_=sa.Text),
    )
)


def _advance(conn: sa.Connection, plans: list[Plan], now: float) -> None:
    """Compare-and-set every row on the ``next_run_at`` read: lose the race, never double-fire."""
    params = []
    for p in plans:
        d = p.decision
        if d is None:
            reason = f"broken: {p.problem}"
            values = {
                "b_next": p.row["next_run_at"],
                "b_fired": 0,
                "b_skipped": 0,
                "b_enabled": False,
                "b_reason": reason,
            }
        else:
            values = {
                "b_next": d.next_run_at,
                "b_fired": len(p.due),
                "b_skipped": p.skipped,
                "b_enabled": not d.finished,
                "b_reason": finish_reason(p.row, len(p.due)) if d.finished else None,
            }
        params.append(
            {
                "b_sid": p.sid,
                "b_old": p.row["next_run_at"],
                "b_last": now if p.due else None,
                **values,
            }
        )
    if not params:
        return
    if conn.dialect.supports_sane_multi_rowcount:
        if conn.execute(_ADVANCE, params).rowcount != len(params):
            raise _LostRace
        return
    for one in params:
        if conn.execute(_ADVANCE, one).rowcount != 1:
            raise _LostRace
