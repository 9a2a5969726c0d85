"""Fires into an in-process broker: messages, duplicates, batches, live-run counting, lag."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.client.queue import Queue
from supervisor.errors import BrokerError, DatabaseBusy, TaskError
from supervisor.registry import TaskOptions
from supervisor.scheduling.pusher import BrokerPusher, InstanceTracker, is_duplicate
from supervisor.scheduling.status import LagHistogram, status_doc
from tests.helpers import BrokerSpy
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)


def fire(n: int = 0, due: float = 1_700_000_000.0, **kw: Any) -> dict[str, Any]:
    return {
        "task_id": f"sched-s{n}-{round(due * 1000)}",
        "type": "report",
        "params": {"n": n},
        "priority": 7,
        "scheduled_at": due,
        "schedule_id": f"s{n}",
        **kw,
    }


@pytest.fixture
def broker(clock: FakeClock) -> MemoryBroker:
    return MemoryBroker(clock=clock, task_types={"report": TaskOptions(timeout_s=10)})


def test_a_fire_reaches_the_consumer_with_its_due_time(
    broker: MemoryBroker, clock: FakeClock
) -> None:
    pushed: list[tuple[str, str]] = []
    pusher = BrokerPusher(broker, clock=clock, on_pushed=lambda sid, tid: pushed.append((sid, tid)))
    clock.advance(0.02)
    pusher.push(fire(1, due=clock.now - 0.02))
    task = Queue(broker).pop_task(timeout=0)
    assert task is not None
    assert (task["type"], task["params"], task["priority"]) == ("report", {"n": 1}, 7)
    assert task["schedule_id"] == "s1" and task["scheduled_at"] == pytest.approx(clock.now - 0.02)
    assert pushed == [("s1", task["task_id"])]
    assert pusher.lag.count == 1 and pusher.lag.max_s == pytest.approx(0.02)


def test_a_duplicate_live_id_counts_as_pushed(broker: MemoryBroker, clock: FakeClock) -> None:
    pusher = BrokerPusher(broker, clock=clock)
    pusher.push(fire(1))
    pusher.push(fire(1))  # pushed again after a crash: the broker still holds it
    assert pusher.counters["duplicate"] == 1
    assert broker.queue_size() == 1
    with pytest.raises(TaskError, match="not registered"):
        pusher.push(fire(2, type="nope"))


def test_push_many_is_one_round_trip_and_isolates_refusals(
    broker: MemoryBroker, clock: FakeClock
) -> None:
    spy = BrokerSpy(broker)
    calls = spy.calls
    pusher = BrokerPusher(spy, clock=clock, max_payload_bytes=1000)
    errors = pusher.push_many([fire(k) for k in range(5)])
    assert errors == [None] * 5 and calls == ["push_many"]
    calls.clear()
    batch = [fire(0), fire(9), fire(10, type="nope"), fire(11, params={"x": "y" * 5000})]
    errors = pusher.push_many(batch)  # a duplicate, a new one, an unknown type, too large
    assert errors[0] is None and errors[1] is None
    assert isinstance(errors[2], TaskError) and "not registered" in str(errors[2])
    assert isinstance(errors[3], TaskError) and "limit" in str(errors[3])
    assert calls == ["push_many", "push", "push", "push"]  # all or none, then one by one
    assert broker.queue_size() == 6


def test_push_many_with_the_broker_gone_fails_every_task() -> None:
    def gone(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("no broker answers at /x")

    errors = BrokerPusher(BrokerSpy(None, push=gone, push_many=gone)).push_many([fire(1), fire(2)])
    assert all(isinstance(e, BrokerError) for e in errors)


def test_is_duplicate_knows_the_broker_refusal_by_its_class(broker: MemoryBroker) -> None:
    broker.push({"type": "report", "params": b"", "task_id": "x"})
    with pytest.raises(TaskError) as refused:
        broker.push({"type": "report", "params": b"", "task_id": "x"})
    assert is_duplicate(refused.value)
    assert not is_duplicate(TaskError("task id 'x' is already queued"))  # not by its words
    assert not is_duplicate(ValueError("is already queued"))


def test_tracker_counts_runs_until_they_finish(broker: MemoryBroker, clock: FakeClock) -> None:
    caller = broker
    loaded: list[str] = []

    def recent(sid: str) -> list[str]:
        loaded.append(sid)
        return ["sched-old-1"]  # a fire from before a restart, unknown to this broker

    tracker = InstanceTracker(caller, recent_ids=recent)
    pusher = BrokerPusher(caller, clock=clock, on_pushed=tracker.record)
    assert tracker.count("s1") == 0 and loaded == ["s1"]
    pusher.push(fire(1))
    assert tracker.count("s1") == 1  # queued
    q = Queue(caller)
    task = q.pop_task(timeout=0)
    assert task is not None and tracker.count("s1") == 1  # running
    q.task_done(task["task_id"])
    assert tracker.count("s1") == 0 and loaded == ["s1"]  # finished; no second DB load
    pusher.push(fire(2))  # never asked about: not tracked
    assert tracker.count("s2") == 0


class BusyTable(MemoryBroker):
    """A durable broker whose task table is locked: live tasks answer, finished ones cannot."""

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        found = super().get_task(task_id)
        if found is None or found["status"] not in ("queued", "running", "retrying", "scheduled"):
            raise DatabaseBusy("the task table is locked by another process")
        return found


def test_a_busy_task_table_counts_finished_runs_as_not_live(clock: FakeClock) -> None:
    broker = BusyTable(clock=clock, task_types={"report": TaskOptions(timeout_s=10)})
    tracker = InstanceTracker(broker, recent_ids=lambda sid: ["sched-s1-gone"])
    pusher = BrokerPusher(broker, clock=clock, on_pushed=tracker.record)
    assert tracker.count("s1") == 0  # a fire of before the restart: finished, not live
    pusher.push(fire(1))
    assert tracker.count("s1") == 1  # a live run is still counted while the table is locked
    with pytest.raises(DatabaseBusy):  # "was it pushed?" cannot be told: the caller decides
        pusher.known("sched-s1-gone")
    assert pusher.known(fire(1)["task_id"])


def test_lag_histogram_is_cumulative() -> None:
    h = LagHistogram(bounds=(0.01, 0.05))
    for lag in (0.001, 0.02, 0.02, 3.0, -1.0):
        h.observe(lag)
    doc = h.as_dict()
    assert doc["buckets"] == [[0.01, 2], [0.05, 4], [float("inf"), 5]]
    assert doc["count"] == 5 and doc["max_s"] == 3.0 and doc["sum_s"] == pytest.approx(3.041)


def test_status_doc_has_every_counter_and_misfires_by_policy() -> None:
    doc = status_doc(
        pid=1,
        state="running",
        started_at=0.0,
        now=5.0,
        database="sqlite://",
        counters={"fired": 3, "misfire.once": 2, "misfire.skip": 1},
        lag=LagHistogram(),
        next_due_at=None,
        enabled=4,
        db_failures=0,
        last_tick_s=0.001,
    )
    assert doc["counters"]["fired"] == 3 and doc["counters"]["push_failed"] == 0
    assert doc["misfires"] == {"skip": 1, "once": 2, "all": 0}
    assert doc["lag"]["count"] == 0 and doc["schedules_enabled"] == 4
