"""ScheduleStore on a real database (SQLite and PostgreSQL): management API, firing,
at-most-once, recovery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.scheduling import ScheduleError, ScheduleStore, make_engine
from supervisor.scheduling.models import schedule_fire, scheduler_task
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engines(db_url: str) -> Iterator[list[Engine]]:
    """Engines on the test's database; each one stands for a separate process."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_store(engines: list[Engine], url: str, clock: Clock, **kw: Any) -> ScheduleStore:
    engine = make_engine(url)
    engines.append(engine)
    store = ScheduleStore(engine, clock=clock, **kw)
    store.migrate()
    return store


@pytest.fixture
def store(engines: list[Engine], db_url: str, clock: Clock) -> ScheduleStore:
    return open_store(engines, db_url, clock, known_task_types={"test_task", "report"})


def every(store: ScheduleStore, seconds: float = 10, name: str = "job", **kw: Any) -> str:
    return store.add_scheduler_task(
        name=name, task_type="test_task", schedule_type="interval", interval_seconds=seconds, **kw
    )


def fire_rows(store_engine: Engine) -> list[tuple[str, float, str]]:
    with store_engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(
                    schedule_fire.c.schedule_id, schedule_fire.c.due_at, schedule_fire.c.status
                )
            )
        ]


# -- the user's seed example -------------------------------------------------------------------
def test_seed_example_fires_exactly_five_times_then_disables(
    store: ScheduleStore, clock: Clock
) -> None:
    task_id = store.add_scheduler_task(
        name="测试任务",
        task_type="test_task",
        schedule_type="interval",
        interval_seconds=10,
        params={"message": "Hello"},
        max_runs=5,
        description="每10秒执行一次,共5次",
    )
    pushed: list[dict[str, Any]] = []
    for _ in range(12):
        clock.now += 5
        store.claim_due(clock.now, pushed.append)
    assert [t["scheduled_at"] for t in pushed] == [T0 + 10 * k for k in range(1, 6)]
    assert all(
        t["type"] == "test_task"
        and t["params"] == {"message": "Hello"}
        and t["schedule_id"] == task_id
        and t["priority"] == 5
        for t in pushed
    )
    assert len({t["task_id"] for t in pushed}) == 5
    task = store.get_task(task_id)
    assert task is not None
    assert (task["run_count"], task["enabled"]) == (5, False)
    assert task["disabled_reason"] == "max_runs reached (5)"
    assert [t["name"] for t in store.list_tasks(enabled_only=True)] == []
    assert [t["name"] for t in store.list_tasks()] == ["测试任务"]


# -- management API ----------------------------------------------------------------------------
def test_add_get_list_have_the_seed_keys(store: ScheduleStore) -> None:
    task_id = every(store, params={"x": 1}, description="d")
    task = store.get_task(task_id)
    assert task is not None
    for key in (
        "task_id",
        "name",
        "task_type",
        "params",
        "schedule_type",
        "interval_seconds",
        "cron_expression",
        "execute_at",
        "last_run_at",
        "next_run_at",
        "run_count",
        "max_runs",
        "enabled",
        "created_at",
        "updated_at",
        "description",
    ):
        assert key in task
    assert task["params"] == {"x": 1} and task["run_count"] == 0
    assert task["next_run_at"] == T0 + 10
    assert store.list_tasks() == [task]
    assert store.get_task("nope") is None


def test_add_refuses_bad_input_and_stores_nothing(store: ScheduleStore) -> None:
    with pytest.raises(ScheduleError, match="known: report, test_task"):
        store.add_scheduler_task(
            name="x", task_type="nope", schedule_type="interval", interval_seconds=5
        )
    with pytest.raises(ScheduleError, match="cron_expression"):
        store.add_scheduler_task(
            name="x", task_type="report", schedule_type="cron", cron_expression="every day"
        )
    assert store.list_tasks() == []


def test_pause_resume_delete(store: ScheduleStore, clock: Clock) -> None:
    task_id = every(store)
    assert store.pause_task(task_id)
    clock.now += 100
    assert store.claim_due(clock.now, lambda t: None) == []
    assert store.next_due_at() is None
    assert store.resume_task(task_id)
    task = store.get_task(task_id)
    assert task is not None and task["enabled"]
    assert task["next_run_at"] == T0 + 100  # resumed from now on the same grid: no catch-up
    assert store.next_due_at() == T0 + 100
    assert store.delete_task(task_id)
    assert not store.delete_task(task_id)
    assert not store.pause_task(task_id) and not store.resume_task(task_id)
    assert store.list_tasks() == []


def test_update_task(store: ScheduleStore, clock: Clock) -> None:
    task_id = every(store)
    pushed: list[dict[str, Any]] = []
    clock.now += 10
    store.claim_due(clock.now, pushed.append)
    assert store.update_task(task_id, params={"v": 2}, priority=9)
    clock.now += 10
    store.claim_due(clock.now, pushed.append)
    assert pushed[-1]["params"] == {"v": 2} and pushed[-1]["priority"] == 9
    assert store.update_task(task_id, schedule_type="cron", cron_expression="0 * * * *")
    task = store.get_task(task_id)
    assert task is not None
    assert task["interval_seconds"] is None and task["run_count"] == 2
    assert task["next_run_at"] is not None and task["next_run_at"] % 3600 == 0
    with pytest.raises(ScheduleError, match="timezone"):
        store.update_task(task_id, timezone="Nowhere/Land")
    with pytest.raises(ScheduleError, match="'colour'"):
        store.update_task(task_id, colour="red")
    assert not store.update_task("nope", priority=1)


def test_once_fires_then_is_disabled_not_deleted(store: ScheduleStore, clock: Clock) -> None:
    task_id = store.add_scheduler_task(
        name="later", task_type="report", schedule_type="once", execute_at=T0 + 5
    )
    pushed: list[dict[str, Any]] = []
    clock.now += 5
    store.claim_due(clock.now, pushed.append)
    store.claim_due(clock.now + 100, pushed.append)
    assert [t["scheduled_at"] for t in pushed] == [T0 + 5]
    task = store.get_task(task_id)
    assert task is not None and not task["enabled"] and task["run_count"] == 1
    assert not store.resume_task(task_id)


def test_next_due_at_is_the_earliest_enabled(store: ScheduleStore) -> None:
    assert store.next_due_at() is None
    every(store, 30, name="a")
    b = every(store, 20, name="b")
    assert store.next_due_at() == T0 + 20
    store.pause_task(b)
    assert store.next_due_at() == T0 + 30


# -- at most once ------------------------------------------------------------------------------
def test_claiming_twice_fires_once(store: ScheduleStore, clock: Clock) -> None:
    every(store)
    pushed: list[dict[str, Any]] = []
    clock.now += 10
    assert len(store.claim_due(clock.now, pushed.append)) == 1
    assert store.claim_due(clock.now, pushed.append) == []
    assert len(pushed) == 1


def test_two_stores_on_one_file_never_double_fire(
    engines: list[Engine], db_url: str, clock: Clock
) -> None:
    a = open_store(engines, db_url, clock)
    b = open_store(engines, db_url, clock)
    for k in range(5):
        every(a, 10 + k, name=f"s{k}")
    pushed: list[dict[str, Any]] = []
    for _ in range(30):
        clock.now += 3
        a.claim_due(clock.now, pushed.append)
        b.claim_due(clock.now, pushed.append)
    keys = [(t["schedule_id"], t["scheduled_at"]) for t in pushed]
    assert len(keys) == len(set(keys)) and len(keys) > 20
    assert sum(t["run_count"] for t in a.list_tasks()) == len(keys)


def test_two_stores_racing_in_threads_never_double_fire(
    engines: list[Engine], db_url: str, clock: Clock
) -> None:
    stores = [open_store(engines, db_url, clock) for _ in range(2)]
    for k in range(20):
        every(stores[0], 10, name=f"s{k}")
    pushed: list[dict[str, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def push(task: dict[str, Any]) -> None:
        with lock:
            pushed.append(task)

    def run(store: ScheduleStore) -> None:
        barrier.wait(timeout=10)
        store.claim_due(T0 + 10, push)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(pushed) == 20
    assert len({t["task_id"] for t in pushed}) == 20


def test_interleaved_claim_without_locks_loses_the_race(
    db_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain engines (no BEGIN IMMEDIATE): on SQLite the unique fire row / compare-and-set
    decide; PostgreSQL's row lock makes B skip the row A holds."""
    from supervisor.scheduling import plan

    plain = [sa.create_engine(db_url), sa.create_engine(db_url)]
    try:
        a, b = (ScheduleStore(e, clock=clock) for e in plain)
        a.migrate()
        every(a)
        pushed: list[dict[str, Any]] = []
        real = plan.due_fires
        nested: list[bool] = []

        def interleave(*args: Any, **kw: Any) -> Any:
            decision = real(*args, **kw)
            if not nested:  # while A is inside its claim, B claims the same due time
                nested.append(True)
                b.claim_due(T0 + 10, pushed.append)
            return decision

        monkeypatch.setattr(plan, "due_fires", interleave)
        a.claim_due(T0 + 10, pushed.append)
        assert [t["scheduled_at"] for t in pushed] == [T0 + 10]
        if db_url.startswith("postgresql"):
            assert (a.counters["fired"], b.counters["fired"]) == (1, 0)
        else:
            assert a.counters["lost_race"] == 1
    finally:
        for engine in plain:
            engine.dispose()


def test_a_due_time_already_recorded_is_not_fired_again(store: ScheduleStore, clock: Clock) -> None:
    task_id = every(store)
    with store._engine.begin() as conn:  # as if fired before next_run_at was moved back
        conn.execute(
            schedule_fire.insert().values(
                schedule_id=task_id, due_at=T0 + 10, task_id="x", claimed_at=T0, status="pushed"
            )
        )
    pushed: list[dict[str, Any]] = []
    store.claim_due(T0 + 10, pushed.append)
    assert pushed == []
    assert store.counters["already_fired"] == 1
    assert store.next_due_at() == T0 + 20  # advanced: the master does not spin on it


class Crash(BaseException):
    """Stands for kill -9 inside the push."""


def test_crash_after_claim_never_refires_and_can_be_retried(
    engines: list[Engine], db_url: str, clock: Clock
) -> None:
    first = open_store(engines, db_url, clock)
    task_id = every(first)

    def crash(task: dict[str, Any]) -> None:
        raise Crash

    clock.now += 10
    with pytest.raises(Crash):
        first.claim_due(clock.now, crash)
    restarted = open_store(engines, db_url, clock)  # a new master on the same database
    pushed: list[dict[str, Any]] = []
    restarted.claim_due(clock.now, pushed.append)
    assert pushed == []
    assert fire_rows(restarted._engine) == [(task_id, T0 + 10, "claimed")]
    clock.now += 5
    retried = restarted.retry_unpushed(pushed.append, min_age_s=1)
    assert [o.pushed for o in retried] == [True]
    assert pushed[0]["task_id"] == f"sched-{task_id}-{round((T0 + 10) * 1000)}"
    assert restarted.retry_unpushed(pushed.append, min_age_s=0) == []
    assert fire_rows(restarted._engine) == [(task_id, T0 + 10, "pushed")]


def test_failed_push_is_kept_and_others_still_fire(store: ScheduleStore, clock: Clock) -> None:
    bad = every(store, name="bad")
    every(store, name="good")
    pushed: list[dict[str, Any]] = []

    def push(task: dict[str, Any]) -> None:
        if task["schedule_id"] == bad:
            raise ConnectionError("broker down")
        pushed.append(task)

    clock.now += 10
    outcomes = store.claim_due(clock.now, push)
    assert sorted((o.name, o.pushed) for o in outcomes) == [("bad", False), ("good", True)]
    assert store.counters["push_failed"] == 1
    clock.now += 1
    assert [o.pushed for o in store.retry_unpushed(pushed.append, min_age_s=0)] == [True]


def test_restart_after_outage_applies_the_misfire_policy(
    engines: list[Engine], db_url: str, clock: Clock
) -> None:
    first = open_store(engines, db_url, clock)
    coalesce = every(first, name="once")
    catch_up = every(first, name="all", misfire_policy="all", overlap="queue")
    pushed: list[dict[str, Any]] = []
    for _ in range(2):
        clock.now += 10
        first.claim_due(clock.now, pushed.append)
    clock.now += 45  # master down through T0+30 .. T0+60
    second = open_store(engines, db_url, clock)
    second.claim_due(clock.now, pushed.append)
    second.claim_due(clock.now, pushed.append)
    by = {
        sid: [t["scheduled_at"] - T0 for t in pushed if t["schedule_id"] == sid]
        for sid in (coalesce, catch_up)
    }
    assert by[coalesce] == [10, 20, 60]
    assert by[catch_up] == [10, 20, 30, 40, 50, 60]
    once_task = second.get_task(coalesce)
    assert once_task is not None and once_task["skipped_count"] == 3


def test_busy_instances_skip_the_fire_and_count_it(store: ScheduleStore, clock: Clock) -> None:
    task_id = every(store)
    asked: list[str] = []

    def one_live(sid: str) -> int:
        asked.append(sid)
        return 1

    clock.now += 10  # never ran: nothing can be live, nobody is asked
    assert len(store.claim_due(clock.now, lambda t: None, active_instances=one_live)) == 1
    assert asked == []
    clock.now += 10  # the first run is still live
    assert store.claim_due(clock.now, lambda t: None, active_instances=one_live) == []
    task = store.get_task(task_id)
    assert asked == [task_id]
    assert task is not None and task["skipped_count"] == 1 and task["run_count"] == 1
    assert task["next_run_at"] == T0 + 30


def test_corrupt_params_are_logged_and_skipped(store: ScheduleStore, clock: Clock) -> None:
    broken = every(store, name="broken")
    every(store, name="fine")
    with store._engine.begin() as conn:
        conn.execute(
            sa.update(scheduler_task)
            .where(scheduler_task.c.task_id == broken)
            .values(params="{not json")
        )
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR")
    try:
        pushed: list[dict[str, Any]] = []
        clock.now += 10
        store.claim_due(clock.now, pushed.append)
    finally:
        logger.remove(sink)
    assert [t["params"] for t in pushed] == [{}]  # only "fine" fired
    assert any(broken in e and "not valid JSON" in e for e in errors)
    listed = {t["name"]: t for t in store.list_tasks()}
    assert listed["broken"]["params"] is None and "not valid JSON" in listed["broken"]["error"]
    assert listed["broken"]["next_run_at"] == T0 + 20  # advanced, still enabled
    assert store.update_task(broken, params={"fixed": True})
    clock.now += 10
    store.claim_due(clock.now, pushed.append)
    assert {"fixed": True} in [t["params"] for t in pushed]
