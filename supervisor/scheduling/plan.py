"""What one claimed schedule row becomes: its fire decision, and what that decision logs.

Inside the claim transaction (:mod:`supervisor.scheduling.claim`) each locked row is turned
into a :class:`Plan` by :func:`plan_row` -- the pure policy (:func:`~supervisor.scheduling.
policy.due_fires`) applied to the stored spec and run state. A row that cannot be computed
(edited by hand into something unusable) gets no decision and is disabled instead of failing
every tick. After the commit :func:`log_plan` logs and counts what was decided (a rolled-back
batch logs nothing).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from loguru import logger

from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.policy import FireDecision, due_fires
from supervisor.scheduling.rows import decode_params, spec_from_row

LATE_LOG_S = 1.0  # a fire later than this is logged and counted as "late"
_log = logger.bind(component="scheduler")


@dataclass
class Plan:
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


def plan_row(row: sa.RowMapping, now: float, active: int) -> Plan:
    """Decide what ``row`` fires at ``now`` with ``active`` live runs; never raises."""
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
        return Plan(row, params, None, problem=str(exc))
    plan = Plan(
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


def finish_reason(row: sa.RowMapping, fired: int) -> str:
    """The ``disabled_reason`` of a schedule that will never fire again after ``fired`` runs."""
    if row["max_runs"] and row["run_count"] + fired >= row["max_runs"]:
        return f"max_runs reached ({row['max_runs']})"
    if row["schedule_type"] == "once":
        return "once schedule done"
    return "no fire time left (end_at passed)"


def log_plan(p: Plan, now: float, counters: Counter[str]) -> None:
    """Log and count a committed plan: broken rows, skips, misfires, late fires, finishes."""
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
