"""The queue and the task lifecycle, the same for every broker: order, delays, attempts, the
retry policy and the dead letter, consumers that go away."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.base import Broker
from supervisor.errors import TaskError
from supervisor.registry import TaskOptions
from tests.contract.conftest import MakeBroker
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)

W1 = "worker:1:100"
W2 = "worker:2:200"
RETRY = TaskOptions(timeout_s=10.0, max_retries=2, backoff_base_s=1.0, backoff_cap_s=4.0)


def msg(task_type: str = "t", *, params: bytes = b"p", **kw: Any) -> dict[str, Any]:
    return {"type": task_type, "params": params, **kw}


def done(broker: Broker, consumer: str, task: dict[str, Any], result: Any = None) -> None:
    broker.report(consumer, (task["task_id"], base.SUCCEEDED, result))


def failed(broker: Broker, consumer: str, task: dict[str, Any], error: str = "boom") -> None:
    broker.report(consumer, (task["task_id"], "failed", {"reason": "error", "error": error}))


def drain(broker: Broker, consumer: str = W1) -> list[str]:
    out = []
    while (m := broker.pop(consumer)) is not None:
        out.append(m["task_id"])
        done(broker, consumer, m)
    return out


def test_higher_priority_first_and_fifo_within_a_priority(broker: Broker) -> None:
    prios = [3, 7, 0, 10, 7, 3, 5, 10, 0, 5]
    ids = [broker.push(msg(task_id=f"t{i}", priority=p)) for i, p in enumerate(prios)]
    assert drain(broker) == [ids[i] for i in sorted(range(10), key=lambda i: (-prios[i], i))]


def test_order_is_global_across_consumers(broker: Broker) -> None:
    broker.push_many([msg(task_id=f"t{i}", priority=i % 3) for i in range(6)])
    got = []
    for turn in range(6):
        consumer = (W1, W2)[turn % 2]
        m = broker.pop(consumer)
        assert m is not None
        got.append(m["task_id"])
        done(broker, consumer, m)
    assert got == ["t2", "t5", "t1", "t4", "t0", "t3"]


def test_a_message_carries_what_the_handler_needs(broker: Broker) -> None:
    tid = broker.push(msg(params=b"\x80\x04N.", priority=8))
    m = broker.pop(W1)
    assert m is not None
    assert (m["task_id"], m["type"], m["params"], m["priority"], m["attempt"]) == (
        tid,
        "t",
        b"\x80\x04N.",
        8,
        1,
    )


def test_a_delayed_task_waits_for_its_time(broker: Broker, clock: FakeClock) -> None:
    tid = broker.push(msg(delay=30))
    assert broker.get_task(tid)["status"] == base.SCHEDULED
    assert broker.pop(W1) is None and broker.queue_size() == 0
    clock.advance(29.9)
    assert broker.pop(W1) is None
    clock.advance(0.2)
    m = broker.pop(W1)
    assert m is not None and m["task_id"] == tid


def test_an_eta_in_the_past_is_ready_at_once(broker: Broker, clock: FakeClock) -> None:
    tid = broker.push(msg(eta=clock() - 5))
    assert broker.get_task(tid)["status"] == base.QUEUED and broker.queue_size() == 1


def test_due_delayed_tasks_keep_priority_order(broker: Broker, clock: FakeClock) -> None:
    broker.push(msg(task_id="low", priority=1, delay=10))
    broker.push(msg(task_id="high", priority=9, delay=20))
    broker.push(msg(task_id="now", priority=5))
    clock.advance(25)
    assert drain(broker) == ["high", "now", "low"]


def test_the_attempt_is_counted_at_hand_out(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    m = broker.pop(W1)
    assert m is not None and m["attempt"] == 1
    rec = broker.get_task(tid)
    assert rec["status"] == base.RUNNING and rec["attempts"] == 1


def test_a_failed_attempt_is_retried_with_backoff(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    failed(broker, W1, broker.pop(W1))
    rec = broker.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["attempts"] == 1
    assert 0 <= rec["eta"] - clock() <= 1.0  # full jitter under base * 2^0
    assert rec["errors"][-1]["reason"] == "error" and rec["errors"][-1]["error"] == "boom"
    clock.advance(1.01)
    m = broker.pop(W1)
    assert m is not None and m["task_id"] == tid and m["attempt"] == 2


def test_attempts_exhausted_go_to_the_dead_letter(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    for attempt in (1, 2, 3):
        clock.advance(10)
        m = broker.pop(W1)
        assert m is not None and m["attempt"] == attempt
        failed(broker, W1, m, error=f"boom {attempt}")
    rec = broker.get_task(tid)
    assert rec["status"] == base.DEAD and rec["attempts"] == 3
    assert rec["errors"][-1]["error"] == "boom 3"
    clock.advance(100)
    assert broker.pop(W1) is None


def test_an_invalid_task_is_dead_at_once(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    m = broker.pop(W1)
    broker.report(W1, (m["task_id"], "invalid", {"error": "params need a path"}))
    rec = broker.get_task(tid)
    assert rec["status"] == base.DEAD and rec["errors"][-1]["reason"] == "invalid"


def test_retry_with_a_delay_waits_that_long(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    broker.report(W1, (broker.pop(W1)["task_id"], "retry", {"error": "busy", "delay": 7}))
    assert broker.get_task(tid)["eta"] == pytest.approx(clock() + 7)
    clock.advance(6.9)
    assert broker.pop(W1) is None
    clock.advance(0.2)
    assert broker.pop(W1)["task_id"] == tid


def test_a_lost_consumers_task_is_a_worker_lost_attempt(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    broker.pop(W1)
    assert broker.release_consumer(W1, base.REASON_WORKER_LOST, error="killed", exit_status=-9)
    rec = broker.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["errors"][-1]["reason"] == "worker_lost"
    assert rec["errors"][-1]["exit_status"] == -9
    assert broker.release_consumer(W1, base.REASON_WORKER_LOST) is None  # holds nothing now


def test_a_task_that_kills_its_worker_every_time_ends_dead(
    make: MakeBroker, clock: FakeClock
) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    for _ in range(3):
        clock.advance(10)
        assert broker.pop(W1) is not None
        broker.release_consumer(W1, base.REASON_WORKER_LOST, error="signal 9")
    assert broker.get_task(tid)["status"] == base.DEAD


def test_shutdown_puts_the_task_back_first_without_counting(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    first = broker.push(msg(priority=5))
    broker.push(msg(priority=5))
    assert broker.pop(W1)["task_id"] == first
    broker.release_consumer(W1, base.REASON_SHUTDOWN)
    rec = broker.get_task(first)
    assert rec["status"] == base.QUEUED and rec["attempts"] == 0
    m = broker.pop(W2)
    assert m["task_id"] == first and m["attempt"] == 1


def test_a_late_report_of_a_released_task_changes_nothing(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    m = broker.pop(W1)
    broker.release_consumer(W1, base.REASON_TIMEOUT)
    done(broker, W1, m, result=1)
    rec = broker.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["result"] is None


def test_exchange_reports_and_takes_the_next_in_one_call(broker: Broker) -> None:
    a, b = broker.push(msg()), broker.push(msg())
    m = broker.exchange(W1, None, 0)
    assert m["task_id"] == a
    m2 = broker.exchange(W1, (a, base.SUCCEEDED, {"n": 1}), 0)
    assert m2["task_id"] == b and broker.get_task(a)["result"] == {"n": 1}
    assert broker.exchange(W1, (b, base.SUCCEEDED, None), 0) is None
    assert broker.get_task(b)["status"] == base.SUCCEEDED


def test_a_consumer_must_report_before_it_takes_another(broker: Broker) -> None:
    broker.push(msg())
    broker.push(msg())
    broker.pop(W1)
    with pytest.raises(TaskError, match="report it first"):
        broker.pop(W1)


def test_dispatching_off_hands_out_nothing(broker: Broker) -> None:
    broker.push(msg())
    broker.set_dispatching(False)
    assert broker.pop(W1, 0.5) is None
    broker.set_dispatching(True)
    assert broker.pop(W1) is not None


def test_maintain_promotes_due_tasks(broker: Broker, clock: FakeClock) -> None:
    broker.push(msg(delay=5))
    clock.advance(6)
    assert broker.maintain()["promoted"] == 1
    assert broker.queue_size() == 1
