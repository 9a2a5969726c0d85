"""Reading and writing one ``scheduler_task`` row inside a caller's transaction.

Shared by the management API (:mod:`supervisor.scheduling.store`) and the config upsert
(:mod:`supervisor.scheduling.upsert`): finding a schedule by id or name, inserting a new one,
and the run-state columns (``anchor_at``, ``next_run_at``, ``enabled``) after an edit.

Schedule names are unique (a unique index since schema version 3). :func:`insert_row` and
:func:`update_row` check the name first for a clear message; two processes racing past that
check meet the index, and the caller turns the ``IntegrityError`` into the same message with
:func:`name_conflict`.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import schedule_fire, scheduler_task
from supervisor.scheduling.policy import first_fire, interval_anchor, next_fire_after
from supervisor.scheduling.rows import spec_columns
from supervisor.scheduling.spec import ScheduleSpec

_log = logger.bind(component="scheduler")
# Changing one of these moves the schedule's fire times: next_run_at is computed afresh.
TIMING = (
    "schedule_type",
    "interval_seconds",
    "cron_expression",
    "execute_at",
    "start_at",
    "end_at",
    "timezone",
)
_BY_ID = sa.select(scheduler_task).where(scheduler_task.c.task_id == sa.bindparam("ref"))
_BY_NAME = sa.select(scheduler_task).where(scheduler_task.c.name == sa.bindparam("ref"))
_OWNER = sa.select(scheduler_task.c.task_id).where(scheduler_task.c.name == sa.bindparam("name"))


def find_row(conn: sa.Connection, ref: str) -> sa.RowMapping | None:
    """The row of the schedule ``ref`` names: its id, else its name (an id wins)."""
    for stmt in (_BY_ID, _BY_NAME):
        row = conn.execute(stmt, {"ref": ref}).mappings().first()
        if row is not None:
            return row
    return None


def name_owner(conn: sa.Connection, name: str) -> str | None:
    """The id of the schedule called ``name``, or None."""
    owner = conn.execute(_OWNER, {"name": name}).scalar()
    return None if owner is None else str(owner)


def name_taken(name: str, owner: str) -> ScheduleError:
    """The error for a name already held by schedule ``owner``."""
    return ScheduleError(f"schedule name {name!r} is taken by schedule {owner}", field="name")


def name_conflict(engine: Engine, name: str) -> ScheduleError | None:
    """After an insert or rename to ``name`` failed with an ``IntegrityError``: the name-taken
    error when another process holds the name now, else None (something else failed)."""
    with engine.connect() as conn:
        owner = name_owner(conn, name)
    return None if owner is None else name_taken(name, owner)


def _check_name_free(conn: sa.Connection, name: str, *, own_id: str | None = None) -> None:
    owner = name_owner(conn, name)
    if owner is not None and owner != own_id:
        raise name_taken(name, owner)


def insert_row(conn: sa.Connection, spec: ScheduleSpec, now: float, source: str) -> str:
    """Insert a validated ``spec`` as a new schedule; return its id.

    Raises ScheduleError when its name is taken (or IntegrityError when another transaction
    took it after the check: see :func:`name_conflict`).
    """
    _check_name_free(conn, spec.name)
    task_id = str(uuid.uuid4())
    anchor = interval_anchor(spec, now)
    conn.execute(
        sa.insert(scheduler_task).values(
            task_id=task_id,
            **spec_columns(spec),
            anchor_at=anchor,
            next_run_at=first_fire(spec, now, anchor_epoch=anchor),
            run_count=0,
            created_at=now,
            updated_at=now,
            source=source,
            disabled_reason=None if spec.enabled else "paused",
        )
    )
    _log.bind(schedule_id=task_id).info(
        "schedule {} ({!r}, {}) added", task_id, spec.name, spec.schedule_type
    )
    return task_id


def update_row(conn: sa.Connection, task_id: str, values: dict[str, Any]) -> None:
    """Write ``values`` to schedule ``task_id``; a new ``name`` must be free (ScheduleError)."""
    if "name" in values:
        _check_name_free(conn, values["name"], own_id=task_id)
    conn.execute(
        sa.update(scheduler_task).where(scheduler_task.c.task_id == task_id).values(**values)
    )


def first_unfired(
    conn: sa.Connection, task_id: str, spec: ScheduleSpec, now: float, anchor: float | None
) -> float | None:
    """First fire time at or after ``now`` that has not fired yet (resume at a due time)."""
    nxt = first_fire(spec, now, anchor_epoch=anchor)
    if (
        nxt is not None
        and conn.execute(
            sa.select(schedule_fire.c.id).where(
                schedule_fire.c.schedule_id == task_id, schedule_fire.c.due_at == nxt
            )
        ).first()
    ):
        nxt = next_fire_after(spec, nxt, anchor_epoch=anchor)
    return nxt


def timing_values(
    conn: sa.Connection,
    row: sa.RowMapping,
    old: ScheduleSpec,
    new: ScheduleSpec,
    now: float,
) -> dict[str, Any]:
    """Run-state columns after an edit of ``row`` from ``old`` to ``new``."""
    values: dict[str, Any] = {"updated_at": now}
    anchor = row["anchor_at"]
    resumed = new.enabled and not row["enabled"]  # no catch-up for the disabled time
    unanchored = new.schedule_type == "interval" and anchor is None
    if resumed or unanchored or any(getattr(old, f) != getattr(new, f) for f in TIMING):
        if unanchored or (old.schedule_type, old.interval_seconds, old.start_at) != (
            new.schedule_type,
            new.interval_seconds,
            new.start_at,
        ):
            anchor = interval_anchor(new, now)
        values["anchor_at"] = anchor
        values["next_run_at"] = first_unfired(conn, row["task_id"], new, now, anchor)
    next_run = values.get("next_run_at", row["next_run_at"])
    spent = new.max_runs > 0 and row["run_count"] >= new.max_runs
    if not new.enabled or spent or next_run is None:
        values["enabled"] = False
        values["disabled_reason"] = (
            f"max_runs reached ({new.max_runs})"
            if spent
            else "no fire time left"
            if next_run is None
            else row["disabled_reason"] or "paused"
        )
    else:
        values["disabled_reason"] = None
    return values
