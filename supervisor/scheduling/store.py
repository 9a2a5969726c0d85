"""``ScheduleStore``: the schedules in SQL, with the seed's management API.

Usable from any process that can reach the database (the CLI, an app, the master): every
call is its own short transaction, and the master sees changes at its next tick. The master
drives firing with :meth:`ScheduleStore.next_due_at` (sleep until then, at most a second) and
:meth:`ScheduleStore.claim_due` (see :mod:`supervisor.scheduling.claim` for its guarantee).
Call :meth:`ScheduleStore.migrate` once at start.

This class is the facade; the work is in one module per role: single-row writes
(:mod:`.writes`), the config upsert (:mod:`.upsert`), bookkeeping queries (:mod:`.queries`),
firing (:mod:`.claim`, :mod:`.fires`) and recovery (:mod:`.recover`).

A schedule is named by its id or by its name (names are unique; an id wins should a name
equal another schedule's id, and names shaped like an id are refused at add time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from supervisor.scheduling import claim, fires, queries, recover, upsert, wake, writes
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import migrate, schedule_fire, scheduler_task, writer
from supervisor.scheduling.policy import preview
from supervisor.scheduling.rows import spec_columns, spec_from_row, task_dict
from supervisor.scheduling.spec import ScheduleSpec, check_field_names, make_spec
from supervisor.scheduling.upsert import REMOVED_FROM_CONFIG, UpsertReport
from supervisor.scheduling.validation import validate

__all__ = ["REMOVED_FROM_CONFIG", "ScheduleStore", "UpsertReport"]
_log = logger.bind(component="scheduler")
_TYPE_FIELDS = ("interval_seconds", "cron_expression", "execute_at")


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
    def _changing(self, name: str | None = None) -> Iterator[sa.Connection]:
        """A write transaction whose commit wakes the scheduler (see :mod:`.wake`).

        ``name``: the schedule name the transaction inserts or renames to; a unique-index
        violation on it (another process took it first) becomes the name-taken ScheduleError.
        """
        try:
            with writer(self._engine).begin() as conn:
                yield conn
                wake.notify_in(conn)
        except IntegrityError:
            conflict = None if name is None else writes.name_conflict(self._engine, name)
            if conflict is None:
                raise
            raise conflict from None
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

        Raises ScheduleError naming the field when the schedule is invalid, and
        ``schedule name 'x' is taken by schedule <id>`` when the name is in use (also when
        another process adds the same name at the same moment: the database refuses it).
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
        validate(spec, now=now, known_task_types=self._known, new_name=True)
        with self._changing(spec.name) as conn:
            return writes.insert_row(conn, spec, now, source="api")

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The schedule with this id or name as a dict (seed keys and ours), or None."""
        with self._engine.connect() as conn:
            row = writes.find_row(conn, task_id)
        return None if row is None else task_dict(row)

    def list_tasks(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        """All schedules (or the enabled ones), oldest first, as :meth:`get_task` dicts."""
        query = sa.select(scheduler_task).order_by(scheduler_task.c.created_at)
        if enabled_only:
            query = query.where(scheduler_task.c.enabled.is_(True))
        with self._engine.connect() as conn:
            return [task_dict(row) for row in conn.execute(query).mappings()]

    def update_task(self, task_id: str, **fields: Any) -> bool:
        """Change declared fields of a schedule (by id or name); False if there is none.

        Fields are validated as a whole; a changed ``schedule_type`` clears the other types'
        timing fields. Changed timing recomputes ``next_run_at`` from now (no catch-up);
        the run history is kept. ``enabled`` pauses or resumes. A new ``name`` must be free.
        """
        now = self._clock()
        new_name = fields.get("name")
        with self._changing(new_name if isinstance(new_name, str) else None) as conn:
            row = writes.find_row(conn, task_id)
            if row is None:
                return False
            check_field_names(fields)
            if "params" in fields:  # also the way to repair corrupt params
                fields["params"] = fields["params"] or {}
            old = spec_from_row(row, params=fields.get("params"))
            if fields.get("schedule_type", old.schedule_type) != old.schedule_type:
                fields = {**{f: None for f in _TYPE_FIELDS}, **fields}
            new = dataclasses.replace(old, **fields)
            validate(
                new,
                now=now,
                known_task_types=self._known,
                check_past="execute_at" in fields,
                new_name=new.name != old.name,
            )
            values = spec_columns(new)
            if new.name == old.name:
                del values["name"]
            values.update(writes.timing_values(conn, row, old, new, now))
            writes.update_row(conn, row["task_id"], values)
        return True

    def pause_task(self, task_id: str) -> bool:
        """Stop firing a schedule (by id or name); False if there is no such schedule."""
        return self._set_enabled(task_id, False)

    def resume_task(self, task_id: str) -> bool:
        """Fire a paused schedule (by id or name) again from now on (missed due times are not
        caught up).

        False if there is no such schedule or it can never fire again (a done ``once``,
        ``max_runs`` reached, ``end_at`` passed): it then stays disabled.
        """
        return self._set_enabled(task_id, True)

    def delete_task(self, task_id: str) -> bool:
        """Delete a schedule (by id or name) and its fire records; False if there is none."""
        with self._changing() as conn:
            row = writes.find_row(conn, task_id)
            if row is None:
                return False
            sid = row["task_id"]
            conn.execute(sa.delete(schedule_fire).where(schedule_fire.c.schedule_id == sid))
            result = conn.execute(sa.delete(scheduler_task).where(scheduler_task.c.task_id == sid))
        return result.rowcount == 1

    def preview(self, task_id: str, n: int = 10) -> list[float]:
        """The next ``n`` fire times after now of a stored schedule (by id or name)."""
        with self._engine.connect() as conn:
            row = writes.find_row(conn, task_id)
        if row is None:
            raise ScheduleError(f"no schedule with id or name {task_id!r}", field="task_id")
        spec = spec_from_row(row, params={})
        return preview(spec, self._clock(), n, anchor_epoch=row["anchor_at"])

    # -- firing (for the scheduler process) ----------------------------------------------------
    def next_due_at(self) -> float | None:
        """The earliest ``next_run_at`` of an enabled schedule: when the master should wake."""
        return queries.next_due_at(self._engine)

    def claim_due(
        self,
        now: float,
        fire: fires.FireCallback,
        *,
        active_instances: claim.ActiveCount | None = None,
        limit: int | None = None,
        batch_size: int = claim.DEFAULT_BATCH,
        fire_many: fires.FireMany | None = None,
    ) -> list[fires.FireOutcome]:
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
        fire: fires.FireCallback,
        *,
        min_age_s: float = 60.0,
        known: Callable[[str], bool] | None = None,
    ) -> list[fires.FireOutcome]:
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

    # -- bookkeeping -----------------------------------------------------------------------------
    def register_task_types(self, names: Iterable[str]) -> None:
        """Record the task types the running app registers (replacing the previous list)."""
        queries.register_task_types(self._engine, names, self._clock())

    def registered_task_types(self) -> list[str]:
        """The task types last recorded by :meth:`register_task_types` (empty: unknown)."""
        return queries.registered_task_types(self._engine)

    def recent_fire_task_ids(self, schedule_id: str, limit: int = 20) -> list[str]:
        """Task ids of the latest fires of a schedule that were (or may have been) pushed."""
        return queries.recent_fire_task_ids(self._engine, schedule_id, limit)

    def prune_fires(self, older_than: float, *, batch: int = 10_000) -> int:
        """Delete up to ``batch`` settled fire records claimed before ``older_than``.

        A due time that far back is never proposed again (resume and edits start from now),
        so its record no longer guards anything. Rows still ``claimed`` or ``failed`` stay.
        """
        return queries.prune_fires(self._engine, older_than, batch)

    def count_enabled(self) -> int:
        """How many schedules are enabled."""
        return queries.count_enabled(self._engine)

    # -- config file ---------------------------------------------------------------------------
    def upsert_from_config(self, specs: Iterable[ScheduleSpec]) -> UpsertReport:
        """Make the config-declared schedules match ``specs``, matched by name.

        All specs are validated first (ScheduleError, nothing written, on any problem).
        Unchanged ones are left alone (history and pause state kept); changed ones are updated
        (history kept); new ones created; config schedules missing from ``specs`` disabled
        (not deleted) and reported. Schedules added through the API are never touched; a
        config name one of them holds is refused. See :mod:`supervisor.scheduling.upsert`.
        """
        specs = list(specs)
        with self._changing() as conn:
            report = upsert.upsert_from_config(
                conn, specs, self._clock(), known_task_types=self._known
            )
        if report.disabled:
            _log.warning("schedules removed from the config were disabled: {}", report.disabled)
        return report

    # -- internals -----------------------------------------------------------------------------
    def _set_enabled(self, ref: str, enabled: bool) -> bool:
        now = self._clock()
        with self._changing() as conn:
            row = writes.find_row(conn, ref)
            if row is None:
                return False
            task_id = row["task_id"]
            values: dict[str, Any] = {
                "enabled": enabled,
                "updated_at": now,
                "disabled_reason": None if enabled else row["disabled_reason"] or "paused",
            }
            if enabled:
                spec = spec_from_row(row, params={})
                nxt = writes.first_unfired(conn, task_id, spec, now, row["anchor_at"])
                spent = spec.max_runs > 0 and row["run_count"] >= spec.max_runs
                if nxt is None or spent:
                    _log.bind(schedule_id=task_id).warning(
                        "schedule {} cannot be resumed: {}",
                        task_id,
                        "max_runs reached" if spent else "no fire time left",
                    )
                    return False
                values["next_run_at"] = nxt
            writes.update_row(conn, task_id, values)
        return True
