"""Named queues, the same for every broker: a task goes to its message's queue, else its type's
registered queue, else ``default``; a consumer takes from the queues it names (None: every
queue) with priority global across them; waiting consumers of one queue are not served
another's tasks."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.base import Broker
from supervisor.errors import TaskError
from supervisor.registry import TaskOptions
from tests.contract.conftest import MakeBroker
from tests.contract.test_queue import W1, W2, done, msg
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)


def take_all(broker: Broker, queues: Any, consumer: str = W1) -> list[str]:
    out = []
    while (m := broker.pop(consumer, 0.0, queues)) is not None:
        out.append(m["task_id"])
        done(broker, consumer, m)
    return out


def test_a_consumer_takes_only_from_its_queues(broker: Broker) -> None:
    broker.push(msg(task_id="g", queue="gpu"))
    broker.push(msg(task_id="c", queue="cpu"))
    broker.push(msg(task_id="d"))
    assert take_all(broker, ["cpu"]) == ["c"]
    assert take_all(broker, ["nothing-here"]) == []
    assert take_all(broker, ["default", "gpu"]) == ["g", "d"]
    assert broker.queue_size() == 0


def test_priority_is_global_across_the_queues_with_fifo_ties(broker: Broker) -> None:
    pushes = [("a1", "a", 5), ("b1", "b", 5), ("b2", "b", 9), ("a2", "a", 9), ("c1", "c", 10)]
    for task_id, queue, prio in pushes:
        broker.push(msg(task_id=task_id, queue=queue, priority=prio))
    assert take_all(broker, ["a", "b"]) == ["b2", "a2", "a1", "b1"]
    assert take_all(broker, None) == ["c1"]


def test_every_queue_when_none_is_named(broker: Broker) -> None:
    broker.push_many([msg(task_id=f"t{i}", queue=f"q{i % 3}", priority=i % 2) for i in range(6)])
    assert take_all(broker, None) == ["t1", "t3", "t5", "t0", "t2", "t4"]


def test_a_type_goes_to_its_registered_queue(make: MakeBroker) -> None:
    opts = TaskOptions(timeout_s=10.0, queue="gpu")
    broker = make(task_types={"render": opts, "t": TaskOptions(timeout_s=10.0)})
    broker.push(msg("render", task_id="r"))
    broker.push(msg("render", task_id="forced", queue="cpu"))  # the message's queue wins
    broker.push(msg("t", task_id="plain"))
    assert take_all(broker, ["default"]) == ["plain"]
    assert take_all(broker, ["cpu"]) == ["forced"]
    record = broker.get_task("r")
    assert record is not None and record["queue"] == "gpu"
    assert take_all(broker, ["gpu"]) == ["r"]


def test_stats_count_ready_tasks_by_queue(broker: Broker) -> None:
    broker.push_many([msg(queue="a"), msg(queue="a"), msg(queue="b"), msg()])
    stats = broker.stats()
    assert stats["by_queue"] == {"a": 2, "b": 1, "default": 1}
    assert stats["queued"] == 4
    take_all(broker, ["a"])
    assert broker.stats()["by_queue"] == {"b": 1, "default": 1}


def test_delayed_and_retried_tasks_come_back_to_their_queue(
    make: MakeBroker, clock: FakeClock
) -> None:
    opts = TaskOptions(timeout_s=10.0, max_retries=1, backoff_base_s=1.0, backoff_cap_s=1.0)
    broker = make(task_types={"t": opts})
    broker.push(msg(task_id="late", queue="q", delay=5))
    assert take_all(broker, ["q"]) == []
    clock.advance(6)
    m = broker.pop(W1, 0.0, ["other"])
    assert m is None
    m = broker.pop(W1, 0.0, ["q"])
    assert m is not None and m["task_id"] == "late" and m["queue"] == "q"
    broker.report(W1, ("late", "failed", {"reason": "error", "error": "x"}))
    clock.advance(2)
    assert broker.pop(W1, 0.0, ["other"]) is None
    again = broker.pop(W1, 0.0, ["q"])
    assert again is not None and again["task_id"] == "late" and again["attempt"] == 2
    broker.report(W1, ("late", "failed", {"reason": "error", "error": "x"}))
    assert broker.get_task("late")["status"] == base.DEAD  # type: ignore[index]
    assert broker.retry_task("late") is True
    assert take_all(broker, ["q"]) == ["late"]


def test_a_cancelled_task_leaves_its_queue(broker: Broker) -> None:
    broker.push(msg(task_id="x", queue="q"))
    broker.push(msg(task_id="y", queue="q"))
    assert broker.cancel("x") == "cancelled"
    assert broker.stats()["by_queue"] == {"q": 1}
    assert take_all(broker, ["q"]) == ["y"]


def test_a_shutdown_requeue_goes_back_first_in_its_queue(broker: Broker) -> None:
    broker.push_many([msg(task_id="a", queue="q"), msg(task_id="b", queue="q")])
    first = broker.pop(W1, 0.0, ["q"])
    assert first is not None and first["task_id"] == "a"
    broker.release_consumer(W1, base.REASON_SHUTDOWN)
    assert take_all(broker, ["q"], W2) == ["a", "b"]


def test_a_waiting_consumer_is_served_only_from_its_queues(broker: Broker) -> None:
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(broker.pop(W2, 10.0, ["wanted"])))
    waiter.start()
    try:
        broker.push(msg(task_id="other", queue="elsewhere"))
        broker.push(msg(task_id="mine", queue="wanted"))
        waiter.join(10.0)
        assert not waiter.is_alive()
        assert got and got[0] is not None and got[0]["task_id"] == "mine"
        assert take_all(broker, ["elsewhere"]) == ["other"]
    finally:
        broker.set_dispatching(False)
        waiter.join(10.0)


@pytest.mark.parametrize("queue", ["", "a b", 3, "x" * 101, "{p}"])
def test_a_bad_queue_in_a_message_is_refused(broker: Broker, queue: Any) -> None:
    with pytest.raises(TaskError, match="queue name"):
        broker.push(msg(queue=queue))
    assert broker.stats()["queued"] == 0


@pytest.mark.parametrize("queues", ["default", [], ["a b"], [3]])
def test_bad_queues_of_a_consumer_are_refused(broker: Broker, queues: Any) -> None:
    broker.push(msg())
    with pytest.raises(TaskError):
        broker.pop(W1, 0.0, queues)
    assert broker.queue_size() == 1


def test_a_report_with_bad_queues_changes_nothing(broker: Broker) -> None:
    broker.push(msg(task_id="a"))
    m = broker.pop(W1)
    assert m is not None
    with pytest.raises(TaskError):
        broker.exchange(W1, ("a", base.SUCCEEDED, None), 0.0, ["a b"])
    assert broker.get_task("a")["status"] == base.RUNNING  # type: ignore[index]
