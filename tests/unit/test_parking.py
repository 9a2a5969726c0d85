"""Parked exchanges: a worker's exchange that finds nothing waits without a thread, and is
answered by whoever makes a task ready, by the dispatcher at its deadline, or at shutdown."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.embedded.dispatcher import PARKED
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.broker.embedded.memory import MemoryBroker
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)

A, B = "worker:0:1", "worker:1:2"


class Sink:
    """Stands for a parked consumer's connection: records what it is sent."""

    def __init__(self, fail: bool = False) -> None:
        self.got: list[Any] = []
        self.fail = fail
        self.event = threading.Event()

    def __call__(self, answer: Any) -> None:
        if self.fail:
            raise OSError("the consumer's connection is closed")
        self.got.append(answer)
        self.event.set()


def task(priority: int = 5, **kw: Any) -> dict[str, Any]:
    return {"type": "t", "params": pickle.dumps({}), "priority": priority, **kw}


def park(b: MemoryBroker, consumer: str, sink: Sink, wait_s: float = 30.0, report=None) -> Any:
    result, error, handoffs = b.dispatcher.serve("exchange", (consumer, report, wait_s), sink)
    assert error is None and handoffs == []
    return result


def push(b: MemoryBroker, msg: dict[str, Any]) -> tuple[str, list]:
    result, error, handoffs = b.dispatcher.serve("push", (msg,), Sink())
    assert error is None
    b.dispatcher.deliver(handoffs)
    return result, handoffs


def test_an_exchange_with_nothing_to_do_parks_and_a_push_hands_the_task_over():
    b = MemoryBroker()
    sink = Sink()
    assert park(b, A, sink) is PARKED
    task_id, handoffs = push(b, task())
    assert [c for c, _, _ in handoffs] == [A]
    assert sink.got[0]["task_id"] == task_id
    assert b.get_task(task_id)["status"] == "running"
    # the worker reports and takes again in one call: nothing left, so it parks again
    report = (task_id, "succeeded", 7)
    assert park(b, A, sink, report=report) is PARKED
    assert b.get_task(task_id)["result"] == 7


def test_parked_consumers_are_served_first_parked_first_in_priority_order():
    b = MemoryBroker()
    b.set_dispatching(False)
    low, high = b.push(task(priority=1)), b.push(task(priority=9))
    b.set_dispatching(True)
    sa, sb = Sink(), Sink()
    # dispatching was off: the tasks waited; now both consumers take at once, best first
    assert park(b, A, sa)["task_id"] == high
    assert park(b, B, sb)["task_id"] == low
    b2 = MemoryBroker()
    park(b2, A, sa)
    park(b2, B, sb)
    first, _ = push(b2, task())
    second, _ = push(b2, task())
    assert sa.got[-1]["task_id"] == first and sb.got[-1]["task_id"] == second


def test_a_wait_that_runs_out_is_answered_none_by_the_dispatcher():
    b = MemoryBroker()
    sink = Sink()
    assert park(b, A, sink, wait_s=0.05) is PARKED
    assert sink.event.wait(10), "the dispatcher never answered the expired wait"
    assert sink.got == [None]
    assert push(b, task())[1] == []  # no longer parked: nothing is handed to it


def test_a_delayed_task_is_handed_over_when_it_comes_due():
    b = MemoryBroker()
    sink = Sink()
    park(b, A, sink)
    task_id, handoffs = push(b, task(delay=0.1))
    assert handoffs == [] and b.get_task(task_id)["status"] == "scheduled"
    assert sink.event.wait(10), "the due task never reached the parked consumer"
    assert sink.got[0]["task_id"] == task_id


def test_a_task_readied_outside_a_connection_thread_is_handed_over_by_the_dispatcher():
    b = MemoryBroker()
    sink = Sink()
    first = b.push(task())
    assert park(b, A, sink)["task_id"] == first
    park(b, A, sink, report=(first, "invalid", {"error": "bad"}))  # dead at once
    assert b.retry_task(first)  # as the HTTP API would: not through dispatcher.serve
    wait_until(lambda: sink.got, 10, what="the dispatcher to hand over the retried task")
    assert sink.got[0]["task_id"] == first


def test_stopping_dispatch_answers_every_parked_consumer_none():
    b = MemoryBroker()
    sa, sb = Sink(), Sink()
    park(b, A, sa)
    park(b, B, sb)
    b.set_dispatching(False)
    wait_until(lambda: sa.got and sb.got, 10, what="both parked consumers to be answered")
    assert sa.got == [None] and sb.got == [None]


def test_a_task_whose_consumer_is_gone_goes_back_first_without_counting_the_attempt():
    b = MemoryBroker()
    gone, alive = Sink(fail=True), Sink()
    park(b, A, gone)
    task_id, _ = push(b, task())  # handed to A, whose connection is closed
    rec = b.get_task(task_id)
    assert rec["status"] == "queued" and rec["attempts"] == 0
    assert park(b, B, alive)["task_id"] == task_id


def test_a_released_or_disconnected_consumer_is_no_longer_parked():
    b = MemoryBroker()
    sa, sb = Sink(), Sink()
    park(b, A, sa)
    park(b, B, sb)
    b.release_consumer(A, "worker_lost")
    b.dispatcher.withdraw(B, sb)
    task_id, handoffs = push(b, task())
    assert handoffs == [] and b.get_task(task_id)["status"] == "queued"


def test_a_push_and_its_hand_over_are_one_journal_write(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path)))
    try:
        sink = Sink()
        park(b, A, sink)
        before = b._journal.appends
        task_id, _ = push(b, task())
        assert b._journal.appends == before + 1
        assert sink.got[0]["task_id"] == task_id
        assert b._journal.get(task_id).status == "running"
    finally:
        b.close()


def test_a_full_disk_refuses_a_push_before_anything_changes(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path)))
    try:
        sink = Sink()
        park(b, A, sink)
        journal = b._journal

        def no_space(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(journal, "_size", journal._file_bytes + 100)  # the log file is full
            m.setattr(journal, "_open", no_space)
            result, error, handoffs = b.dispatcher.serve("push", (task(task_id="t1"),), Sink())
        assert result is None and handoffs == []
        assert "No space left on device" in str(error)
        assert b.get_task("t1") is None and b.queue_size() == 0 and sink.got == []
        task_id, _ = push(b, task(task_id="t1"))  # room again: the same push goes through
        assert task_id == "t1" and sink.got[0]["task_id"] == "t1"
    finally:
        b.close()


def test_the_dispatcher_survives_a_full_disk_and_leaves_no_worker_holding_a_lost_task(
    tmp_path: Path,
):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path)))
    try:
        assert push(b, task(task_id="late", delay=0.2))[1] == []
        sink = Sink()
        park(b, A, sink)
        journal = b._journal
        real_open, real_size = journal._open, journal._size

        def no_space(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        journal._size, journal._open = journal._file_bytes + 10, no_space  # the disk is full
        wait_until(lambda: b.get_task("late")["status"] == "queued", 10, what="'late' due")
        assert (
            b.core.held.get(A) is None and A in b.dispatcher.parked
        )  # nothing taken that was not safe
        journal._size, journal._open = real_size, real_open  # room again
        assert sink.event.wait(10), "the dispatcher stopped handing tasks over"
        assert sink.got[0]["task_id"] == "late" and b.dispatcher.thread.is_alive()
    finally:
        b.close()


def test_a_failure_putting_back_one_undeliverable_task_does_not_stop_the_others(
    tmp_path: Path,
):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path)))
    try:
        gone, alive = Sink(fail=True), Sink()
        park(b, A, gone)
        park(b, B, alive)
        result, error, handoffs = b.dispatcher.serve("push_many", ([task(), task()],), Sink())
        assert error is None and [c for c, _, _ in handoffs] == [A, B]
        journal = b._journal

        def no_space(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        real_open, real_size = journal._open, journal._size
        journal._size, journal._open = journal._file_bytes + 10, no_space  # putting back fails
        b.dispatcher.deliver(handoffs)
        journal._size, journal._open = real_size, real_open
        assert alive.got and alive.got[0]["task_id"] == result[1]
    finally:
        b.close()
