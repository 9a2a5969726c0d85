"""The scheduler's steps on a real SQLite file and an in-process broker, with an injected clock.

Everything the scheduler process does between two sleeps, without a process: preparing the
database, firing into the broker, overlap control through the broker, recovery of unpushed
fires, the wake time it asks for, and the status it publishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.client.queue import Queue
from supervisor.scheduling import ScheduleError, ScheduleStore, make_engine, make_spec
from supervisor.scheduling.client import Scheduler, get_scheduler
from supervisor.scheduling.models import schedule_fire
from supervisor.scheduling.rows import fire_task_id
from supervisor.scheduling.service import SchedulerOptions, SchedulerService
from tests.helpers import BrokerSpy

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Recording(BrokerSpy):
    """The broker, plus the status documents the scheduler publishes."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.published: list[dict[str, Any]] = []
        super().__init__(broker, publish_scheduler_status=self.published.append)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'schedules.db'}"


@pytest.fixture
def broker(clock: Clock) -> MemoryBroker:
    return MemoryBroker(clock=clock, task_types=None)


@pytest.fixture
def make(url: str, clock: Clock, broker: MemoryBroker) -> Iterator[Any]:
    engines: list[sa.Engine] = []

    def make_service(**kw: Any) -> SchedulerService:
        engine = make_engine(kw.pop("database", url))
        engines.append(engine)
        return SchedulerService(
            store=ScheduleStore(engine, clock=clock, known_task_types=kw.get("task_types")),
            broker=kw.pop("caller", broker),
            clock=clock,
            **kw,
        )

    yield make_service
    for engine in engines:
        engine.dispose()


@pytest.fixture
def api(url: str, clock: Clock) -> Iterator[Scheduler]:
    made = Scheduler(make_engine(url), clock=clock)
    yield made
    made.close()


def run_until(service: SchedulerService, clock: Clock, end: float) -> list[float]:
    """Step the service like its process does, jumping the clock to each wake time."""
    wakes = []
    while clock.now < end:
        wake = service.step(clock.now)
        wakes.append(wake)
        clock.now = max(wake, clock.now + 0.001)
    return wakes


def drain(broker: MemoryBroker) -> list[dict[str, Any]]:
    q, out = Queue(broker), []
    while (task := q.pop_task(timeout=0)) is not None:
        out.append(task)
        q.task_done(task["task_id"])
    return out


def test_the_seed_example_runs_five_times_then_stops(
    make: Any, api: Scheduler, clock: Clock, broker: MemoryBroker
) -> None:
    service = make(task_types=["test_task"])
    service.step(clock.now)  # prepares the database
    task_id = api.add_scheduler_task(
        name="测试任务",
        task_type="test_task",
        schedule_type="interval",
        interval_seconds=10,
        params={"message": "Hello from scheduler!"},
        max_runs=5,
        description="每10秒执行一次,共5次",
    )
    done: list[dict[str, Any]] = []
    while clock.now < T0 + 70:
        wake = service.step(clock.now)
        done.extend(drain(broker))  # workers finish each run before the next fire
        assert wake <= clock.now + 1.0  # never sleeps past a change by another process
        clock.now = max(wake, clock.now + 0.001)
    assert [t["scheduled_at"] - T0 for t in done] == [10, 20, 30, 40, 50]
    assert {t["params"]["message"] for t in done} == {"Hello from scheduler!"}
    assert {t["schedule_id"] for t in done} == {task_id}
    task = api.get_task(task_id)
    assert task is not None and (task["run_count"], task["enabled"]) == (5, False)
    assert service.pusher.lag.count == 5 and service.pusher.lag.max_s == 0.0


def test_it_wakes_at_the_due_time_and_sees_changes_within_a_second(
    make: Any, api: Scheduler, clock: Clock, broker: MemoryBroker
) -> None:
    service = make()
    assert service.step(clock.now) == T0 + 1.0  # nothing scheduled: look again in a second
    api.add_scheduler_task(name="once", task_type="t", schedule_type="once", execute_at=T0 + 1.25)
    clock.now = T0 + 1.0
    assert service.step(clock.now) == T0 + 1.25
    clock.now = T0 + 1.25
    service.step(clock.now)
    [task] = drain(broker)
    assert task["scheduled_at"] == T0 + 1.25 and task["pushed_at"] == T0 + 1.25


def test_max_instances_skips_while_the_previous_run_is_live(
    make: Any, api: Scheduler, clock: Clock, broker: MemoryBroker
) -> None:
    service = make()
    sid = api.add_scheduler_task(
        name="slow", task_type="t", schedule_type="interval", interval_seconds=10
    )
    run_until(service, clock, T0 + 25)  # fires at +10; +20 is skipped: +10 is still queued
    q = Queue(broker)
    first = q.pop_task(timeout=0)
    assert first is not None and q.pop_task(timeout=0) is None
    run_until(service, clock, T0 + 35)  # +30: the first run is running: skipped again
    q.task_done(first["task_id"])
    run_until(service, clock, T0 + 45)
    second = q.pop_task(timeout=0)
    assert second is not None and second["scheduled_at"] == T0 + 40
    task = api.get_task(sid)
    assert task is not None and (task["run_count"], task["skipped_count"]) == (2, 2)
    assert service.counters()["overlapped"] == 2


def test_prepare_upserts_the_config_and_records_task_types(
    make: Any, api: Scheduler, clock: Clock
) -> None:
    declared = [
        make_spec(name="sync", task_type="sync", schedule_type="interval", interval_seconds=60)
    ]
    make(task_types=["sync", "report"], config_schedules=declared).step(clock.now)
    assert [t["name"] for t in api.list_tasks()] == ["sync"]
    assert api.store.registered_task_types() == ["report", "sync"]
    with pytest.raises(ScheduleError, match="'nope' is not registered; known: report, sync"):
        api.add_scheduler_task(
            name="x", task_type="nope", schedule_type="interval", interval_seconds=5
        )
    late = make_spec(
        name="launch", task_type="report", schedule_type="once", execute_at=T0 - 5
    )  # new, and already in the past
    service = make(task_types=["sync", "report"], config_schedules=[late])
    service.step(clock.now)
    assert service.ready and service.config_error is not None
    assert "execute_at" in service.config_error
    assert [(t["name"], t["enabled"]) for t in api.list_tasks()] == [("sync", True)]


def test_get_scheduler_is_one_per_database_and_process(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_DATABASE", url)
    first = get_scheduler()
    try:
        assert get_scheduler(url) is first
        sid = first.add_scheduler_task(
            "测试任务", "test_task", "interval", 10, params={"message": "Hello"}, max_runs=5
        )
        assert first.list_tasks(enabled_only=True)[0]["task_id"] == sid
        assert first.pause_task(sid) and first.list_tasks(enabled_only=True) == []
        assert first.resume_task(sid) and first.update_task(sid, priority=9)
        assert first.get_task(sid)["priority"] == 9  # type: ignore[index]
        assert len(first.preview(sid, 3)) == 3
        assert first.delete_task(sid) and first.get_task(sid) is None
    finally:
        first.close()


def test_an_unreachable_database_backs_off_and_publishes(
    make: Any, clock: Clock, broker: MemoryBroker, tmp_path: Path
) -> None:
    caller = Recording(broker)
    service = make(
        database=f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}",
        caller=caller,
        options=SchedulerOptions(backoff_base_s=0.5),
    )
    assert service.step(T0) == T0 + 0.5
    assert service.step(T0 + 0.5) == T0 + 1.5
    assert not service.ready and service.state == "backoff"
    assert caller.published[-1]["state"] == "backoff" and caller.published[-1]["db_failures"]


def test_unpushed_fires_are_settled_at_start(
    make: Any, api: Scheduler, clock: Clock, broker: MemoryBroker
) -> None:
    a = api.add_scheduler_task(
        name="a", task_type="t", schedule_type="interval", interval_seconds=10
    )
    b = api.add_scheduler_task(
        name="b", task_type="t", schedule_type="interval", interval_seconds=10
    )
    due = T0 + 10
    with api.engine.begin() as conn:  # a predecessor died between its claim and its push
        for sid in (a, b):
            conn.execute(
                schedule_fire.insert().values(
                    schedule_id=sid,
                    due_at=due,
                    task_id=fire_task_id(sid, due),
                    claimed_at=due,
                    status="claimed",
                )
            )
    broker.push(
        {"type": "t", "params": b"\x80\x04N.", "priority": 5, "task_id": fire_task_id(b, due)},
    )  # b did get pushed
    clock.now = T0 + 10.5
    service = make()
    service.step(clock.now)
    ids = sorted(t["task_id"] for t in drain(broker))
    assert ids == sorted([fire_task_id(a, due), fire_task_id(b, due)])  # each once
    assert (service.counters()["retried"], service.counters()["confirmed"]) == (1, 1)


def test_status_counts_fires_lag_and_misfires_by_policy(
    make: Any, api: Scheduler, clock: Clock, broker: MemoryBroker
) -> None:
    caller = Recording(broker)
    service = make(caller=caller)
    api.add_scheduler_task(
        name="a", task_type="t", schedule_type="interval", interval_seconds=10, overlap="queue"
    )
    api.add_scheduler_task(
        name="b",
        task_type="t",
        schedule_type="interval",
        interval_seconds=10,
        misfire_policy="skip",
        misfire_grace_s=5,
    )
    run_until(service, clock, T0 + 11)
    clock.now = T0 + 47  # down through +20, +30, +40
    service.step(clock.now)
    clock.now += 1.0
    service.step(clock.now)
    doc = caller.published[-1]
    assert doc["state"] == "running" and doc["schedules_enabled"] == 2
    assert doc["counters"]["fired"] == 3  # a and b at +10; a once more for +20..+40
    assert doc["misfires"] == {"once": 2, "skip": 3, "all": 0}
    assert doc["lag"]["count"] == 3 and doc["lag"]["max_s"] == pytest.approx(7.0)
    assert doc["counters"]["late"] == 1
