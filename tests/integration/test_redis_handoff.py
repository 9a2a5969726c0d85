"""The Redis broker's hand-off: a task made ready goes straight into the mailbox of a parked
consumer (one that found nothing and waits), taken for it inside the script that made it ready.

Each case checks Redis itself (the record's status and holder right after the push, the parked
and mailbox keys), so a broker that only woke the consumer for a second take fails them. A real
private redis-server; time runs on an injected clock except for Redis TIME, which the parking
deadlines use (a test moves a deadline into the past instead of waiting for it).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

try:
    import redis  # noqa: F401 - redis-py, needed by the broker under test
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("redis-py not installed (pip install redis)", allow_module_level=True)

from supervisor.broker import base
from supervisor.broker.redis import RedisBroker
from supervisor.broker.redis import broker as redis_broker
from supervisor.registry import TaskOptions
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)

W1, W2 = "worker:1", "worker:2"


@pytest.fixture
def make(make_redis_broker: Callable[..., RedisBroker]) -> Callable[..., RedisBroker]:
    """``make(**kw)``: a RedisBroker on this test's own prefix (node ``a`` unless given)."""
    opts = {"t": TaskOptions(max_retries=3, backoff_base_s=0.0)}
    return functools.partial(make_redis_broker, task_types=opts)


def park(b: RedisBroker, consumer: str, queues: list[str] | None = None) -> None:
    """Run the take that parks ``consumer`` (for 10 s) without waiting on its mailbox: as if
    its wait had just ended, or it died parked."""
    qs = None if queues is None else tuple(queues)
    lost, message, _ = b._exchange_once(consumer, None, True, qs, park_s=10.0)
    assert not lost and message is None


def parked(b: RedisBroker) -> set[str]:
    return {k.decode() for k in b._client.hkeys(b._keys.parked)}


def test_a_push_hands_the_task_to_a_waiting_consumer_inside_the_push(
    make: Callable[..., RedisBroker],
) -> None:
    node, producer = make(node="a"), make(node="b")
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(node.pop(W1, wait_s=20)))
    waiter.start()
    try:
        wait_until(lambda: parked(node) == {f"a/{W1}"}, what="the consumer to park")
        tid = producer.push({"type": "t", "params": b"p", "task_id": "x"})
        # Taken for it by the push script itself: running, attempt 1, held by the waiter.
        rec = producer.get_task(tid)
        assert rec is not None
        assert (rec["status"], rec["attempts"], rec["consumer"]) == (base.RUNNING, 1, W1)
        assert parked(node) == set()
        waiter.join(10)
        assert got and got[0]["task_id"] == "x" and got[0]["params"] == b"p"
        assert got[0]["attempt"] == 1
        node.report(W1, ("x", base.SUCCEEDED, 7))
        assert producer.get_task("x")["result"] == 7  # type: ignore[index]
    finally:
        node.set_dispatching(False)
        waiter.join(10)


def test_the_hand_off_respects_queues_and_priority(make: Callable[..., RedisBroker]) -> None:
    b = make()
    park(b, W1, ["a"])
    b.push({"type": "t", "params": b"", "task_id": "other", "queue": "b"})
    assert b.get_task("other")["status"] == base.QUEUED  # type: ignore[index]
    assert parked(b) == {f"a/{W1}"}  # still waiting: not its queue
    # A batch with two for its queue: it gets the higher priority, the other stays ready.
    b.push_many(
        [
            {"type": "t", "params": b"", "task_id": "low", "queue": "a", "priority": 1},
            {"type": "t", "params": b"", "task_id": "high", "queue": "a", "priority": 9},
        ]
    )
    assert b.get_task("high")["status"] == base.RUNNING  # type: ignore[index]
    assert b.get_task("low")["status"] == base.QUEUED  # type: ignore[index]
    assert b.pop(W1)["task_id"] == "high"  # type: ignore[index]  # the undelivered hand-off
    b.report(W1, ("high", base.SUCCEEDED, None))
    assert b.pop(W1, queues=["a"])["task_id"] == "low"  # type: ignore[index]


def test_a_consumer_of_every_queue_is_handed_any_queue(make: Callable[..., RedisBroker]) -> None:
    b = make()
    park(b, W1)
    b.push({"type": "t", "params": b"", "task_id": "g", "queue": "gpu"})
    assert b.get_task("g")["consumer"] == W1  # type: ignore[index]


def test_a_hand_off_after_the_wait_ended_is_taken_by_the_next_call(
    make: Callable[..., RedisBroker],
) -> None:
    b = make()
    park(b, W1)
    b.push({"type": "t", "params": b"abc", "task_id": "late"})
    m = b.pop(W1, wait_s=0)  # no mailbox wait: the take finds the task it holds unreceived
    assert m is not None and (m["task_id"], m["params"], m["attempt"]) == ("late", b"abc", 1)
    b.report(W1, ("late", base.SUCCEEDED, None))
    assert b.get_task("late")["status"] == base.SUCCEEDED  # type: ignore[index]
    assert not b._client.exists(b._keys.box(f"a/{W1}"))


def test_a_consumer_gone_before_receiving_its_hand_off_loses_no_attempt(
    make: Callable[..., RedisBroker],
) -> None:
    b = make()
    park(b, W1)
    b.push({"type": "t", "params": b"", "task_id": "orphan"})
    assert b.get_task("orphan")["consumer"] == W1  # type: ignore[index]
    # Its master saw it die: the task it never received goes back, the attempt not counted.
    assert b.release_consumer(W1, base.REASON_WORKER_LOST) == "orphan"
    rec = b.get_task("orphan")
    assert rec is not None and (rec["status"], rec["attempts"]) == (base.QUEUED, 0)
    m = b.pop(W2)
    assert m is not None and (m["task_id"], m["attempt"]) == ("orphan", 1)


def test_a_task_handed_to_a_node_that_died_parked_is_recovered_with_no_attempt_lost(
    make: Callable[..., RedisBroker],
) -> None:
    """Its whole node was killed while it waited: nobody releases it, the lease runs out and
    any node's recovery puts the undelivered task back at its place, not as worker_lost."""
    dead, alive = make(node="a", lease_s=0.2), make(node="b", lease_s=0.2)
    park(dead, W1)
    alive.push({"type": "t", "params": b"", "task_id": "absorbed"})
    assert alive.get_task("absorbed")["consumer"] == W1  # type: ignore[index]
    wait_until(lambda: alive.recover() == 1, what="the lease to expire and be recovered")
    rec = alive.get_task("absorbed")
    assert rec is not None
    assert (rec["status"], rec["attempts"], rec["errors"]) == (base.QUEUED, 0, [])
    m = alive.pop(W2)
    assert m is not None and (m["task_id"], m["attempt"]) == ("absorbed", 1)
    assert not alive._client.exists(alive._keys.box(f"a/{W1}"))


def test_a_task_received_then_lost_with_its_lease_counts_as_worker_lost(
    make: Callable[..., RedisBroker],
) -> None:
    b = make(lease_s=0.2)
    park(b, W1)
    b.push({"type": "t", "params": b"", "task_id": "lost"})
    b._client.delete(b._keys.box(f"a/{W1}"))  # as the BLPOP that received it
    wait_until(lambda: b.recover() == 1, what="the lease to expire and be recovered")
    rec = b.get_task("lost")
    assert rec is not None and rec["attempts"] == 1
    assert [e["reason"] for e in rec["errors"]] == [base.REASON_WORKER_LOST]


def test_releasing_a_parked_consumer_that_holds_nothing_unparks_it(
    make: Callable[..., RedisBroker],
) -> None:
    b = make()
    park(b, W1)
    assert b.release_consumer(W1, base.REASON_WORKER_LOST) is None
    assert parked(b) == set()
    b.push({"type": "t", "params": b"", "task_id": "next"})
    assert b.get_task("next")["status"] == base.QUEUED  # type: ignore[index]


def test_a_consumer_parked_past_its_deadline_is_dropped_not_handed_tasks(
    make: Callable[..., RedisBroker],
) -> None:
    b = make()
    park(b, W1)
    park(b, W2)
    # W1 died (or froze) parked: its deadline passes (moved to the past here).
    b._client.zadd(f"{b._keys.tag}:parkq:*", {f"a/{W1}": 1})
    b.push({"type": "t", "params": b"", "task_id": "x"})
    assert b.get_task("x")["consumer"] == W2  # type: ignore[index]
    assert parked(b) == set()  # W1 dropped on the way, W2 unparked by its hand-off


def test_dispatching_off_wakes_this_nodes_parked_consumers_only(
    make: Callable[..., RedisBroker],
) -> None:
    a, other = make(node="a"), make(node="b")
    park(a, W1)
    park(other, W1)
    a.set_dispatching(False)
    assert parked(a) == {f"b/{W1}"}
    assert a._client.lrange(a._keys.box(f"a/{W1}"), 0, -1) == [b""]
    a.push({"type": "t", "params": b"", "task_id": "x"})
    assert a._client.hget(a._keys.held, f"b/{W1}") == b"x"  # node b's consumer holds it


def test_a_retry_made_ready_by_a_report_goes_to_a_parked_consumer(
    make: Callable[..., RedisBroker],
) -> None:
    b = make()
    b.push({"type": "t", "params": b"", "task_id": "r"})
    assert b.pop(W1)["task_id"] == "r"  # type: ignore[index]
    park(b, W2)
    b.report(W1, ("r", "failed", {"error": "boom", "delay": 0}))
    rec = b.get_task("r")
    assert rec is not None and (rec["status"], rec["consumer"], rec["attempts"]) == (
        base.RUNNING,
        W2,
        2,
    )


def test_a_waiting_pop_gets_its_hand_off_in_one_mailbox_read(
    make: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter's only call after the push is the BLPOP that returns the task."""
    b, producer = make(node="a"), make(node="b")
    calls: list[str] = []
    real = b._exchange_once

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append("exchange")
        return real(*args, **kw)

    monkeypatch.setattr(b, "_exchange_once", counting)
    monkeypatch.setattr(redis_broker, "MAX_BLOCK_S", 10.0)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(b.pop(W1, wait_s=20)))
    waiter.start()
    try:
        wait_until(lambda: parked(b), what="the consumer to park")
        producer.push({"type": "t", "params": b"", "task_id": "one"})
        waiter.join(10)
        assert got and got[0]["task_id"] == "one"
        assert calls == ["exchange"]  # the take that parked it, and nothing after
    finally:
        b.set_dispatching(False)
        waiter.join(10)
