"""Config-declared schedules (``[[schedules]]``, the app's ``SCHEDULES``) made to match the file.

Matched by name among the schedules whose ``source`` is ``config``: unchanged ones are left alone
(history and pause state kept), changed ones updated (history kept), new ones created, and
config schedules missing from the file disabled (not deleted). Schedules added through the API
are never touched; a config schedule whose name an API schedule already holds is refused
(names are unique), naming that schedule.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import scheduler_task
from supervisor.scheduling.rows import same_declaration, spec_columns, spec_from_row
from supervisor.scheduling.spec import ScheduleSpec
from supervisor.scheduling.validation import validate
from supervisor.scheduling.writes import insert_row, name_owner, timing_values, update_row

REMOVED_FROM_CONFIG = "removed from config"


@dataclass
class UpsertReport:
    """What :meth:`ScheduleStore.upsert_from_config` did, by schedule name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


def _stored_spec(row: sa.RowMapping) -> ScheduleSpec | None:
    """The row's spec, or None when its params are corrupt (so it counts as changed)."""
    try:
        return spec_from_row(row)
    except ScheduleError:
        return None


def upsert_from_config(
    conn: sa.Connection,
    specs: Sequence[ScheduleSpec],
    now: float,
    *,
    known_task_types: Collection[str] | None,
) -> UpsertReport:
    """Apply ``specs`` in the caller's write transaction (see the module docstring).

    Raises ScheduleError on any problem -- a name declared twice, an invalid spec, a name held
    by an API schedule --; the caller's transaction then rolls back and nothing is written.
    """
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScheduleError(
            f"schedule name(s) {dupes} declared more than once in the config", field="name"
        )
    report = UpsertReport()
    rows = {
        r["name"]: r
        for r in conn.execute(
            sa.select(scheduler_task).where(scheduler_task.c.source == "config")
        ).mappings()
    }
    for spec in specs:
        row = rows.get(spec.name)
        old = None if row is None else _stored_spec(row)
        if (
            old is not None
            and same_declaration(old, spec)
            and row is not None
            and row["disabled_reason"] != REMOVED_FROM_CONFIG
        ):
            report.unchanged.append(spec.name)
            continue
        check_past = old is None or old.execute_at != spec.execute_at
        validate(
            spec,
            now=now,
            known_task_types=known_task_types,
            check_past=check_past,
            new_name=row is None,
        )
        if row is None:
            owner = name_owner(conn, spec.name)
            if owner is not None:
                raise ScheduleError(
                    f"config schedule name {spec.name!r} is taken by schedule {owner} "
                    "(added through the API or the CLI); rename one of them",
                    field="name",
                )
            insert_row(conn, spec, now, source="config")
            report.created.append(spec.name)
            continue
        values = spec_columns(spec)
        values.update(timing_values(conn, row, old or spec_from_row(row, params={}), spec, now))
        update_row(conn, row["task_id"], values)
        report.updated.append(spec.name)
    for name, row in rows.items():
        if name not in names and row["disabled_reason"] != REMOVED_FROM_CONFIG:
            update_row(
                conn,
                row["task_id"],
                {"enabled": False, "disabled_reason": REMOVED_FROM_CONFIG, "updated_at": now},
            )
            report.disabled.append(name)
    return report
