"""Task records and control, the same for every broker: cancel, unique keys, results and their
time to live, retry of the dead, purge, stats."""

from __future__ import annotations

import pytest

from supervisor.broker import base
from supervisor.broker.base import Broker
from supervisor.errors import TaskError
from supervisor.registry import TaskOptions
from tests.contract.conftest import MakeBroker
from tests.contract.test_queue import RETRY, W1, W2, done, failed, msg
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)
DAY = 86_400.0


def test_cancel_of_a_queued_task_removes_it_at_once(broker: Broker) -> None:
    tid = broker.push(msg())
    assert broker.cancel(tid) == base.CANCELLED
    assert broker.get_task(tid)["status"] == base.CANCELLED
    assert broker.pop(W1) is None and broker.queue_size() == 0


def test_cancel_of_a_delayed_task(broker: Broker, clock: FakeClock) -> None:
    tid = broker.push(msg(delay=60))
    assert broker.cancel(tid) == base.CANCELLED
    clock.advance(61)
    assert broker.pop(W1) is None


def test_cancel_of_a_running_task_asks_its_master(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    broker.pop(W1)
    assert broker.cancel(tid) == "cancelling"
    assert [(c, t) for c, t, _ in broker.pending_cancels()] == [(W1, tid)]
    broker.release_consumer(W1, base.REASON_TIMEOUT, error="killed after the cancel grace")
    rec = broker.get_task(tid)
    assert rec["status"] == base.CANCELLED  # whatever ended it, never retried
    assert broker.pending_cancels() == []


def test_a_cancelled_running_task_that_reports_success_stays_cancelled(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    tid = broker.push(msg())
    m = broker.pop(W1)
    broker.cancel(tid)
    broker.report(W1, (m["task_id"], base.CANCELLED, {"error": "stopped"}))
    assert broker.get_task(tid)["status"] == base.CANCELLED


def test_cancel_of_a_finished_or_unknown_task(broker: Broker) -> None:
    tid = broker.push(msg())
    done(broker, W1, broker.pop(W1))
    assert broker.cancel(tid) == "finished"
    assert broker.cancel("never-pushed") == "unknown"


def test_a_unique_key_held_by_a_live_task_returns_that_task(broker: Broker) -> None:
    first = broker.push(msg(unique_key="report-42"))
    assert broker.push(msg(unique_key="report-42")) == first
    assert broker.push_many([msg(unique_key="report-42"), msg()])[0] == first
    done(broker, W1, broker.pop(W1))  # the holder finishes: the key is free again
    second = broker.push(msg(unique_key="report-42"))
    assert second != first


def test_a_unique_key_is_held_while_running_and_retrying(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    first = broker.push(msg(unique_key="k"))
    broker.pop(W1)
    assert broker.push(msg(unique_key="k")) == first
    failed(broker, W1, broker.get_task(first) | {"task_id": first})
    assert broker.get_task(first)["status"] == base.RETRYING
    assert broker.push(msg(unique_key="k")) == first


def test_results_are_kept_for_their_ttl(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(result_ttl_s=1 * DAY, failure_ttl_s=3 * DAY, default_options=RETRY)
    ok = broker.push(msg())
    done(broker, W1, broker.pop(W1), result={"size": 3})
    bad = broker.push(msg())
    broker.report(W1, (broker.pop(W1)["task_id"], "invalid", {"error": "no"}))
    assert broker.get_task(ok)["result"] == {"size": 3}
    clock.advance(1 * DAY + 1)
    broker.maintain()
    assert broker.get_task(ok) is None  # its time to live passed: unknown, never a guess
    assert broker.get_task(bad)["status"] == base.DEAD  # failures are kept longer
    clock.advance(2 * DAY)
    broker.maintain()
    assert broker.get_task(bad) is None
    assert broker.list_tasks() == []


def test_retry_task_queues_a_dead_task_again_with_attempts_reset(
    make: MakeBroker, clock: FakeClock
) -> None:
    broker = make(default_options=TaskOptions(max_retries=0, timeout_s=10.0))
    tid = broker.push(msg())
    failed(broker, W1, broker.pop(W1))
    assert broker.get_task(tid)["status"] == base.DEAD
    assert broker.retry_task(tid) is True
    rec = broker.get_task(tid)
    assert rec["status"] == base.QUEUED and rec["attempts"] == 0
    assert len(rec["errors"]) == 1  # the history is kept
    assert broker.pop(W2)["attempt"] == 1


def test_retry_task_refuses_what_is_not_dead_or_cancelled(broker: Broker) -> None:
    queued = broker.push(msg())
    assert broker.retry_task(queued) is False
    assert broker.retry_task("never-pushed") is False


def test_get_and_list_task_records(broker: Broker, clock: FakeClock) -> None:
    a = broker.push(msg("a"))
    clock.advance(1)
    b = broker.push(msg("b", priority=9))
    clock.advance(1)
    done(broker, W1, broker.pop(W1), result=[1, 2])  # b runs first
    assert broker.get_task("never-pushed") is None
    rec = broker.get_task(b)
    assert rec["status"] == base.SUCCEEDED and rec["result"] == [1, 2] and rec["type"] == "b"
    assert [r["task_id"] for r in broker.list_tasks()] == [b, a]  # newest first
    assert [r["task_id"] for r in broker.list_tasks(status=base.QUEUED)] == [a]
    assert [r["task_id"] for r in broker.list_tasks(task_type="b")] == [b]
    assert [r["task_id"] for r in broker.list_tasks(since=clock() - 1.5)] == [b]
    assert len(broker.list_tasks(limit=1)) == 1


def test_queue_stats_count_records_by_status(make: MakeBroker) -> None:
    broker = make(default_options=RETRY)
    for _ in range(3):
        broker.push(msg())
    done(broker, W1, broker.pop(W1))
    broker.pop(W2)
    assert broker.get_queue_stats() == {"succeeded": 1, "running": 1, "queued": 1}


def test_stats_count_the_queue(make: MakeBroker, clock: FakeClock) -> None:
    broker = make(default_options=RETRY)
    broker.push(msg(priority=9))
    broker.push(msg(priority=9))
    broker.push(msg(priority=2))
    broker.push(msg(delay=60))
    clock.advance(3)
    broker.pop(W1)
    stats = broker.stats()
    assert stats["queued"] == 2 and stats["by_priority"] == {9: 1, 2: 1}
    assert stats["scheduled"] == 1 and stats["running"] == 1 and stats["retrying"] == 0
    assert stats["oldest_age_s"][2] == pytest.approx(3.0)
    assert stats["dispatching"] is True
    assert stats["counters"][("pushed", "t", "")] == 4
    assert stats["counters"][("started", "t", "")] == 1


def test_purge_forgets_old_finished_records(broker: Broker, clock: FakeClock) -> None:
    old = broker.push(msg())
    done(broker, W1, broker.pop(W1))
    clock.advance(10)
    new = broker.push(msg())
    done(broker, W1, broker.pop(W1))
    assert broker.purge(base.SUCCEEDED, older_than_s=5) == 1
    assert broker.get_task(old) is None and broker.get_task(new) is not None
    with pytest.raises(TaskError, match="only finished tasks"):
        broker.purge(base.QUEUED, 0)
