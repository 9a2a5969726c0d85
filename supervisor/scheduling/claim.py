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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from supervisor.errors import TaskError
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import schedule_fire, scheduler_task, writer
from supervisor.scheduling.policy import FireDecision, due_fires
from supervisor.scheduling.rows import decode_params, fire_task_id, spec_from_row

FireCallback = Callable[[dict[str, Any]], object]
# Pushes several messages; returns, in order, None for each pushed one or the exception.
FireMany = Callable[[list[dict[str, Any]]], list[BaseException | None]]
ActiveCount = Callable[[str], int]
_log = logger.bind(component="scheduler")
LATE_LOG_S = 1.0  # a fire later than this is logged and counted as "late"
DEFAULT_BATCH = 100  # due schedules claimed per transaction


@dataclass(frozen=True)
class FireOutcome:
    """One due time handed to the ``fire`` callback: pushed, or not with ``error``.

    ``retryable`` is False when the broker refused the task itself (a
    :class:`~supervisor.errors.TaskError`: unknown type, payload too large): pushing it again
    would fail the same way, so its fire row is marked ``dropped`` instead of ``failed``.
    """

    schedule_id: str
    name: str
    due_at: float
    task_id: str
    pushed: bool
    error: str | None = None
    retryable: bool = True

    @property
    def status(self) -> str:
        """The fire row's status after this outcome."""
        return "pushed" if self.pushed else "failed" if self.retryable else "dropped"


@dataclass(frozen=True)
class _Claim:
    schedule_id: str
    name: str
    task: dict[str, Any]  # type, params, priority
    due: tuple[float, ...]


@dataclass
class _Plan:
    """What one claimed row becomes: its decision, and the due times left to insert."""

    row: sa.RowMapping
    params: dict[str, Any]
    decision: FireDecision | None  # None: the row is broken and gets disabled
    problem: str | None = None  # why it is broken, or why its params cannot be used
    due: tuple[float, ...] = ()
    already: tuple[float, ...] = ()
    skipped: int = 0
    policy: str = "once"
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def sid(self) -> str:
        return str(self.row["task_id"])


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
        outcomes.extend(_push_all(claims, fire=fire, fire_many=fire_many, counters=counters))
        if not ok:
            break
    mark(engine, outcomes)  # one transaction for the whole call
    return outcomes


def _claim_chunk(
    engine: Engine, ids: list[str], now: float, counters: Counter[str], active: dict[str, int]
) -> tuple[list[_Claim], bool]:
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
    claims: list[_Claim] = []
    for sid in ids:
        got, ok = _claim_chunk(engine, [sid], now, counters, active)
        claims.extend(got)
        if not ok:
            return claims, False
    return claims, True


def _claim_txn(
    engine: Engine, ids: list[str], now: float, counters: Counter[str], active: dict[str, int]
) -> list[_Claim]:
    with writer(engine).begin() as conn:
        rows = conn.execute(_LOCK_DUE, {"ids": ids, "now": now}).mappings().all()
        plans = [_plan(row, now, active.get(row["task_id"], 0)) for row in rows]
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
        _log_plan(plan, now, counters)
    return [
        _Claim(
            p.sid,
            p.row["name"],
            {"type": p.row["task_type"], "params": p.params, "priority": p.row["priority"]},
            p.due,
        )
        for p in plans
        if p.decision is not None
    ]


def _plan(row: sa.RowMapping, now: float, active: int) -> _Plan:
    sid = row["task_id"]
    params_error = None
    try:
        params = decode_params(row["params"], sid)
    except ScheduleError as exc:
        params, params_error = {}, str(exc)
    try:
        spec = spec_from_row(row, params=params)
        decision = due_fires(
            spec,
            row["next_run_at"],
            now,
            anchor_epoch=row["anchor_at"],
            runs_done=row["run_count"],
            active_instances=active,
        )
    except (ScheduleError, ValueError, LookupError) as exc:
        # A row edited by hand into something unusable: disabled instead of failing each tick.
        return _Plan(row, params, None, problem=str(exc))
    plan = _Plan(
        row,
        params,
        decision,
        due=decision.fire,
        skipped=decision.skipped,
        policy=spec.misfire_policy,
    )
    if params_error is not None and plan.due:
        plan.problem, plan.extra["corrupt_params"] = params_error, len(plan.due)
        plan.due, plan.skipped = (), plan.skipped + len(plan.due)
    return plan


def _drop_already_fired(conn: sa.Connection, plans: list[_Plan]) -> None:
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


def _advance(conn: sa.Connection, plans: list[_Plan], now: float) -> None:
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
                "b_reason": _finish_reason(p.row, len(p.due)) if d.finished else None,
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


def _finish_reason(row: sa.RowMapping, fired: int) -> str:
    if row["max_runs"] and row["run_count"] + fired >= row["max_runs"]:
        return f"max_runs reached ({row['max_runs']})"
    if row["schedule_type"] == "once":
        return "once schedule done"
    return "no fire time left (end_at passed)"


def _log_plan(p: _Plan, now: float, counters: Counter[str]) -> None:
    sid, name = p.sid, p.row["name"]
    log = _log.bind(schedule_id=sid, schedule=name)
    counters.update(p.extra)
    decision = p.decision
    if decision is None:
        counters["broken"] += 1
        log.error("schedule {} ({!r}) cannot be computed and is disabled: {}", sid, name, p.problem)
        return
    if p.problem is not None:
        log.error(
            "not firing schedule {} ({!r}) at {}: {}", sid, name, list(decision.fire), p.problem
        )
    if p.already:
        counters["already_fired"] += len(p.already)
        log.warning("schedule {} already fired {}; not firing again", sid, sorted(p.already))
    counters["fired"] += len(p.due)
    counters["misfired"] += decision.misfired
    counters["coalesced"] += decision.coalesced
    counters["overlapped"] += decision.overlapped
    if decision.misfired or decision.coalesced:
        counters[f"misfire.{p.policy}"] += decision.misfired + decision.coalesced
    if decision.skipped:
        log.warning(
            "schedule {} ({!r}) skipped {} due time(s): {} misfired, {} coalesced into "
            "one run, {} over max_instances",
            sid,
            name,
            decision.skipped,
            decision.misfired,
            decision.coalesced,
            decision.overlapped,
        )
    late = [d for d in p.due if now - d > LATE_LOG_S]
    if late:
        counters["late"] += len(late)
        log.info(
            "schedule {} ({!r}) fires {} due time(s) late, by up to {:.1f} s",
            sid,
            name,
            len(late),
            now - late[0],
        )
    if decision.finished:
        log.info("schedule {} ({!r}) finished and is disabled", sid, name)


def fire_message(sid: str, task: dict[str, Any], due_at: float) -> dict[str, Any]:
    """The task dict handed to the push callbacks for one due time."""
    return {
        **task,
        "params": dict(task["params"]),
        "task_id": fire_task_id(sid, due_at),
        "scheduled_at": due_at,
        "schedule_id": sid,
    }


def _push_all(
    claims: Sequence[_Claim],
    *,
    fire: FireCallback,
    fire_many: FireMany | None,
    counters: Counter[str],
) -> list[FireOutcome]:
    if fire_many is None:
        return [
            push_one(c.schedule_id, c.name, c.task, d, fire=fire, counters=counters)
            for c in claims
            for d in c.due
        ]
    pending = [(c, d, fire_message(c.schedule_id, c.task, d)) for c in claims for d in c.due]
    if not pending:
        return []
    try:
        errors = fire_many([m for _, _, m in pending])
    except Exception as exc:  # the pusher should report per message; be safe if it did not
        errors = [exc] * len(pending)
    return [
        _outcome(c.schedule_id, c.name, d, m["task_id"], err, counters=counters)
        for (c, d, m), err in zip(pending, errors, strict=True)
    ]


def push_one(
    sid: str,
    name: str,
    task: dict[str, Any],
    due_at: float,
    *,
    fire: FireCallback,
    counters: Counter[str],
) -> FireOutcome:
    """Push one due time through ``fire``; a failure is logged, counted and returned."""
    message = fire_message(sid, task, due_at)
    try:
        fire(message)
    except Exception as exc:  # the broker's failure must not stop the other schedules
        return _outcome(sid, name, due_at, message["task_id"], exc, counters=counters)
    return FireOutcome(sid, name, due_at, message["task_id"], True)


def _outcome(
    sid: str,
    name: str,
    due_at: float,
    task_id: str,
    exc: BaseException | None,
    *,
    counters: Counter[str],
) -> FireOutcome:
    if exc is None:
        return FireOutcome(sid, name, due_at, task_id, True)
    counters["push_failed"] += 1
    log = _log.bind(schedule_id=sid, task_id=task_id)
    if isinstance(exc, TaskError):  # refused by the broker: the same push would fail again
        log.error(
            "the broker refused {} of schedule {} ({!r}); not retried: {}", task_id, sid, name, exc
        )
        return FireOutcome(
            sid, name, due_at, task_id, False, f"{type(exc).__name__}: {exc}", retryable=False
        )
    log.opt(exception=exc).error(
        "pushing {} of schedule {} ({!r}) failed; kept for a retry", task_id, sid, name
    )
    return FireOutcome(sid, name, due_at, task_id, False, f"{type(exc).__name__}: {exc}")


def mark(engine: Engine, outcomes: Sequence[FireOutcome]) -> None:
    """Record the push outcomes on their fire rows (``pushed`` or ``failed``)."""
    if not outcomes:
        return
    stmt = (
        sa.update(schedule_fire)
        .where(
            schedule_fire.c.schedule_id == sa.bindparam("sid"),
            schedule_fire.c.due_at == sa.bindparam("due"),
        )
        .values(status=sa.bindparam("new_status"), error=sa.bindparam("err"))
    )
    try:
        with writer(engine).begin() as conn:
            conn.execute(
                stmt,
                [
                    {"sid": o.schedule_id, "due": o.due_at, "err": o.error, "new_status": o.status}
                    for o in outcomes
                ],
            )
    except OperationalError as exc:
        _log.warning(
            "could not mark {} fire(s) as pushed ({}); they stay 'claimed'", len(outcomes), exc
        )
