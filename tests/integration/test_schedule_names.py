"""Schedule names are unique (in the database, too) and name a schedule as well as its id.

Run on SQLite and PostgreSQL (see ``test_schedule_backends.backend_url``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from supervisor.scheduling import ScheduleError, ScheduleStore, make_engine, make_spec, migrate
from supervisor.scheduling.client import Scheduler
from supervisor.scheduling.models import NAME_INDEX, scheduler_task, schema_version
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as made:
        yield made


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    made = make_engine(url)
    yield made
    made.dispose()


@pytest.fixture
def store(engine: Engine) -> ScheduleStore:
    made = ScheduleStore(engine, clock=lambda: T0)
    made.migrate()
    return made


def add(store: ScheduleStore, name: str, every: float = 60.0) -> str:
    return store.add_scheduler_task(
        name=name, task_type="t", schedule_type="interval", interval_seconds=every
    )


def test_a_taken_name_is_refused_naming_the_holder(store: ScheduleStore) -> None:
    sid = add(store, "nightly")
    with pytest.raises(ScheduleError) as caught:
        add(store, "nightly", every=5)
    assert str(caught.value) == f"schedule name 'nightly' is taken by schedule {sid}"
    assert caught.value.field == "name"
    assert [t["task_id"] for t in store.list_tasks()] == [sid]


def test_the_database_refuses_a_duplicate_past_the_check(
    store: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process inserted the name after this one checked: the unique index decides,
    and the caller still gets the one-line message naming the holder."""
    from supervisor.scheduling import writes

    sid = add(store, "nightly")
    monkeypatch.setattr(writes, "_check_name_free", lambda *a, **k: None)
    with pytest.raises(ScheduleError, match=f"'nightly' is taken by schedule {sid}$"):
        add(store, "nightly")
    other = add(store, "other")
    with pytest.raises(ScheduleError, match=f"'nightly' is taken by schedule {sid}$"):
        store.update_task(other, name="nightly")
    assert sorted(t["name"] for t in store.list_tasks()) == ["nightly", "other"]


def test_two_processes_adding_one_name_at_once_one_wins(url: str) -> None:
    engines = [make_engine(url) for _ in range(4)]
    try:
        ScheduleStore(engines[0]).migrate()
        stores = [ScheduleStore(e, clock=lambda: T0) for e in engines]
        start = threading.Barrier(len(stores))
        ids: list[str] = []
        errors: list[str] = []

        def racer(store: ScheduleStore) -> None:
            start.wait(timeout=10)
            try:
                ids.append(add(store, "nightly"))
            except ScheduleError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=racer, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(ids) == 1 and len(errors) == 3
        assert set(errors) == {f"schedule name 'nightly' is taken by schedule {ids[0]}"}
        assert [t["task_id"] for t in stores[0].list_tasks()] == ids
    finally:
        for e in engines:
            e.dispose()


def test_every_management_call_takes_a_name(store: ScheduleStore) -> None:
    sid = add(store, "sync")
    assert store.get_task("sync")["task_id"] == sid  # type: ignore[index]
    assert store.pause_task("sync") and not store.get_task(sid)["enabled"]  # type: ignore[index]
    assert store.resume_task("sync") and store.get_task(sid)["enabled"]  # type: ignore[index]
    assert store.update_task("sync", priority=9)
    assert store.get_task(sid)["priority"] == 9  # type: ignore[index]
    assert store.preview("sync", 2) == [T0 + 60, T0 + 120]
    other = add(store, "other")
    with pytest.raises(
        ScheduleError, match=f"^schedule name 'other' is taken by schedule {other}$"
    ):
        store.update_task("sync", name="other")
    assert store.delete_task("other")
    assert store.update_task("sync", name="sync-2")  # a rename to a free name
    assert store.get_task("sync") is None and store.get_task("sync-2") is not None
    assert store.delete_task("sync-2") and store.list_tasks() == []
    assert not store.pause_task("sync-2") and not store.delete_task("sync-2")
    with pytest.raises(ScheduleError, match="no schedule with id or name 'sync-2'"):
        store.preview("sync-2")


def test_the_seed_api_takes_a_name(engine: Engine) -> None:
    scheduler = Scheduler(engine, known_task_types={"t"}, clock=lambda: T0)
    sid = scheduler.add_scheduler_task("日报", "t", "interval", interval_seconds=10)
    with pytest.raises(ScheduleError, match=f"taken by schedule {sid}"):
        scheduler.add_scheduler_task("日报", "t", "interval", interval_seconds=20)
    assert scheduler.pause_task("日报") and scheduler.resume_task("日报")
    assert scheduler.update_task("日报", max_runs=3)
    assert scheduler.get_task("日报")["max_runs"] == 3  # type: ignore[index]
    assert scheduler.preview("日报", 1) == [T0 + 10]
    assert scheduler.delete_task("日报")


def test_an_id_wins_over_a_name_and_id_shaped_names_are_refused(
    store: ScheduleStore, engine: Engine
) -> None:
    first, second = add(store, "first"), add(store, "second")
    with engine.begin() as conn:  # a seed-era id, and a name that equals it
        conn.execute(
            sa.update(scheduler_task).where(scheduler_task.c.task_id == first).values(task_id="a1")
        )
        conn.execute(
            sa.update(scheduler_task).where(scheduler_task.c.task_id == second).values(name="a1")
        )
    assert store.get_task("a1")["name"] == "first"  # type: ignore[index]
    uuid_like = "0E0F4A31-2B41-4C1E-9D7A-7D65A3C0B0A1"
    with pytest.raises(ScheduleError, match="looks like a schedule id"):
        add(store, uuid_like)
    with pytest.raises(ScheduleError, match="looks like a schedule id"):
        store.update_task(second, name=uuid_like)
    spec = make_spec(name=uuid_like, task_type="t", schedule_type="interval", interval_seconds=5)
    with pytest.raises(ScheduleError, match="looks like a schedule id"):
        store.upsert_from_config([spec])


def test_a_config_name_held_by_an_api_schedule_is_refused(store: ScheduleStore) -> None:
    api_id = add(store, "sync")
    spec = make_spec(name="sync", task_type="t", schedule_type="interval", interval_seconds=5)
    other = make_spec(name="other", task_type="t", schedule_type="interval", interval_seconds=5)
    with pytest.raises(ScheduleError, match=f"'sync' is taken by schedule {api_id}"):
        store.upsert_from_config([other, spec])
    assert [t["task_id"] for t in store.list_tasks()] == [api_id]  # nothing written
    assert store.upsert_from_config([other]).created == ["other"]
    assert store.upsert_from_config([other]).unchanged == ["other"]  # still matched by name


def _as_version_2_with_duplicates(engine: Engine) -> list[str]:
    """A database as release 2 left it (no unique name), holding duplicate names."""
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {NAME_INDEX}")
        conn.execute(sa.delete(schema_version))
        conn.execute(schema_version.insert().values(version=2))
        rows = [
            ("id-c", "dup", "api", T0 + 3),
            ("id-a", "dup", "api", T0 + 1),
            ("id-b", "dup", "config", T0 + 2),
            ("id-d", "dup~2", "api", T0 + 4),  # the first suffix is already taken
            ("id-e", "solo", "api", T0 + 5),
        ]
        for task_id, name, source, created in rows:
            conn.execute(
                scheduler_task.insert().values(
                    task_id=task_id,
                    name=name,
                    task_type="t",
                    schedule_type="interval",
                    interval_seconds=60,
                    next_run_at=T0 + 60,
                    created_at=created,
                    updated_at=created,
                    source=source,
                )
            )
    return [r[0] for r in rows]


def test_an_older_database_with_duplicates_is_renamed_and_indexed(engine: Engine) -> None:
    _as_version_2_with_duplicates(engine)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        migrate(engine)
        migrate(engine)  # idempotent: nothing more to rename
    finally:
        logger.remove(sink)
    store = ScheduleStore(engine, clock=lambda: T0)
    names = {t["task_id"]: t["name"] for t in store.list_tasks()}
    # The config one keeps the name; then the oldest API one, then the next.
    assert names == {
        "id-b": "dup",
        "id-a": "dup~3",
        "id-c": "dup~4",
        "id-d": "dup~2",
        "id-e": "solo",
    }
    assert len(warnings) == 2
    assert "schedule id-a renamed from 'dup' to 'dup~3'" in warnings[0]
    assert "schedule id-b keeps 'dup'" in warnings[0]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(sa.update(scheduler_task).values(name="solo"))
    with pytest.raises(ScheduleError, match="'dup' is taken by schedule id-b"):
        add(store, "dup")
