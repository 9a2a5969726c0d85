"""Schedules declared in a config file, upserted by name at start."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from supervisor.scheduling import ScheduleError, ScheduleStore, make_engine, make_spec
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with backend_url(request.param, tmp_path) as url:
        made = make_engine(url)
        yield made
        made.dispose()


@pytest.fixture
def now() -> list[float]:
    return [T0]


@pytest.fixture
def store(engine: Engine, now: list[float]) -> ScheduleStore:
    made = ScheduleStore(engine, clock=lambda: now[0], known_task_types={"report", "sync"})
    made.migrate()
    return made


def declared() -> list[Any]:
    return [
        make_spec(
            name="nightly",
            task_type="report",
            schedule_type="cron",
            cron_expression="0 2 * * *",
            timezone="Europe/Berlin",
        ),
        make_spec(name="sync", task_type="sync", schedule_type="interval", interval_seconds=60),
        make_spec(
            name="gone-soon", task_type="sync", schedule_type="interval", interval_seconds=300
        ),
    ]


def by_name(store: ScheduleStore) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in store.list_tasks()}


def test_upsert_creates_keeps_updates_and_disables(store: ScheduleStore, now: list[float]) -> None:
    api_id = store.add_scheduler_task(
        name="by-hand", task_type="report", schedule_type="interval", interval_seconds=30
    )
    first = store.upsert_from_config(declared())
    assert sorted(first.created) == ["gone-soon", "nightly", "sync"]
    now[0] += 60
    store.claim_due(now[0], lambda task: None)  # "sync" and "by-hand" run once
    again = store.upsert_from_config(declared())
    assert sorted(again.unchanged) == ["gone-soon", "nightly", "sync"]
    assert again.created == again.updated == again.disabled == []
    assert by_name(store)["sync"]["run_count"] == 1

    nightly, sync, _ = declared()
    changed = [nightly, dataclasses.replace(sync, interval_seconds=120, priority=8)]
    report = store.upsert_from_config(changed)
    assert report.updated == ["sync"] and report.unchanged == ["nightly"]
    assert report.disabled == ["gone-soon"]
    tasks = by_name(store)
    assert tasks["sync"]["interval_seconds"] == 120 and tasks["sync"]["run_count"] == 1
    assert tasks["sync"]["next_run_at"] == now[0] + 120
    assert not tasks["gone-soon"]["enabled"]
    assert tasks["gone-soon"]["disabled_reason"] == "removed from config"
    assert tasks["by-hand"]["enabled"] and tasks["by-hand"]["task_id"] == api_id

    back = store.upsert_from_config(declared())
    assert "gone-soon" in back.updated and by_name(store)["gone-soon"]["enabled"]


def test_unchanged_schedule_keeps_its_pause(store: ScheduleStore) -> None:
    store.upsert_from_config(declared())
    store.pause_task(by_name(store)["sync"]["task_id"])
    assert "sync" in store.upsert_from_config(declared()).unchanged
    assert not by_name(store)["sync"]["enabled"]


def test_a_bad_declaration_writes_nothing(store: ScheduleStore) -> None:
    bad = [
        *declared(),
        make_spec(name="oops", task_type="nope", schedule_type="interval", interval_seconds=5),
    ]
    with pytest.raises(ScheduleError, match="'nope' is not registered"):
        store.upsert_from_config(bad)
    assert store.list_tasks() == []
    twice = [*declared(), declared()[0]]
    with pytest.raises(ScheduleError, match="more than once"):
        store.upsert_from_config(twice)


def test_a_past_once_schedule_reloads_unchanged(store: ScheduleStore, now: list[float]) -> None:
    spec = make_spec(name="launch", task_type="report", schedule_type="once", execute_at=T0 + 10)
    store.upsert_from_config([spec])
    now[0] += 3600  # restart long after it fired: the same file must still load
    store.claim_due(now[0], lambda task: None)
    assert store.upsert_from_config([spec]).unchanged == ["launch"]
