"""Fires that were claimed but never confirmed pushed: push them again, or let them go.

A fire row stays ``claimed`` when the scheduler died between its commit and the broker's answer,
and becomes ``failed`` when the push raised (broker down, payload refused). The scheduler
process calls :func:`retry_unpushed` once at start (for rows its predecessor left) and then
now and then for ``failed`` rows. Each row is:

* **dropped** (status ``dropped``, counted ``expired``) when its due time is older than the
  schedule's ``misfire_grace_s``, or its schedule was deleted, or its params are unreadable --
  a run that late is what the misfire grace says not to run;
* **confirmed** (marked ``pushed``) when ``known(task_id)`` says the broker already has the task
  (the push did go through before the crash) -- the deterministic task id makes this check
  possible;
* **pushed again** otherwise, under its original task id. A broker that still holds that id live
  refuses the duplicate, which the push callback treats as "already pushed".

When ``known`` cannot tell (:class:`~supervisor.errors.DatabaseBusy`: the broker's task table is
locked, and a finished run would be found only there), the row is left ``claimed`` and asked
about again at a later call: pushing it could run a due time twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.errors import DatabaseBusy
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.fires import FireCallback, FireOutcome, mark, push_one
from supervisor.scheduling.models import schedule_fire, scheduler_task, writer
from supervisor.scheduling.rows import decode_params

_log = logger.bind(component="scheduler")


def retry_unpushed(
    engine: Engine,
    now: float,
    fire: FireCallback,
    *,
    min_age_s: float,
    counters: Counter[str],
    known: Callable[[str], bool] | None = None,
    limit: int = 1000,
) -> list[FireOutcome]:
    """Settle up to ``limit`` fires left ``claimed`` or ``failed`` at least ``min_age_s`` ago.

    Each is re-leased with a compare-and-set on its row first, so two schedulers never settle
    the same one. Returns the outcomes of the pushes made (confirmed and dropped rows are not
    in it).
    """
    with engine.connect() as conn:
        stale = list(
            conn.execute(
                sa.select(
                    schedule_fire,
                    scheduler_task.c.name,
                    scheduler_task.c.task_type,
                    scheduler_task.c.params,
                    scheduler_task.c.priority,
                    scheduler_task.c.misfire_grace_s,
                )
                .join(
                    scheduler_task,
                    scheduler_task.c.task_id == schedule_fire.c.schedule_id,
                    isouter=True,
                )
                .where(
                    schedule_fire.c.status.in_(("claimed", "failed")),
                    schedule_fire.c.claimed_at <= now - min_age_s,
                )
                .order_by(schedule_fire.c.due_at)
                .limit(limit)
            ).mappings()
        )
    outcomes = []
    for row in stale:
        with writer(engine).begin() as conn:
            lease = conn.execute(
                sa.update(schedule_fire)
                .where(
                    schedule_fire.c.id == row["id"],
                    schedule_fire.c.claimed_at == row["claimed_at"],
                    schedule_fire.c.status == row["status"],
                )
                .values(claimed_at=now, status="claimed")
            )
        if lease.rowcount != 1:
            continue
        sid, name, task_id = row["schedule_id"], row["name"] or "?", row["task_id"]
        log = _log.bind(schedule_id=sid, task_id=task_id)
        try:
            if row["task_type"] is None:
                raise ScheduleError(f"schedule {sid} was deleted")
            if now - row["due_at"] > row["misfire_grace_s"]:
                raise ScheduleError(
                    f"due {now - row['due_at']:.0f} s ago, past the "
                    f"schedule's misfire_grace_s ({row['misfire_grace_s']:g})"
                )
            params = decode_params(row["params"], sid)
        except ScheduleError as exc:
            counters["expired"] += 1
            log.warning(
                "unpushed fire {} of schedule {} ({!r}) dropped: {}", task_id, sid, name, exc
            )
            _settle(engine, row["id"], "dropped", str(exc))
            continue
        try:
            already = known is not None and known(task_id)
        except DatabaseBusy as exc:
            counters["undecided"] += 1
            log.info("cannot tell yet whether fire {} was pushed ({}); asking later", task_id, exc)
            continue
        if already:
            counters["confirmed"] += 1
            log.info("fire {} of schedule {} was pushed before the restart", task_id, sid)
            _settle(engine, row["id"], "pushed", None)
            continue
        counters["retried"] += 1
        log.info("pushing fire {} of schedule {} ({!r}) again", task_id, sid, name)
        task = {"type": row["task_type"], "params": params, "priority": row["priority"]}
        outcome = push_one(sid, name, task, row["due_at"], fire=fire, counters=counters)
        mark(engine, [outcome])
        outcomes.append(outcome)
    return outcomes


def _settle(engine: Engine, fire_id: int, status: str, error: str | None) -> None:
    with writer(engine).begin() as conn:
        conn.execute(
            sa.update(schedule_fire)
            .where(schedule_fire.c.id == fire_id)
            .values(status=status, error=error)
        )
