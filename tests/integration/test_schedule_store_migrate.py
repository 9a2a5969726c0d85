"""Schema creation and upgrade (SQLite and PostgreSQL), and the SQLite connection settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from supervisor.scheduling import SCHEMA_VERSION, ScheduleError, ScheduleStore, make_engine
from supervisor.scheduling.models import migrate, schema_version
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000

# The table from the user's guide (docs "数据库表结构"), as a seed-era database has it.
SEED_DDL = """
CREATE TABLE scheduler_task (
    task_id VARCHAR(36) PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    task_type VARCHAR(100) NOT NULL,
    params TEXT,
    schedule_type VARCHAR(20) NOT NULL,
    interval_seconds INT,
    cron_expression VARCHAR(100),
    execute_at BIGINT,
    last_run_at BIGINT,
    next_run_at BIGINT,
    run_count INT DEFAULT 0,
    max_runs INT DEFAULT 0,
    enabled BOOLEAN DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    description TEXT
)
"""


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with backend_url(request.param, tmp_path) as url:
        made = make_engine(url)
        yield made
        made.dispose()


def test_migrate_is_idempotent_and_records_the_version(engine: Engine) -> None:
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        versions = list(conn.scalars(sa.select(schema_version.c.version)))
        tables = set(sa.inspect(conn).get_table_names())
    assert versions == [SCHEMA_VERSION]
    assert {"scheduler_task", "schedule_fire", "schema_version"} <= tables


def test_a_newer_database_is_refused(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(ScheduleError, match="newer"):
        migrate(engine)


def test_a_seed_era_database_is_upgraded_and_keeps_working(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED_DDL)
        conn.exec_driver_sql(
            "INSERT INTO scheduler_task (task_id, name, task_type, params, schedule_type, "
            "interval_seconds, next_run_at, run_count, max_runs, enabled, created_at, "
            "updated_at, description) VALUES ('old-1', '旧任务', 'test_task', "
            f"'{{\"message\": \"Hello\"}}', 'interval', 10, {T0 + 10}, 2, 0, TRUE, {T0}, {T0}, '')"
        )
    migrate(engine)
    now = [float(T0 + 10)]
    store = ScheduleStore(engine, clock=lambda: now[0])
    [task] = store.list_tasks()
    assert (task["name"], task["run_count"], task["priority"], task["timezone"]) == (
        "旧任务",
        2,
        5,
        "UTC",
    )
    pushed: list[dict[str, Any]] = []
    store.claim_due(now[0], pushed.append)
    store.claim_due(now[0] + 10, pushed.append)
    assert [t["scheduled_at"] for t in pushed] == [T0 + 10, T0 + 20]
    assert pushed[0]["params"] == {"message": "Hello"}


def test_sqlite_connections_use_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'schedules.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


def test_a_seed_era_database_with_duplicate_names_gets_unique_names(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(SEED_DDL)
        for task_id, created in (("old-2", T0 + 1), ("old-1", T0)):
            conn.exec_driver_sql(
                "INSERT INTO scheduler_task (task_id, name, task_type, schedule_type, "
                "interval_seconds, next_run_at, created_at, updated_at) VALUES "
                f"('{task_id}', '报表', 't', 'interval', 10, {T0 + 10}, {created}, {created})"
            )
    migrate(engine)
    store = ScheduleStore(engine, clock=lambda: float(T0))
    assert {t["task_id"]: t["name"] for t in store.list_tasks()} == {
        "old-1": "报表",
        "old-2": "报表~2",
    }
    with pytest.raises(ScheduleError, match="'报表' is taken by schedule old-1"):
        store.add_scheduler_task(
            name="报表", task_type="t", schedule_type="interval", interval_seconds=5
        )
