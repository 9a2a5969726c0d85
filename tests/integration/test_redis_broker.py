"""The Redis broker against a private redis-server: the MemoryBroker contract, plus leases,
fencing, NOSCRIPT and a kill -9 of the server.

Skipped when ``redis-server`` is missing, except under CI (env ``CI`` set), where it fails.
Each test has its own key prefix; time is an injected clock except for leases, which run on
Redis TIME with leases of a fraction of a second and deadline polls.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

try:
    import redis  # noqa: F401 - redis-py, needed by the broker under test
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("redis-py not installed (pip install redis)", allow_module_level=True)

import supervisor
from supervisor.broker import base
from supervisor.broker.redis import LeaseLost, RedisBroker
from supervisor.broker.redis.core import LEASE_GRACE_S
from supervisor.errors import (
    BrokerError,
    DuplicateTaskId,
    StoreError,
    TaskError,
    UnknownTaskType,
)
from supervisor.registry import TaskOptions
from tests.helpers import wait_until
from tests.redisserver import RedisServer, free_port, private_redis_server
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)

W1 = "worker:1"
W2 = "worker:2"
RETRY_OPTS = {"max_retries": 2, "backoff_base_s": 1.0, "backoff_cap_s": 4.0, "timeout_s": 10.0}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(
    make_redis_broker: Callable[..., RedisBroker], clock: FakeClock
) -> Callable[..., RedisBroker]:
    """``make(**kw)``: a RedisBroker on this test's own prefix (node ``a`` unless given)."""
    return functools.partial(make_redis_broker, clock=clock)


@pytest.fixture
def broker(make: Callable[..., RedisBroker]) -> RedisBroker:
    return make()


def retry_broker(make: Callable[..., RedisBroker], **opts: Any) -> RedisBroker:
    options = {**RETRY_OPTS, **opts}
    return make(task_types={"t": TaskOptions(**options)})


def msg(task_type: str = "t", *, params: bytes = b"p", **kw: Any) -> dict[str, Any]:
    return {"type": task_type, "params": params, **kw}


def ok(b: RedisBroker, consumer: str, task: dict[str, Any], result: Any = None) -> None:
    b.report(consumer, (task["task_id"], base.SUCCEEDED, result))


# -- order ---------------------------------------------------------------------------------------
def test_priority_then_fifo_across_two_nodes(make: Callable[..., RedisBroker]) -> None:
    a, b = make(node="a"), make(node="b")
    rng = random.Random(5)
    prios = [rng.randint(0, 10) for _ in range(60)]
    a.push_many([msg(task_id=f"t{i:02d}", priority=p) for i, p in enumerate(prios[:30])])
    for i, p in enumerate(prios[30:], start=30):
        b.push(msg(task_id=f"t{i:02d}", priority=p))
    expected = [f"t{i:02d}" for i in sorted(range(60), key=lambda i: (-prios[i], i))]
    got = []
    for node in itertools.cycle([a, b]):  # the same consumer name on two nodes: no clash
        m = node.pop(W1)
        if m is None:
            break
        got.append(m["task_id"])
        ok(node, W1, m)
    assert got == expected


def test_default_priority_comes_from_the_task_type(make: Callable[..., RedisBroker]) -> None:
    b = make(task_types={"lo": TaskOptions(priority=1), "hi": TaskOptions(priority=9)})
    b.push(msg("lo", task_id="lo"))
    b.push(msg("hi", task_id="hi"))
    b.push(msg("lo", task_id="lo-boosted", priority=10))
    assert [b.pop(f"c{i}")["task_id"] for i in range(3)] == ["lo-boosted", "hi", "lo"]


def test_concurrent_consumers_take_each_task_once(make: Callable[..., RedisBroker]) -> None:
    b = make()
    b.push_many([msg(task_id=f"t{i:03d}", priority=i % 11) for i in range(200)])
    taken: list[str] = []
    lock = threading.Lock()

    def consume(n: int) -> None:
        node = make(node=f"n{n}")
        while (m := node.pop(W1)) is not None:
            with lock:
                taken.append(m["task_id"])
            ok(node, W1, m)

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(taken) == [f"t{i:03d}" for i in range(200)]
    assert b.stats()["by_status"] == {"succeeded": 200}


# -- delayed tasks -------------------------------------------------------------------------------
def test_task_with_eta_is_invisible_until_due(broker: RedisBroker, clock: FakeClock) -> None:
    eta = clock.now + 10
    tid = broker.push(msg(eta=eta, priority=10))
    broker.push(msg(task_id="ready", priority=0))
    assert broker.get_task(tid)["status"] == base.SCHEDULED
    assert broker.queue_size() == 1
    m = broker.pop(W1)
    assert m["task_id"] == "ready"
    ok(broker, W1, m)
    clock.advance(9.999)
    assert broker.pop(W1) is None
    assert broker.stats()["scheduled"] == 1
    clock.now = eta
    assert broker.queue_size() == 1
    m = broker.pop(W1)
    assert m is not None and m["task_id"] == tid
    assert broker.get_task(tid)["status"] == base.RUNNING
    assert broker.get_task(tid)["eta"] is None


def test_eta_in_the_past_and_delay_on_the_brokers_clock(
    broker: RedisBroker, clock: FakeClock
) -> None:
    past = broker.push(msg(eta=clock.now - 100))
    assert broker.get_task(past)["status"] == base.QUEUED
    ok(broker, W1, broker.pop(W1))
    tid = broker.push(msg(delay=30))
    assert broker.get_task(tid)["eta"] == clock.now + 30
    clock.advance(29)
    assert broker.pop(W1) is None
    clock.advance(1)
    assert broker.pop(W1)["task_id"] == tid


def test_delayed_tasks_come_due_in_eta_order_then_by_priority(
    broker: RedisBroker, clock: FakeClock
) -> None:
    t0 = clock.now
    broker.push(msg(task_id="late", eta=t0 + 20, priority=9))
    broker.push(msg(task_id="early-lo", eta=t0 + 10, priority=1))
    broker.push(msg(task_id="early-hi", eta=t0 + 10, priority=8))
    clock.advance(10)
    assert [broker.pop(f"c{i}")["task_id"] for i in range(2)] == ["early-hi", "early-lo"]
    assert broker.pop("c9") is None
    clock.advance(10)
    assert broker.pop("c9")["task_id"] == "late"


def test_maintain_promotes_due_tasks(broker: RedisBroker, clock: FakeClock) -> None:
    broker.push(msg(eta=clock.now + 5))
    broker.push(msg(eta=clock.now + 6))
    clock.advance(5)
    assert broker.maintain()["promoted"] == 1
    clock.advance(1)
    assert broker.maintain()["promoted"] == 1
    assert broker.maintain()["promoted"] == 0


# -- waiting -------------------------------------------------------------------------------------
def test_waiting_pop_wakes_on_a_push_from_another_node(make: Callable[..., RedisBroker]) -> None:
    consumer_node = make(node="a", clock=time.time)
    producer = make(node="b", clock=time.time)
    box: dict[str, Any] = {}
    started = threading.Event()

    def consume() -> None:
        started.set()
        box["msg"] = consumer_node.pop(W1, wait_s=10)

    t = threading.Thread(target=consume)
    t0 = time.monotonic()
    t.start()
    assert started.wait(5)
    tid = producer.push(msg())
    t.join(timeout=10)
    assert not t.is_alive()
    assert box["msg"]["task_id"] == tid
    assert time.monotonic() - t0 < 5


def test_pop_with_a_wait_returns_none_after_it(broker: RedisBroker) -> None:
    t0 = time.monotonic()
    assert broker.pop(W1, wait_s=0.05) is None
    assert 0.04 <= time.monotonic() - t0 < 2


def test_set_dispatching_is_per_node_and_releases_a_waiting_pop(
    make: Callable[..., RedisBroker],
) -> None:
    a, b = make(node="a"), make(node="b")
    tid = a.push(msg())
    a.set_dispatching(False)
    t0 = time.monotonic()
    assert a.pop(W1, wait_s=10) is None
    assert time.monotonic() - t0 < 1
    assert a.stats()["dispatching"] is False and b.stats()["dispatching"] is True
    assert a.queue_size() == 1
    a.set_dispatching(True)
    box: dict[str, Any] = {"msg": "unset"}
    started = threading.Event()

    def consume() -> None:
        started.set()
        box["msg"] = a.pop(W2, wait_s=20)

    ok(a, W1, a.pop(W1))  # the queue is empty again
    assert a.get_task(tid)["status"] == base.SUCCEEDED
    t = threading.Thread(target=consume)
    t0 = time.monotonic()
    t.start()
    assert started.wait(5)
    a.set_dispatching(False)
    t.join(timeout=10)
    assert not t.is_alive() and box["msg"] is None
    assert time.monotonic() - t0 < 5


# -- retries -------------------------------------------------------------------------------------
def test_attempt_counted_at_hand_out_and_retry_with_backoff(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make)
    tid = b.push(msg())
    m = b.pop(W1)
    assert m["attempt"] == 1 and b.get_task(tid)["attempts"] == 1
    t0 = clock.now
    b.report(W1, (tid, "failed", {"reason": "error", "error": "boom", "traceback": "tb1"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["attempts"] == 1
    assert t0 <= rec["eta"] <= t0 + 1.0
    assert rec["error"] == "boom" and rec["traceback"] == "tb1"
    assert b.stats()["retrying"] == 1
    clock.now = rec["eta"]
    m = b.pop(W1)
    assert m["task_id"] == tid and m["attempt"] == 2
    b.report(W1, (tid, "failed", {"reason": "error", "error": "boom2"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING
    assert clock.now <= rec["eta"] <= clock.now + 2.0


def test_task_that_fails_every_time_ends_dead(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make, max_retries=2)
    tid = b.push(msg())
    for attempt in (1, 2, 3):
        clock.advance(10)
        m = b.pop(W1)
        assert m is not None and m["attempt"] == attempt
        b.report(W1, (tid, "failed", {"error": f"boom{attempt}", "traceback": f"TB {attempt}"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.DEAD and rec["attempts"] == 3
    assert rec["error"] == "boom3" and rec["traceback"] == "TB 3"
    assert [e["error"] for e in rec["errors"]] == ["boom1", "boom2", "boom3"]
    assert [e["attempt"] for e in rec["errors"]] == [1, 2, 3]
    clock.advance(1000)
    assert b.pop(W1) is None
    assert b.stats()["counters"][("finished", "t", "dead")] == 1


def test_worker_lost_every_time_ends_dead_after_max_retries_plus_one(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make, max_retries=3)
    tid = b.push(msg())
    b.push(msg(task_id="other", priority=0))
    handed_out = 0
    m = None
    for n in range(20):
        clock.advance(10)
        consumer = f"worker:{n}"
        m = b.pop(consumer)
        if m is None or m["task_id"] != tid:
            break
        handed_out += 1
        released = b.release_consumer(
            consumer, base.REASON_WORKER_LOST, error=f"killed ({n})", exit_status=-9
        )
        assert released == tid
    assert handed_out == 4
    rec = b.get_task(tid)
    assert rec["status"] == base.DEAD and rec["attempts"] == 4
    assert rec["error"] == "killed (3)"
    assert {e["reason"] for e in rec["errors"]} == {base.REASON_WORKER_LOST}
    assert rec["errors"][-1]["exit_status"] == -9
    assert m is not None and m["task_id"] == "other"


def test_invalid_goes_dead_at_once_and_retry_delay_is_honoured(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make, max_retries=5, backoff_cap_s=1.0)
    bad = b.push(msg())
    b.pop(W1)
    b.report(W1, (bad, "invalid", {"error": "params: 'x' is required"}))
    rec = b.get_task(bad)
    assert rec["status"] == base.DEAD and rec["errors"][-1]["reason"] == base.REASON_INVALID
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "retry", {"error": "not yet", "delay": 30}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["eta"] == clock.now + 30
    clock.advance(29.9)
    assert b.pop(W1) is None
    clock.advance(0.1)
    assert b.pop(W1)["attempt"] == 2


def test_zero_backoff_and_max_retries_zero(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = make(
        default_options=TaskOptions(
            timeout_s=10, max_retries=1, backoff_base_s=0.0, backoff_cap_s=0.0
        )
    )
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "x"}))
    assert b.pop(W1)["task_id"] == tid  # retried at once
    b.report(W1, (tid, "failed", {"error": "y"}))
    assert b.get_task(tid)["status"] == base.DEAD  # max_retries 1: two attempts


def test_shutdown_requeues_at_its_place_without_counting(make: Callable[..., RedisBroker]) -> None:
    b = retry_broker(make)
    a = b.push(msg(task_id="a"))
    b.push(msg(task_id="b"))
    assert b.pop(W1)["task_id"] == a
    assert b.release_consumer(W1, base.REASON_SHUTDOWN, error="killed by shutdown") == a
    rec = b.get_task(a)
    assert rec["status"] == base.QUEUED and rec["attempts"] == 0 and rec["errors"] == []
    m = b.pop(W2)
    assert m["task_id"] == a and m["attempt"] == 1
    assert b.release_consumer("worker:idle", base.REASON_WORKER_LOST) is None


def test_retry_task_requeues_a_dead_task(make: Callable[..., RedisBroker]) -> None:
    b = retry_broker(make, max_retries=0)
    tid = b.push(msg())
    assert b.retry_task(tid) is False  # queued
    b.pop(W1)
    assert b.retry_task(tid) is False  # running
    b.report(W1, (tid, "failed", {"error": "first life"}))
    assert b.get_task(tid)["status"] == base.DEAD
    assert b.retry_task(tid) is True
    rec = b.get_task(tid)
    assert rec["status"] == base.QUEUED and rec["attempts"] == 0
    assert [e["error"] for e in rec["errors"]] == ["first life"]
    m = b.pop(W1)
    assert m["attempt"] == 1
    ok(b, W1, m, result=42)
    assert b.get_task(tid)["result"] == 42
    assert b.retry_task(tid) is False  # succeeded
    assert b.retry_task("no-such-task") is False
    assert b.get_queue_stats() == {"succeeded": 1}


def test_a_retried_dead_task_is_not_forgotten_with_its_first_life(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    """Its first finish gave it a retention and a place among the capped finished records;
    queued again, neither may forget it while it lives."""
    opts = TaskOptions(**{**RETRY_OPTS, "max_retries": 0})
    b = make(task_types={"t": opts}, failure_ttl_s=10, finished_records=1)
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "first life"}))
    assert b.retry_task(tid) is True
    other = b.push(msg(priority=10))
    ok(b, W1, b.pop(W1))  # type: ignore[arg-type]  # the cap of one finished record: other
    clock.advance(11)
    assert b.maintain()["records_expired"] == 0
    assert b.get_task(other)["status"] == base.SUCCEEDED  # type: ignore[index]
    assert b.get_task(tid)["status"] == base.QUEUED  # type: ignore[index]


# -- unique keys ---------------------------------------------------------------------------------
def test_unique_key_dedupes_live_tasks_only(broker: RedisBroker) -> None:
    first = broker.push(msg(unique_key="k"))
    assert broker.push(msg(unique_key="k")) == first
    assert broker.push_many([msg(unique_key="k"), msg(task_id="x", unique_key="j")]) == [
        first,
        "x",
    ]
    m = broker.pop(W1)
    assert m["task_id"] == first
    assert broker.push(msg(unique_key="k")) == first  # running still holds it
    ok(broker, W1, m)
    second = broker.push(msg(unique_key="k"))
    assert second != first
    with pytest.raises(TaskError, match="unique_key"):
        broker.push(msg(unique_key=""))


def test_retry_refuses_a_task_whose_unique_key_is_held_again(broker: RedisBroker) -> None:
    first = broker.push(msg(unique_key="k"))
    m = broker.pop(W1)
    broker.report(W1, (m["task_id"], "invalid", {"error": "no"}))
    second = broker.push(msg(unique_key="k"))
    assert second != first
    assert broker.retry_task(first) is False
    assert broker.get_task(first)["status"] == base.DEAD


def test_concurrent_pushes_of_one_unique_key_make_one_task(
    make: Callable[..., RedisBroker],
) -> None:
    nodes = [make(node=f"n{i}") for i in range(6)]
    ids: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(len(nodes))

    def push(node: RedisBroker) -> None:
        go.wait(timeout=10)
        for _ in range(20):
            tid = node.push(msg(unique_key="only-one"))
            with lock:
                ids.append(tid)

    threads = [threading.Thread(target=push, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(ids) == 120 and len(set(ids)) == 1
    assert nodes[0].queue_size() == 1
    assert nodes[0].stats()["counters"][("pushed", "t", "")] == 1


def test_counts_stay_exact_under_a_concurrent_mixed_workload(
    make: Callable[..., RedisBroker],
) -> None:
    """Six consumers on three nodes succeed, fail, reject, release, cancel and abandon tasks
    while a producer pushes (some delayed, some unique) and maintain recovers: afterwards the
    counters kept by the scripts equal a walk of the records, and no task went missing."""
    opts = {"t": TaskOptions(max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.02)}

    def node(name: str) -> RedisBroker:
        return make(node=name, clock=time.time, task_types=opts, lease_s=0.2, finished_records=50)

    main = node("main")
    errors: list[BaseException] = []

    def produce() -> None:
        r = random.Random(1)
        for _ in range(40):
            main.push_many(
                [
                    msg(
                        priority=r.randint(0, 10),
                        unique_key=f"u{r.randint(0, 9)}" if r.random() < 0.3 else None,
                        delay=r.random() * 0.05 if r.random() < 0.3 else None,
                    )
                    for _ in range(5)
                ]
            )

    def consume(n: int) -> None:
        b, r, gen, m = node(f"n{n % 3}"), random.Random(n), 0, None
        try:
            for _ in range(100):
                consumer, report = f"worker:{n}:{gen}", None
                if m is not None:
                    x = r.random()
                    if x < 0.6:
                        report = (m["task_id"], base.SUCCEEDED, n)
                    elif x < 0.75:
                        report = (m["task_id"], "failed", {"error": "e"})
                    elif x < 0.8:
                        report = (m["task_id"], "invalid", {"error": "bad"})
                    elif x < 0.88:
                        b.release_consumer(consumer, r.choice(["shutdown", "worker_lost"]))
                    elif x < 0.94:
                        b.cancel(m["task_id"])
                        report = (m["task_id"], "failed", {"error": "cancelled"})
                    else:
                        gen += 1  # abandoned: its lease runs out, maintain recovers it
                        consumer = f"worker:{n}:{gen}"
                m = b.exchange(consumer, report, 0.01)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def maintain() -> None:
        while any(t.is_alive() for t in consumers):
            main.maintain()
            time.sleep(0.01)  # a master's housekeeping loop, sped up

    consumers = [threading.Thread(target=consume, args=(n,)) for n in range(6)]
    others = [threading.Thread(target=produce), threading.Thread(target=maintain)]
    for t in consumers + others:
        t.start()
    for t in consumers + others:
        t.join(timeout=25)
    assert errors == []
    c, tag = main._client, f"{{{main._keys.prefix}}}:"
    s = main.stats()  # first: it promotes a retry that came due since (the walk would not)
    walked: dict[str, int] = {}
    for blob in c.hvals(f"{tag}task"):
        status = json.loads(blob)["status"]
        walked[status] = walked.get(status, 0) + 1
    assert s["by_status"] == walked == main.get_queue_stats()
    assert c.zcard(f"{tag}ready:default") == walked.get("queued", 0) == s["queued"]
    assert c.zcard(f"{tag}delayed") == walked.get("scheduled", 0) + walked.get("retrying", 0)
    assert c.zcard(f"{tag}lease") == c.hlen(f"{tag}owner") == walked.get("running", 0)
    assert c.zcard(f"{tag}done") == 50 == sum(walked.get(st, 0) for st in base.FINAL_STATUSES)
    counters = s["counters"]
    finished = sum(n for (ev, _, _), n in counters.items() if ev == "finished")
    active = sum(walked.get(st, 0) for st in base.ACTIVE_STATUSES)
    assert counters[("pushed", "t", "")] == finished + active  # none lost, none twice


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_queued_delayed_and_running(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make)
    queued = b.push(msg(task_id="q"))
    delayed = b.push(msg(task_id="d", eta=clock.now + 50))
    running = b.push(msg(task_id="r", priority=10, unique_key="u"))
    assert b.pop(W1)["task_id"] == running
    assert b.cancel(queued) == base.CANCELLED
    assert b.cancel(delayed) == base.CANCELLED
    assert b.cancel(running) == "cancelling"
    assert b.cancel("nope") == "unknown"
    assert b.cancel(queued) == "finished"
    clock.advance(100)
    assert b.pop(W2) is None  # neither waiting task is ever handed out
    assert b.stats()["queued"] == 0 and b.stats()["scheduled"] == 0
    [(consumer, tid, at)] = b.pending_cancels()
    assert (consumer, tid) == (W1, running) and at == clock.now - 100
    assert b.renew([W1]) == {"lost": [], "cancel": [running]}
    assert make(node="b").pending_cancels() == []  # another node's master has nothing to do
    b.report(W1, (running, "failed", {"error": "Cancelled"}))
    rec = b.get_task(running)
    assert rec["status"] == base.CANCELLED and rec["cancel_requested_at"] is not None
    assert b.pending_cancels() == []
    assert not b._client.hexists(b._keys.name("cancel"), running)  # its flag went with it
    assert b.push(msg(unique_key="u")) != running  # the unique key was released
    assert b.retry_task(queued) is True


# -- records -------------------------------------------------------------------------------------
def test_results_records_list_and_purge(make: Callable[..., RedisBroker], clock: FakeClock) -> None:
    b = retry_broker(make, max_retries=0)
    b.push(msg(task_id="s", schedule_id="sch", scheduled_at=clock.now - 1, params=b"\x00\xff"))
    clock.advance(1)
    b.push(msg("t", task_id="f"))
    clock.advance(1)
    b.push(msg(task_id="q"))
    m = b.pop(W1)
    assert m == {
        "task_id": "s",
        "type": "t",
        "params": b"\x00\xff",
        "priority": 5,
        "attempt": 1,
        "pushed_at": clock.now - 2,
        "scheduled_at": clock.now - 3,
        "schedule_id": "sch",
        "queue": "default",
    }
    ok(b, W1, m, result={"rows": [], "n": 1.5})
    b.report(W1, ("f", "failed", {"error": "no"}) if b.pop(W1) else ("", "", None))
    rec = b.get_task("s")
    assert rec["status"] == base.SUCCEEDED and rec["result"] == {"rows": [], "n": 1.5}
    assert rec["finished_at"] == clock.now and rec["consumer"] is None
    assert set(rec) == {
        "task_id", "type", "params", "priority", "status", "attempts", "pushed_at", "eta",
        "started_at", "finished_at", "consumer", "result", "errors", "error", "traceback",
        "schedule_id", "scheduled_at", "unique_key", "cancel_requested_at", "queue",
    }  # fmt: skip
    assert [r["task_id"] for r in b.list_tasks()] == ["q", "f", "s"]
    assert [r["task_id"] for r in b.list_tasks(status=base.DEAD)] == ["f"]
    assert [r["task_id"] for r in b.list_tasks(since=clock.now - 1)] == ["q", "f"]
    assert [r["task_id"] for r in b.list_tasks(limit=1)] == ["q"]
    assert b.list_tasks(task_type="other") == []
    assert b.get_queue_stats() == {"succeeded": 1, "dead": 1, "queued": 1}
    with pytest.raises(TaskError, match="only finished tasks"):
        b.purge(base.QUEUED, 0)
    assert b.purge(base.SUCCEEDED, 10) == 0
    clock.advance(11)
    assert b.purge(base.SUCCEEDED, 10) == 1
    assert b.get_task("s") is None and b.get_task("f")["status"] == base.DEAD
    assert b.get_queue_stats() == {"dead": 1, "queued": 1}


def test_finished_records_are_capped_and_expire(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = make(finished_records=2, result_ttl_s=100)
    for name in ("a", "b", "c"):
        b.push(msg(task_id=name))
        ok(b, W1, b.pop(W1))
        clock.advance(1)
    assert b.get_task("a") is None
    assert [b.get_task(n)["status"] for n in ("b", "c")] == [base.SUCCEEDED] * 2
    assert b.stats()["by_status"] == {"succeeded": 2}
    clock.advance(98)
    assert b.maintain()["records_expired"] == 1  # b finished 100 s ago, c 99 s ago
    assert b.get_task("b") is None and b.get_task("c") is not None
    assert b.push(msg(task_id="c")) == "c"  # a finished id may be used again
    assert b.get_task("c")["status"] == base.QUEUED
    assert b.stats()["by_status"] == {"queued": 1}


def test_stats_counts(make: Callable[..., RedisBroker], clock: FakeClock) -> None:
    b = retry_broker(make)
    b.push(msg(task_id="q1", priority=2))
    clock.advance(5)
    b.push(msg(task_id="q2", priority=2))
    b.push(msg(task_id="q3", priority=9))
    b.push(msg(task_id="later", eta=clock.now + 100))
    b.push(msg(task_id="run", priority=10))
    b.pop(W1)
    b.push(msg(task_id="fail", priority=10))
    b.pop(W2)
    b.set_public("k1", b"v")
    clock.advance(1)
    b.report(W2, ("fail", "failed", {"error": "x"}))
    s = b.stats()
    assert s["queued"] == 3
    assert s["by_priority"] == {2: 2, 9: 1}
    assert s["oldest_age_s"][2] == pytest.approx(6.0)
    assert s["oldest_age_s"][9] == pytest.approx(1.0)
    assert s["scheduled"] == 1 and s["retrying"] == 1 and s["running"] == 1
    assert s["by_status"] == {"queued": 3, "scheduled": 1, "retrying": 1, "running": 1}
    assert s["store_keys"] == 1
    assert s["dispatching"] is True
    assert s["counters"][("pushed", "t", "")] == 6
    assert s["counters"][("started", "t", "")] == 2
    assert s["counters"][("retried", "t", "error")] == 1
    assert b.queue_size() == 3
    assert b.held() == {W1: "run"}
    status = b.get_status()
    assert status["master"] == {} and status["scheduler"] is None
    assert status["stats"]["queued"] == 3


def test_status_board_per_node(make: Callable[..., RedisBroker], clock: FakeClock) -> None:
    a, b = make(node="a"), make(node="b")
    a.publish_status({"workers": [1, 2]})
    b.publish_status({"workers": []})
    b.set_dispatching(False)
    assert a.master_status() == {"workers": [1, 2]}
    assert a.node_statuses() == {"a": {"workers": [1, 2]}, "b": {"workers": []}}
    assert a.scheduler_status() == ({}, None)
    b.publish_scheduler_status({"due": 3})
    clock.advance(2)
    # each node's scheduler has its own counters: one document per node, never mixed
    assert a.scheduler_status() == ({}, None) and b.scheduler_status() == ({"due": 3}, 2.0)
    assert a.get_status()["scheduler"] is None  # a node run without one: not b's as its own
    client = make(node="client")  # a name no node has
    assert client.get_status()["scheduler"] == {"due": 3, "node": "b", "report_age_s": 2.0}
    a.publish_scheduler_status({"due": 1})
    clock.advance(1)
    assert a.scheduler_statuses() == {"a": ({"due": 1}, 1.0), "b": ({"due": 3}, 3.0)}
    assert a.get_status()["scheduler"] == {"due": 1, "node": "a", "report_age_s": 1.0}
    assert b.get_status()["scheduler"] == {"due": 3, "node": "b", "report_age_s": 3.0}
    assert client.get_status()["scheduler"] == {"due": 1, "node": "a", "report_age_s": 1.0}
    assert client.get_status()["schedulers"] == {
        "a": {"due": 1, "report_age_s": 1.0},
        "b": {"due": 3, "report_age_s": 3.0},
    }
    with pytest.raises(TaskError, match="must be a dict"):
        a.publish_scheduler_status([])  # type: ignore[arg-type]
    b.forget_node()
    assert a.node_statuses() == {"a": {"workers": [1, 2]}}
    assert list(a.scheduler_statuses()) == ["a"]
    assert b.dispatching() is True
    assert a.known_task_types() == []


def test_drain_events_reports_queue_wait_and_run_time_per_node(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    a, b = make(node="a"), make(node="b")
    tid = a.push(msg())
    clock.advance(2)
    a.pop(W1)
    clock.advance(3)
    ok(a, W1, {"task_id": tid})
    b.push(msg(task_id="cancelled-waiting"))
    b.cancel("cancelled-waiting")  # never ran: no run time
    assert a.drain_events() == [("started", "t", "", 2.0), ("finished", "t", "succeeded", 3.0)]
    assert a.drain_events() == [] and b.drain_events() == []


# -- bad input -----------------------------------------------------------------------------------
def test_unknown_type_and_configure(make: Callable[..., RedisBroker]) -> None:
    b = make(task_types={"resize": TaskOptions(), "email": TaskOptions()})
    with pytest.raises(UnknownTaskType, match=r"'thumb' is not registered; known: email, resize"):
        b.push(msg("thumb"))
    b.configure({}, max_payload_bytes=10)
    with pytest.raises(UnknownTaskType, match=r"known: \(none\)"):
        b.push(msg("x"))
    b.configure(None)
    with pytest.raises(TaskError, match="11 bytes pickled; the limit is 10"):
        b.push(msg("x", params=b"x" * 11))
    b.push(msg("x", params=b"x" * 10))
    assert b.queue_size() == 1


@pytest.mark.parametrize("prio", [-1, 11, "5", 5.0, True])
def test_bad_priority_raises(broker: RedisBroker, prio: object) -> None:
    with pytest.raises(TaskError, match="priority"):
        broker.push(msg(priority=prio))
    assert broker.stats()["by_status"] == {}


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("not a dict", "must be a dict"),
        ({"params": b""}, "'type' must be a non-empty string"),
        ({"type": "t", "params": {"a": 1}}, "pickled"),
        ({"type": "t", "params": "text"}, "pickled"),
        ({"type": "t", "params": b"", "task_id": 7}, "task_id must be a string"),
        ({"type": "t", "params": b"", "task_id": "x" * 201}, "task_id must be a string"),
        ({"type": "t", "params": b"", "eta": "tomorrow"}, "eta must be epoch seconds"),
        ({"type": "t", "params": b"", "eta": float("nan")}, "eta"),
        ({"type": "t", "params": b"", "delay": -1}, "delay"),
    ],
)
def test_malformed_messages_raise(broker: RedisBroker, message: Any, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        broker.push(message)
    assert broker.stats()["by_status"] == {}


def test_oversize_params_raise(make: Callable[..., RedisBroker]) -> None:
    b = make(max_payload_bytes=100)
    b.push(msg(params=b"x" * 100))
    with pytest.raises(TaskError, match="101 bytes pickled; the limit is 100"):
        b.push(msg(params=b"x" * 101))
    assert b.queue_size() == 1


def test_duplicate_live_id_and_push_many_all_or_none(broker: RedisBroker) -> None:
    broker.push(msg(task_id="live"))
    with pytest.raises(DuplicateTaskId, match="'live' is already queued"):
        broker.push(msg(task_id="live"))
    with pytest.raises(TaskError, match="same task_id twice"):
        broker.push_many([msg(task_id="x"), msg(task_id="x")])
    with pytest.raises(DuplicateTaskId, match="'live' is already queued"):
        broker.push_many([msg(task_id="y"), msg(task_id="live")])
    with pytest.raises(TaskError, match="priority"):
        broker.push_many([msg(task_id="z"), msg(priority=11)])
    with pytest.raises(TaskError, match="list"):
        broker.push_many(msg())  # type: ignore[arg-type]
    assert broker.queue_size() == 1 and broker.get_task("y") is None
    assert broker.push_many([msg(task_id="y"), msg(task_id="z")]) == ["y", "z"]
    assert broker.push_many([]) == []
    m = broker.pop(W1)
    with pytest.raises(DuplicateTaskId, match="'live' is already running"):
        broker.push(msg(task_id="live"))
    with pytest.raises(TaskError, match="'worker:1' still holds task 'live'"):
        broker.pop(W1)
    assert broker.exchange(W1, (m["task_id"], base.SUCCEEDED, None), 0)["task_id"] == "y"
    assert len({broker.push(msg()) for _ in range(50)}) == 50


def test_reports_from_a_consumer_that_does_not_hold_the_task_change_nothing(
    broker: RedisBroker,
) -> None:
    tid = broker.push(msg())
    broker.pop(W1)
    broker.report(W2, (tid, base.SUCCEEDED, "forged"))
    broker.report(W1, ("other-id", base.SUCCEEDED, None))
    with pytest.raises(LeaseLost):
        broker.report_strict(W2, (tid, "failed", {"error": "forged"}))
    rec = broker.get_task(tid)
    assert rec["status"] == base.RUNNING and rec["consumer"] == W1 and rec["errors"] == []


# -- store ---------------------------------------------------------------------------------------
def test_store_with_native_expiry(make: Callable[..., RedisBroker]) -> None:
    b = make()
    other = make(prefix=f"other{uuid.uuid4().hex[:6]}")
    b.set_public("k", b"v")
    b.set_public("short", b"\x00bytes", ttl=0.05)
    b.set_public("glob*[x]", b"1", ttl=60)
    other.set_public("k", b"elsewhere")
    assert b.get_public("short") == b"\x00bytes"
    assert b.list_keys() == ["glob*[x]", "k", "short"]
    wait_until(lambda: b.get_public("short") is None, what="the short key to expire")
    wait_until(lambda: b.get_store_size() == 2, what="the store size to drop")
    assert b.list_keys() == ["glob*[x]", "k"]
    assert b.cleanup() == 1  # its index entry
    assert b.delete_public("k") is True and b.delete_public("k") is False
    b.set_public("k", b"again", ttl=100)
    b.set_public("k", b"forever")  # a set without ttl clears the expiry
    assert b.get_public("k") == b"forever"
    b.clear_store()
    assert b.list_keys() == [] and b.get_store_size() == 0
    assert other.get_public("k") == b"elsewhere"  # another prefix is untouched
    with pytest.raises(StoreError):
        b.set_public("k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        b.set_public("k", b"v", ttl=0)
    with pytest.raises(StoreError):
        b.get_public("")
    assert b.ping() == "pong"


# -- leases --------------------------------------------------------------------------------------
def test_expired_lease_is_recovered_as_worker_lost_and_retried(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    opts = {**RETRY_OPTS, "backoff_cap_s": 1.0}
    a = make(node="a", lease_s=0.2, task_types={"t": TaskOptions(**opts)})
    b = make(node="b", lease_s=0.2, task_types={"t": TaskOptions(**opts)})
    tid = a.push(msg())
    assert a.pop(W1)["attempt"] == 1
    assert b.recover() == 0  # not yet expired
    wait_until(lambda: b.recover() == 1, what="the lease to expire")  # node a died
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING and rec["attempts"] == 1
    assert rec["errors"][-1]["reason"] == base.REASON_WORKER_LOST
    assert "node a" in rec["error"]
    assert b.stats()["running"] == 0
    clock.advance(2)
    m = b.pop(W1)
    assert m["task_id"] == tid and m["attempt"] == 2
    ok(b, W1, m)
    assert b.get_task(tid)["status"] == base.SUCCEEDED


def test_late_report_after_recovery_is_refused(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    """Node a is cut off past its lease: b recovers and reruns the task; a's late report is
    refused (LeaseLost) and the task is recorded once, with b's result."""
    a = make(node="a", lease_s=0.2)
    b = make(node="b", lease_s=5.0)
    c = make(node="c", lease_s=0.2)  # nodes share lease_s; b only needs to outlive the test
    tid = a.push(msg())
    a.pop(W1)
    wait_until(lambda: c.recover() == 1, what="the lease to expire")
    clock.advance(1000)  # past the backoff
    assert b.pop(W1)["attempt"] == 2
    assert a.renew([W1]) == {"lost": [tid], "cancel": []}
    with pytest.raises(LeaseLost, match="changed nothing"):
        a.report_strict(W1, (tid, base.SUCCEEDED, "from a"))
    a.report(W1, (tid, "failed", {"error": "late"}))  # silently refused too
    rec = a.get_task(tid)
    assert rec["status"] == base.RUNNING and rec["attempts"] == 2
    assert [e["reason"] for e in rec["errors"]] == [base.REASON_WORKER_LOST]
    assert a.pop(W1) is None  # a's stale hold is gone: it may take work again
    ok(b, W1, {"task_id": tid}, result="from b")
    rec = b.get_task(tid)
    assert rec["status"] == base.SUCCEEDED and rec["result"] == "from b"
    counters = b.stats()["counters"]
    assert counters[("finished", "t", "succeeded")] == 1
    assert counters[("started", "t", "")] == 2


def test_renew_keeps_a_lease_alive(make: Callable[..., RedisBroker]) -> None:
    # A lease of 1 s renewed every 50 ms: a stall of the test process (a loaded machine) must
    # last twenty renewals before it looks like a dead node.
    a = make(node="a", lease_s=1.0)
    b = make(node="b", lease_s=1.0)
    tid = a.push(msg())
    a.pop(W1)
    end = time.monotonic() + 2.5  # more than two leases
    while time.monotonic() < end:
        assert a.renew([W1, "worker:idle"]) == {"lost": [], "cancel": []}
        assert b.recover() == 0
        time.sleep(0.05)  # renew every 50 ms, as a master would every lease / 3
    assert a.get_task(tid)["status"] == base.RUNNING
    assert a.held() == {W1: tid}
    wait_until(lambda: b.recover() == 1, what="the unrenewed lease to expire")
    assert a.held() == {}


def test_external_consumer_lease_is_the_types_timeout_plus_grace(
    make: Callable[..., RedisBroker],
) -> None:
    """Nobody renews a consumer that is not a worker: its lease covers its task's timeout."""
    b = make(
        lease_s=0.2,
        task_types={"short": TaskOptions(timeout_s=10.0), "long": TaskOptions(timeout_s=500.0)},
    )
    lease_key = f"{{{b._keys.prefix}}}:lease"
    for task_type, timeout in (("short", 10.0), ("long", 500.0)):
        tid = b.push(msg(task_type))
        before = time.time()
        b.pop(f"client:host:1:{task_type}")
        deadline = b._client.zscore(lease_key, tid) / 1000.0
        assert deadline - before == pytest.approx(timeout + LEASE_GRACE_S, abs=1.0)
    tid = b.push(msg("short"))
    before = time.time()
    b.pop(W1)  # a worker: lease_s, renewed by its master
    assert b._client.zscore(lease_key, tid) / 1000.0 - before == pytest.approx(0.2, abs=0.1)
    assert b.maintain()["leases_expired"] == 0


def test_exchange_with_a_refused_report_still_hands_out_the_next_task(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    a = make(node="a", lease_s=0.2)
    b = make(node="b", lease_s=0.2)
    lost = a.push(msg(task_id="lost", priority=9))
    a.push(msg(task_id="next", priority=1))
    a.pop(W1)
    wait_until(lambda: b.recover() == 1, what="the lease to expire")
    m = a.exchange(W1, (lost, base.SUCCEEDED, "late"), 0)
    assert m is not None and m["task_id"] == "next"
    assert a.get_task(lost)["status"] == base.RETRYING  # the late success changed nothing


def test_every_key_shares_one_hash_tag_and_changes_reach_the_outbox(
    make: Callable[..., RedisBroker], clock: FakeClock
) -> None:
    b = retry_broker(make)
    tid = b.push(msg(unique_key="u"))
    m = b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "x"}))
    clock.advance(10)
    b.maintain()
    m = b.pop(W1)
    ok(b, W1, m)
    b.set_public("k", b"v", ttl=10)
    b.renew([W1])
    tag = f"{{{b._keys.prefix}}}:"
    keys = sorted(k.decode() for k in b._client.scan_iter(match=f"*{b._keys.prefix}*"))
    assert keys and all(k.startswith(tag) for k in keys), keys
    events = b._client.xrange(f"{tag}events")
    seen = [(e[b"id"].decode(), e[b"status"].decode(), int(e[b"attempt"])) for _, e in events]
    assert seen == [
        (tid, "queued", 0),
        (tid, "running", 1),
        (tid, "retrying", 1),
        (tid, "queued", 1),
        (tid, "running", 2),
        (tid, "succeeded", 2),
    ]
    assert b.check_server() == []  # the test server runs noeviction + AOF
    b._client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert b.check_server() == ["maxmemory-policy is 'allkeys-lru', not 'noeviction'"]
    finally:
        b._client.config_set("maxmemory-policy", "noeviction")


# -- the server ----------------------------------------------------------------------------------
def test_noscript_after_script_flush_is_handled(broker: RedisBroker) -> None:
    tid = broker.push(msg())
    broker._client.script_flush()
    assert broker.pop(W1)["task_id"] == tid
    broker._client.script_flush()
    ok(broker, W1, {"task_id": tid})
    assert broker.get_task(tid)["status"] == base.SUCCEEDED


def test_unreachable_server_is_a_broker_error_without_the_password() -> None:
    b = RedisBroker(url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerError, match=r"cannot reach Redis at redis://:\*\*\*@127.0.0.1") as e:
        b.ping()
    assert "s3cret" not in str(e.value)
    with pytest.raises(BrokerError):
        b.push(msg())
    b.close()


def test_kill_9_and_restart_loses_no_accepted_task(clock: FakeClock) -> None:
    with private_redis_server() as srv:
        b = RedisBroker(url=srv.url, prefix="k9", node="a", clock=clock)
        fast = RedisBroker(url=srv.url, prefix="k9", node="f", clock=clock, lease_s=1.2)
        ids = b.push_many([msg(task_id=f"t{i:03d}", priority=i % 11) for i in range(100)])
        ids.append(b.push(msg(task_id="late", eta=clock.now + 5)))
        running = b.pop(W1)
        orphan = fast.pop(W1)  # node f dies with Redis and never renews
        lease_end = fast._client.zscore("{k9}:lease", orphan["task_id"]) / 1000.0
        b.set_public("kept", b"v")
        srv.kill()
        with pytest.raises(BrokerError, match="cannot reach Redis"):
            b.push(msg(task_id="refused"))
        wait_until(lambda: time.time() > lease_end, what="f's lease to pass while Redis is down")
        srv.start()  # the same port and folder: the AOF replays
        b.ping()
        assert b.get_task(running["task_id"])["status"] == base.RUNNING
        assert b.get_public("kept") == b"v"
        s = b.stats()
        assert s["by_status"] == {"queued": 98, "running": 2, "scheduled": 1}
        # f's lease is past, but nobody could renew while Redis was down: nothing is recovered
        # before the server has been up for a lease (uptime is whole seconds: 0 or 1 < 1.2)
        assert fast.recover() == 0
        wait_until(lambda: fast.recover() == 1, what="recovery after a lease of uptime")
        assert b.get_task(orphan["task_id"])["errors"][-1]["reason"] == base.REASON_WORKER_LOST
        ok(b, W1, running)  # scripts load again (NOSCRIPT after the restart)
        clock.advance(5)
        seen = {running["task_id"]}
        while (m := b.pop(W1)) is not None:
            seen.add(m["task_id"])
            ok(b, W1, m)
        assert seen == set(ids)
        assert b.get_task("refused") is None
        assert b.get_task(orphan["task_id"])["attempts"] == 2
        b.close()
        fast.close()


def test_a_producer_with_only_the_url_pushes_and_reads(redis_server: RedisServer) -> None:
    """The seed API from any machine: supervisor.connect(broker=URL), no run folder."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    q = supervisor.connect(broker=redis_server.url, key_prefix=prefix)
    tid = q.push_task({"type": "resize", "params": {"path": "/img/1.png"}, "priority": 9})
    q.set_public("session_token", "token123", ttl=60)
    other = supervisor.connect(redis_server.url, key_prefix=prefix)  # an address that is a URL
    assert other.get_public("session_token") == "token123"
    assert other.get_task_state(tid)["params"] == {"path": "/img/1.png"}
    assert other.get_queue_size() == 1
    task = other.pop_task(timeout=0)
    assert task["task_id"] == tid
    other.task_done(tid, {"ok": True})
    assert q.get_task_state(tid)["status"] == "succeeded"


# -- named queues --------------------------------------------------------------------------------
def test_a_producer_with_only_the_url_routes_by_the_types_a_node_published(
    make: Callable[..., RedisBroker],
) -> None:
    node = make(node="a")
    node.configure({"render": TaskOptions(timeout_s=10.0, queue="gpu")})
    producer = make(node="client")  # no task types: what `supervisor push --broker` has
    producer.push(msg("render", task_id="r"))
    producer.push(msg("render", task_id="d", queue="default"))
    with pytest.raises(
        UnknownTaskType, match="'unknown' is not registered on any node; known: render"
    ):
        producer.push_many([msg("render", task_id="x"), msg("unknown", task_id="u")])
    assert producer.get_task("x") is None  # all or none
    assert producer.get_task("r")["queue"] == "gpu"  # type: ignore[index]
    gpu = make(node="a", queues=["gpu"])
    assert gpu.queue_size() == 1 and producer.queue_size() == 2
    m = gpu.pop(W1)
    assert m is not None and m["task_id"] == "r"
    assert gpu.pop(W2) is None  # the handle's queues hold for every call


def test_a_waiting_consumer_of_one_queue_gets_its_task_at_once(
    make: Callable[..., RedisBroker],
) -> None:
    b = make(node="a")
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(b.pop(W1, 20.0, ["fast"])))
    waiter.start()
    try:
        started = time.monotonic()
        make(node="b").push(msg(task_id="x", queue="fast"))
        waiter.join(10.0)
        assert got and got[0]["task_id"] == "x"
        assert time.monotonic() - started < 0.9  # handed over at once, not found after a wait
    finally:
        b.set_dispatching(False)
        waiter.join(10.0)
