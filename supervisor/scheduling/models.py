"""Tables, engine setup and schema migration for the scheduler (SQLAlchemy 2.x Core).

Times are epoch seconds stored as floats (the user's seed schema used BIGINT seconds; a seed
database is upgraded in place and its integer values read back unchanged).

* ``scheduler_task``: one row per schedule -- the seed columns plus what the features need.
* ``schedule_fire``: one row per fired due time, unique on ``(schedule_id, due_at)``; the
  record that makes a due time fire at most once (see :mod:`supervisor.scheduling.claim`).
* ``scheduler_task_type``: the task types the running scheduler's app registers (version 2), so
  that the CLI and the API in other processes can refuse an unregistered type at add time.
* ``schema_version``: one row per applied schema version.

Schedule names are unique (version 3: the unique index ``uq_scheduler_task_name``). An older
database that holds duplicate names keeps the first of each (a config-declared one, else the
oldest) under its name and renames the later ones ``<name>~2``, ``<name>~3``, ... with a
warning that names both ids: the index is on for every database, so two processes adding one
name at the same moment can never both succeed, and nothing is deleted.

:func:`migrate` is idempotent: it creates what is missing, adds columns an older database
lacks, records the version, and refuses a database written by a newer release.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.db import add_missing_columns
from supervisor.scheduling.errors import ScheduleError

SCHEMA_VERSION = 3
NAME_INDEX = "uq_scheduler_task_name"
_log = logger.bind(component="scheduler")
metadata = sa.MetaData()

scheduler_task = sa.Table(
    "scheduler_task",
    metadata,
    sa.Column("task_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("task_type", sa.String(100), nullable=False),
    sa.Column("params", sa.Text),
    sa.Column("schedule_type", sa.String(20), nullable=False),
    sa.Column("interval_seconds", sa.Float),
    sa.Column("cron_expression", sa.String(100)),
    sa.Column("execute_at", sa.Float),
    sa.Column("last_run_at", sa.Float),
    sa.Column("next_run_at", sa.Float),
    sa.Column("run_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_runs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("description", sa.Text),
    # Added by this project (schema version 1).
    sa.Column("priority", sa.Integer, nullable=False, server_default="5"),
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("start_at", sa.Float),
    sa.Column("end_at", sa.Float),
    sa.Column("anchor_at", sa.Float),  # interval fire times are anchor_at + k * interval
    sa.Column("misfire_grace_s", sa.Float, nullable=False, server_default="3600"),
    sa.Column("misfire_policy", sa.String(10), nullable=False, server_default="once"),
    sa.Column("misfire_max_catchup", sa.Integer, nullable=False, server_default="10"),
    sa.Column("max_instances", sa.Integer, nullable=False, server_default="1"),
    sa.Column("overlap", sa.String(10), nullable=False, server_default="skip"),
    sa.Column("skipped_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("source", sa.String(10), nullable=False, server_default="api"),  # api | config
    sa.Column("disabled_reason", sa.Text),
    sa.Index("ix_scheduler_task_due", "enabled", "next_run_at"),
    sa.Index(NAME_INDEX, "name", unique=True),
)

schedule_fire = sa.Table(
    "schedule_fire",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("schedule_id", sa.String(36), nullable=False),
    sa.Column("due_at", sa.Float, nullable=False),
    sa.Column("task_id", sa.String(100), nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # claimed | pushed | failed
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("schedule_id", "due_at", name="uq_schedule_fire_due"),
    sa.Index("ix_schedule_fire_status", "status", "claimed_at"),
)

scheduler_task_type = sa.Table(
    "scheduler_task_type",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("registered_at", sa.Float, nullable=False),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
)


def writer(engine: Engine) -> Engine:
    """``engine`` with the option that makes SQLite transactions take the write lock first."""
    return engine.execution_options(sqlite_immediate=True)


def migrate(engine: Engine) -> int:
    """Create or upgrade the scheduler's tables; return the schema version now in place.

    Idempotent and safe to run from several processes at once. An older database (including
    the seed's bare ``scheduler_task`` table) gains the missing columns; a database whose
    recorded version is newer than :data:`SCHEMA_VERSION` is refused with ScheduleError.
    """
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":  # serialize concurrent migrations
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7305914)"))
        metadata.create_all(conn)
        current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
        if current is not None and current > SCHEMA_VERSION:
            raise ScheduleError(
                f"the scheduler database has schema version {current}, newer than the "
                f"{SCHEMA_VERSION} this release supports; upgrade supervisor"
            )
        if current is None or current < SCHEMA_VERSION:
            rename_duplicate_names(conn)  # before add_missing_columns makes the unique index
            add_missing_columns(conn, scheduler_task)
            conn.execute(
                scheduler_task.update()
                .where(
                    scheduler_task.c.anchor_at.is_(None),
                    scheduler_task.c.schedule_type == "interval",
                )
                .values(anchor_at=scheduler_task.c.next_run_at)
            )
            _name_index().create(conn, checkfirst=True)
            # The non-unique index of versions 1-2, made redundant by the unique one.
            conn.exec_driver_sql("DROP INDEX IF EXISTS ix_scheduler_task_name")
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


def _name_index() -> sa.Index:
    return next(i for i in scheduler_task.indexes if i.name == NAME_INDEX)


def rename_duplicate_names(conn: sa.Connection) -> list[tuple[str, str, str]]:
    """Give every schedule a name of its own before the unique index is made.

    Of each group of schedules sharing a name, the first -- config-declared before API ones
    (the config upsert finds its schedules by name), then the oldest -- keeps it; the others
    become ``<name>~2``, ``<name>~3``, ... (a suffix not taken yet, the name cut to fit 255
    characters). Returns ``(id, old name, new name)`` per rename; each is logged.
    """
    t = scheduler_task
    dupes = list(
        conn.execute(
            sa.select(t.c.name).group_by(t.c.name).having(sa.func.count() > 1).order_by(t.c.name)
        ).scalars()
    )
    # A seed-era table has no ``source`` column yet (add_missing_columns runs after this).
    has_source = "source" in {c["name"] for c in sa.inspect(conn).get_columns(t.name)}
    order: list[sa.ColumnElement[Any]] = [t.c.created_at, t.c.task_id]
    if has_source:
        order.insert(0, sa.case((t.c.source == "config", 0), else_=1))
    renamed: list[tuple[str, str, str]] = []
    taken = set(conn.execute(sa.select(t.c.name)).scalars())
    for name in dupes:
        rows = conn.execute(
            sa.select(t.c.task_id).where(t.c.name == name).order_by(*order)
        ).scalars()
        keeper, *later = list(rows)
        k = 2
        for task_id in later:
            while True:
                suffix = f"~{k}"
                new = name[: 255 - len(suffix)] + suffix
                k += 1
                if new not in taken:
                    break
            taken.add(new)
            conn.execute(t.update().where(t.c.task_id == task_id).values(name=new))
            renamed.append((task_id, name, new))
            _log.bind(schedule_id=task_id).warning(
                "schedule {} renamed from {!r} to {!r}: schedule names are unique now and "
                "schedule {} keeps {!r}",
                task_id,
                name,
                new,
                keeper,
                name,
            )
    return renamed
