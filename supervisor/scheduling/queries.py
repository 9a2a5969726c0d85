"""The scheduler's bookkeeping statements: when to wake, recent fires, pruning, counts, types.

Small functions over an engine, each its own short transaction, used by
:class:`~supervisor.scheduling.store.ScheduleStore` for the scheduler process and the status
document. The statements run on every tick are built once.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from supervisor.scheduling.models import schedule_fire, scheduler_task, scheduler_task_type, writer

_NEXT_DUE = sa.select(sa.func.min(scheduler_task.c.next_run_at)).where(
    scheduler_task.c.enabled.is_(True)
)
_RECENT_FIRES = (
    sa.select(schedule_fire.c.task_id)
    .where(
        schedule_fire.c.schedule_id == sa.bindparam("sid"),
        schedule_fire.c.status.in_(("claimed", "pushed")),
    )
    .order_by(schedule_fire.c.due_at.desc())
    .limit(sa.bindparam("lim", type_=sa.Integer))
)
_COUNT_ENABLED = (
    sa.select(sa.func.count()).select_from(scheduler_task).where(scheduler_task.c.enabled.is_(True))
)


def next_due_at(engine: Engine) -> float | None:
    """The earliest ``next_run_at`` of an enabled schedule (None: nothing will fire)."""
    with engine.connect() as conn:
        value = conn.execute(_NEXT_DUE).scalar()
    return None if value is None else float(value)


def recent_fire_task_ids(engine: Engine, schedule_id: str, limit: int) -> list[str]:
    """Task ids of the latest fires of a schedule that were (or may have been) pushed."""
    with engine.connect() as conn:
        return list(conn.scalars(_RECENT_FIRES, {"sid": schedule_id, "lim": limit}))


def prune_fires(engine: Engine, older_than: float, batch: int) -> int:
    """Delete up to ``batch`` settled (``pushed``/``dropped``) fire rows claimed before
    ``older_than``; return how many went."""
    old = (
        sa.select(schedule_fire.c.id)
        .where(
            schedule_fire.c.status.in_(("pushed", "dropped")),
            schedule_fire.c.claimed_at < older_than,
        )
        .limit(batch)
    )
    with writer(engine).begin() as conn:
        result = conn.execute(
            sa.delete(schedule_fire).where(schedule_fire.c.id.in_(old.scalar_subquery()))
        )
    return int(result.rowcount or 0)


def count_enabled(engine: Engine) -> int:
    """How many schedules are enabled."""
    with engine.connect() as conn:
        return int(conn.execute(_COUNT_ENABLED).scalar() or 0)


def register_task_types(engine: Engine, names: Iterable[str], now: float) -> None:
    """Replace the recorded task types of the running app with ``names``."""
    rows = [{"name": n, "registered_at": now} for n in sorted(set(names))]
    with writer(engine).begin() as conn:
        conn.execute(sa.delete(scheduler_task_type))
        if rows:
            conn.execute(sa.insert(scheduler_task_type), rows)


def registered_task_types(engine: Engine) -> list[str]:
    """The task types last recorded by :func:`register_task_types` (empty: unknown)."""
    with engine.connect() as conn:
        return sorted(conn.scalars(sa.select(scheduler_task_type.c.name)))
