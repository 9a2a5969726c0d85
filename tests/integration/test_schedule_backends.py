"""The databases the scheduler runs on, and what only PostgreSQL can show: row locks skipped.

``backend_url(kind, tmp_path)`` gives each test its own database: a SQLite file, or a fresh
PostgreSQL schema (dropped afterwards) selected through the connection's ``search_path``. Other
scheduler test modules import it to run the same tests on both. PostgreSQL is
``SUPERVISOR_TEST_POSTGRES`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
unreachable, the PostgreSQL cases skip on a laptop and fail when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from supervisor.scheduling import ScheduleStore, make_engine
from supervisor.scheduling.models import scheduler_task, writer
from tests.helpers import require_service

pytestmark = pytest.mark.timeout(60)
PG_URL = os.environ.get(
    "SUPERVISOR_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")
T0 = 1_700_000_000.0
_pg_problem: list[str | None] = []


def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None: it can); asked once per test session."""
    if not _pg_problem:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            engine.dispose()
            _pg_problem.append(None)
        except Exception as exc:  # no driver, no server, bad credentials
            _pg_problem.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    return _pg_problem[0]


@contextlib.contextmanager
def backend_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of ``kind`` for one test."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'schedules.db'}"
        return
    problem = _postgres_problem()
    require_service(problem is None, f"PostgreSQL at {PG_URL} is unreachable: {problem}")
    schema = f"sched_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        _drop_schema(admin, schema)
        admin.dispose()


def _drop_schema(admin: sa.Engine, schema: str) -> None:
    """Drop the test's schema; a connection a failed test left in a transaction must not
    block it, so whoever holds a lock in the schema is terminated first."""
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT l.pid FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND l.pid <> pg_backend_pid()) AS holders"
            ),
            {"schema": schema},
        )
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with backend_url("postgresql", tmp_path) as url:
        yield url


def _stores(url: str, n: int, now: list[float]) -> list[ScheduleStore]:
    stores = [ScheduleStore(make_engine(url), clock=lambda: now[0]) for _ in range(n)]
    stores[0].migrate()
    return stores


def test_a_locked_row_is_skipped_not_waited_for(pg_url: str) -> None:
    now = [T0]
    a, b = _stores(pg_url, 2, now)
    try:
        ids = [
            a.add_scheduler_task(
                name=f"s{k}", task_type="t", schedule_type="interval", interval_seconds=10
            )
            for k in range(3)
        ]
        pushed: list[dict[str, Any]] = []
        with writer(a._engine).connect() as held, held.begin():
            # Another scheduler is in the middle of claiming ids[0].
            held.execute(
                sa.select(scheduler_task)
                .where(scheduler_task.c.task_id == ids[0])
                .with_for_update()
            )
            b.claim_due(T0 + 10, pushed.append)  # returns at once: the locked row is skipped
            assert sorted(t["schedule_id"] for t in pushed) == sorted(ids[1:])
        b.claim_due(T0 + 10, pushed.append)
        assert sorted(t["schedule_id"] for t in pushed) == sorted(ids)
        assert b.counters["lost_race"] == 0
    finally:
        for s in (a, b):
            s._engine.dispose()


def test_schedulers_racing_on_one_due_time_fire_each_once(pg_url: str) -> None:
    now = [T0]
    stores = _stores(pg_url, 3, now)
    try:
        for k in range(60):
            stores[0].add_scheduler_task(
                name=f"s{k}", task_type="t", schedule_type="interval", interval_seconds=10
            )
        pushed: list[dict[str, Any]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(stores))

        def push(task: dict[str, Any]) -> None:
            with lock:
                pushed.append(task)

        def run(store: ScheduleStore) -> None:
            barrier.wait(timeout=10)
            for _ in range(3):
                store.claim_due(T0 + 10, push, batch_size=7)

        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        keys = [(t["schedule_id"], t["scheduled_at"]) for t in pushed]
        assert len(keys) == 60 and len(set(keys)) == 60
        assert sum(t["run_count"] for t in stores[0].list_tasks()) == 60
    finally:
        for s in stores:
            s._engine.dispose()


@pytest.mark.parametrize("kind", BACKENDS)
def test_each_test_gets_an_empty_database(kind: str, tmp_path: Path) -> None:
    with backend_url(kind, tmp_path) as url:
        store = ScheduleStore(make_engine(url))
        try:
            store.migrate()
            assert store.list_tasks() == [] and store.registered_task_types() == []
            store.register_task_types(["b", "a", "a"])
            assert store.registered_task_types() == ["a", "b"]
        finally:
            store._engine.dispose()
