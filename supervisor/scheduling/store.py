"""``ScheduleStore``: the schedules in SQL, with the seed's management API.

Usable from any process that can reach the database (the CLI, an app, the master): every
call is its own short transaction, and the master sees changes at its next tick. The master
drives firing with :meth:`ScheduleStore.next_due_at` (sleep until then, at most a second) and
:meth:`ScheduleStore.claim_due` (see :mod:`supervisor.scheduling.claim` for its guarantee).
Call :meth:`ScheduleStore.migrate` once at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.scheduling import claim, recover, wake
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import (
    migrate,
    schedule_fire,
    scheduler_task,
    scheduler_task_type,
    writer,
)
from supervisor.scheduling.policy import first_fire, interval_anchor, next_fire_after, preview
from supervisor.scheduling.rows import same_declaration, spec_columns, spec_from_row, task_dict
from supervisor.scheduling.spec import ScheduleSpec, check_field_names, make_spec, validate

_log = logger.bind(component="scheduler")
# Changing one of these moves the schedule's fire times: next_run_at is computed afresh.
_TIMING = (
    "schedule_type",
    "interval_seconds",
    "cron_expression",
    "execute_at",
    "start_at",
    "end_at",
    "timezone",
)
_TYPE_FIELDS = ("interval_seconds", "cron_expression", "execute_at")
REMOVED_FROM_CONFIG = "removed from config"
# Statements the scheduler runs on every tick, built once.
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


@dataclass
class UpsertReport:
    """What :meth:`ScheduleStore.upsert_from_config` did, by schedule name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


class ScheduleStore:
    """Schedules in the database behind ``engine`` (make it with ``make_engine``).

    ``clock`` returns epoch seconds; ``known_task_types``, when given, is checked at add and
    update time (a live view such as a registry's ``keys()`` works). ``counters`` tallies
    fires, skips and errors for the metrics.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        known_task_types: Collection[str] | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._known = known_task_types
        self.counters: Counter[str] = Counter()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[sa.Connection]:
        """A write transaction whose commit wakes the scheduler (see :mod:`.wake`)."""
        with writer(self._engine).begin() as conn:
            yield conn
            wake.notify_in(conn)
        wake.notify_after(self._engine)

    def migrate(self) -> int:
        """Create or upgrade the tables; return the schema version."""
        return migrate(self._engine)

    # -- management (seed API) -----------------------------------------------------------------
    def add_scheduler_task(  # noqa: PLR0917 - the seed's signature, positional as it was
        self,
        name: str,
        task_type: str,
        schedule_type: str,
        interval_seconds: float | None = None,
        cron_expression: str | None = None,
        execute_at: float | None = None,
        params: dict[str, Any] | None = None,
        max_runs: int = 0,
        description: str = "",
        **extra: Any,
    ) -> str:
        """Validate and store a schedule; return its id. ``extra``: other ScheduleSpec fields.

        Raises ScheduleError naming the field when the schedule is invalid.
        """
        spec = make_spec(
            name=name,
            task_type=task_type,
            schedule_type=schedule_type,
            interval_seconds=interval_seconds,
            cron_expression=cron_expression,
            execute_at=execute_at,
            params=params,
            max_runs=max_runs,
            description=description,
            **extra,
        )
        now = self._clock()
        validate(spec, now=now, known_task_types=self._known)
        with self._changing() as conn:
            return self._insert(conn, spec, now, source="api")

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The schedule as a dict (seed keys and ours), or None."""
        with self._engine.connect() as conn:
            row = self._row(conn, task_id)
        return None if row is None else task_dict(row)

    def list_tasks(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        """All schedules (or the enabled ones), oldest first, as :meth:`get_task` dicts."""
        query = sa.select(scheduler_task).order_by(scheduler_task.c.created_at)
        if enabled_only:
            query = query.where(scheduler_task.c.enabled.is_(True))
        with self._engine.connect() as conn:
            return [task_dict(row) for row in conn.execute(query).mappings()]

    def update_task(self, task_id: str, **fields: Any) -> bool:
        """Change declared fields of a schedule; False if there is no such schedule.

        Fields are validated as a whole; a changed ``schedule_type`` clears the other types'
        timing fields. Changed timing recomputes ``next_run_at`` from now (no catch-up);
        the run history is kept. ``enabled`` pauses or resumes.
        """
        now = self._clock()
        with self._changing() as conn:
            row = self._row(conn, task_id)
            if row is None:
                return False
            check_field_names(fields)
            if "params" in fields:  # also the way to repair corrupt params
                fields["params"] = fields["params"] or {}
            old = spec_from_row(row, params=fields.get("params"))
            if fields.get("schedule_type", old.schedule_type) != old.schedule_type:
                fields = {**{f: None for f in _TYPE_FIELDS}, **fields}
            new = dataclasses.replace(old, **fields)
            validate(new, now=now, known_task_types=self._known, check_past="execute_at" in fields)
            values = spec_columns(new)
            values.update(self._timing_values(conn, row, old, new, now))
            conn.execute(
                sa.update(scheduler_task)
                .where(scheduler_task.c.task_id == task_id)
                .values(**values)
            )
        return True

    def pause_task(self, task_id: str) -> bool:
        """Stop firing a schedule; False if there is no such schedule."""
        return self._set_enabled(task_id, False)

    def resume_task(self, task_id: str) -> bool:
        """Fire a paused schedule again from now on (missed due times are not caught up).

        False if there is no such schedule or it can never fire again (a done ``once``,
        ``max_runs`` reached, ``end_at`` passed): it then stays disabled.
        """
        return self._set_enabled(task_id, True)

    def delete_task(self, task_id: str) -> bool:
        """Delete a schedule and its fire records; False if there is no such schedule."""
        with self._changing() as conn:
            conn.execute(sa.delete(schedule_fire).where(schedule_fire.c.schedule_id == task_id))
            result = conn.execute(
                sa.delete(scheduler_task).where(scheduler_task.c.task_id == task_id)
            )
        return result.rowcount == 1

    def preview(self, task_id: str, n: int = 10) -> list[float]:
        """The next ``n`` fire times of a stored schedule after now (``schedules next``)."""
        with self._engine.connect() as conn:
            row = self._row(conn, task_id)
        if row is None:
            raise ScheduleError(f"no schedule with id {task_id!r}", field="task_id")
        spec = spec_from_row(row, params={})
        return preview(spec, self._clock(), n, anchor_epoch=row["anchor_at"])

    # -- firing (for the master) ---------------------------------------------------------------
    def next_due_at(self) -> float | None:
        """The earliest ``next_run_at`` of an enabled schedule: when the master should wake."""
        with self._engine.connect() as conn:
            value = conn.execute(_NEXT_DUE).scalar()
        return None if value is None else float(value)

    def claim_due(
        self,
        now: float,
        fire: claim.FireCallback,
        *,
        active_instances: claim.ActiveCount | None = None,
        limit: int | None = None,
        batch_size: int = claim.DEFAULT_BATCH,
        fire_many: claim.FireMany | None = None,
    ) -> list[claim.FireOutcome]:
        """Fire what is due at ``now`` through ``fire`` (or ``fire_many``) -- each due time at
        most once, ``batch_size`` schedules per transaction.

        ``fire`` gets ``{"task_id", "type", "params", "priority", "scheduled_at",
        "schedule_id"}`` and pushes it; ``active_instances(schedule_id)`` says how many of
        its runs are still queued or running. See :mod:`supervisor.scheduling.claim`.
        """
        return claim.claim_due(
            self._engine,
            now,
            fire,
            counters=self.counters,
            active_instances=active_instances,
            limit=limit,
            batch_size=batch_size,
            fire_many=fire_many,
        )

    def retry_unpushed(
        self,
        fire: claim.FireCallback,
        *,
        min_age_s: float = 60.0,
        known: Callable[[str], bool] | None = None,
    ) -> list[claim.FireOutcome]:
        """Push again fires claimed but not pushed (a crash or a failed push); see
        :mod:`supervisor.scheduling.recover`."""
        return recover.retry_unpushed(
            self._engine,
            self._clock(),
            fire,
            min_age_s=min_age_s,
            counters=self.counters,
            known=known,
        )

    # -- registered task types -------------------------------------------------------------------
    def register_task_types(self, names: Iterable[str]) -> None:
        """Record the task types the running app registers (replacing the previous list)."""
        now = self._clock()
        rows = [{"name": n, "registered_at": now} for n in sorted(set(names))]
        with writer(self._engine).begin() as conn:
            conn.execute(sa.delete(scheduler_task_type))
            if rows:
                conn.execute(sa.insert(scheduler_task_type), rows)

    def registered_task_types(self) -> list[str]:
        """The task types last recorded by :meth:`register_task_types` (empty: unknown)."""
        with self._engine.connect() as conn:
            return sorted(conn.scalars(sa.select(scheduler_task_type.c.name)))

    def recent_fire_task_ids(self, schedule_id: str, limit: int = 20) -> list[str]:
        """Task ids of the latest fires of a schedule that were (or may have been) pushed."""
        with self._engine.connect() as conn:
            return list(conn.scalars(_RECENT_FIRES, {"sid": schedule_id, "lim": limit}))

    def prune_fires(self, older_than: float, *, batch: int = 10_000) -> int:
        """Delete up to ``batch`` settled fire records claimed before ``older_than``.

        A due time that far back is never proposed again (resume and edits start from now),
        so its record no longer guards anything. Rows still ``claimed`` or ``failed`` stay.
        """
        old = (
            sa.select(schedule_fire.c.id)
            .where(
                schedule_fire.c.status.in_(("pushed", "dropped")),
                schedule_fire.c.claimed_at < older_than,
            )
            .limit(batch)
        )
        with writer(self._engine).begin() as conn:
            result = conn.execute(
                sa.delete(schedule_fire).where(schedule_fire.c.id.in_(old.scalar_subquery()))
            )
        return int(result.rowcount or 0)

    def count_enabled(self) -> int:
        """How many schedules are enabled."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(scheduler_task)
                    .where(scheduler_task.c.enabled.is_(True))
                ).scalar()
                or 0
            )

    # -- config file ---------------------------------------------------------------------------
    def upsert_from_config(self, specs: Iterable[ScheduleSpec]) -> UpsertReport:
        """Make the config-declared schedules match ``specs``, matched by name.

        All specs are validated first (ScheduleError, nothing written, on any problem).
        Unchanged ones are left alone (history and pause state kept); changed ones are updated
        (history kept); new ones created; config schedules missing from ``specs`` disabled
        (not deleted) and reported. Schedules added through the API are never touched.
        """
        specs = list(specs)
        now = self._clock()
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ScheduleError(
                f"schedule name(s) {dupes} declared more than once in the config", field="name"
            )
        report = UpsertReport()
        with self._changing() as conn:
            rows = {
                r["name"]: r
                for r in conn.execute(
                    sa.select(scheduler_task).where(scheduler_task.c.source == "config")
                ).mappings()
            }
            for spec in specs:
                row = rows.get(spec.name)
                old = None if row is None else self._stored_spec(row)
                if (
                    old is not None
                    and same_declaration(old, spec)
                    and row is not None
                    and row["disabled_reason"] != REMOVED_FROM_CONFIG
                ):
                    report.unchanged.append(spec.name)
                    continue
                check_past = old is None or old.execute_at != spec.execute_at
                validate(spec, now=now, known_task_types=self._known, check_past=check_past)
                if row is None:
                    self._insert(conn, spec, now, source="config")
                    report.created.append(spec.name)
                    continue
                values = spec_columns(spec)
                values.update(
                    self._timing_values(conn, row, old or spec_from_row(row, params={}), spec, now)
                )
                conn.execute(
                    sa.update(scheduler_task)
                    .where(scheduler_task.c.task_id == row["task_id"])
                    .values(**values)
                )
                report.updated.append(spec.name)
            for name, row in rows.items():
                if name not in names and row["disabled_reason"] != REMOVED_FROM_CONFIG:
                    conn.execute(
                        sa.update(scheduler_task)
                        .where(scheduler_task.c.task_id == row["task_id"])
                        .values(enabled=False, disabled_reason=REMOVED_FROM_CONFIG, updated_at=now)
                    )
                    report.disabled.append(name)
        if report.disabled:
            _log.warning("schedules removed from the config were disabled: {}", report.disabled)
        return report

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _row(conn: sa.Connection, task_id: str) -> sa.RowMapping | None:
        return (
            conn.execute(sa.select(scheduler_task).where(scheduler_task.c.task_id == task_id))
            .mappings()
            .first()
        )

    @staticmethod
    def _stored_spec(row: sa.RowMapping) -> ScheduleSpec | None:
        """The row's spec, or None when its params are corrupt (so it counts as changed)."""
        try:
            return spec_from_row(row)
        except ScheduleError:
            return None

    def _insert(self, conn: sa.Connection, spec: ScheduleSpec, now: float, source: str) -> str:
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

    @staticmethod
    def _first_unfired(
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

    def _timing_values(
        self,
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
        if resumed or unanchored or any(getattr(old, f) != getattr(new, f) for f in _TIMING):
            if unanchored or (old.schedule_type, old.interval_seconds, old.start_at) != (
                new.schedule_type,
                new.interval_seconds,
                new.start_at,
            ):
                anchor = interval_anchor(new, now)
            values["anchor_at"] = anchor
            values["next_run_at"] = self._first_unfired(conn, row["task_id"], new, now, anchor)
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

    def _set_enabled(self, task_id: str, enabled: bool) -> bool:
        now = self._clock()
        with self._changing() as conn:
            row = self._row(conn, task_id)
            if row is None:
                return False
            values: dict[str, Any] = {
                "enabled": enabled,
                "updated_at": now,
                "disabled_reason": None if enabled else row["disabled_reason"] or "paused",
            }
            if enabled:
                spec = spec_from_row(row, params={})
                nxt = self._first_unfired(conn, task_id, spec, now, row["anchor_at"])
                spent = spec.max_runs > 0 and row["run_count"] >= spec.max_runs
                if nxt is None or spent:
                    _log.bind(schedule_id=task_id).warning(
                        "schedule {} cannot be resumed: {}",
                        task_id,
                        "max_runs reached" if spent else "no fire time left",
                    )
                    return False
                values["next_run_at"] = nxt
            conn.execute(
                sa.update(scheduler_task)
                .where(scheduler_task.c.task_id == task_id)
                .values(**values)
            )
        return True
