"""The embedded broker: priority and FIFO order, delays, retries, leases, dispatching, stats."""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.memory import LEASE_GRACE_S, MemoryBroker
from supervisor.errors import TaskError, UnknownTaskType
from supervisor.registry import TaskOptions

pytestmark = pytest.mark.timeout(30)

W1 = "worker:1"
W2 = "worker:2"


def msg(task_type: str = "t", *, params: bytes = b"p", **kw: Any) -> dict[str, Any]:
    return {"type": task_type, "params": params, **kw}


def ok(broker: MemoryBroker, consumer: str, task: dict[str, Any], result: Any = None) -> None:
    broker.report(consumer, (task["task_id"], base.SUCCEEDED, result))


@pytest.fixture
def broker(clock) -> MemoryBroker:
    return MemoryBroker(clock=clock, rng=random.Random(0))


def retry_broker(clock, **opts: Any) -> MemoryBroker:
    options = {"max_retries": 2, "backoff_base_s": 1.0, "backoff_cap_s": 4.0, "timeout_s": 10.0}
    options.update(opts)
    return MemoryBroker(clock=clock, rng=random.Random(0), task_types={"t": TaskOptions(**options)})


# -- order ---------------------------------------------------------------------------------------
def test_higher_priority_first_fifo_within_a_priority(broker: MemoryBroker) -> None:
    prios = [3, 7, 0, 10, 7, 3, 5, 10, 0, 5]
    ids = [broker.push(msg(task_id=f"t{i}", priority=p)) for i, p in enumerate(prios)]
    expected = [ids[i] for i in sorted(range(len(prios)), key=lambda i: (-prios[i], i))]
    got = []
    while (m := broker.pop(W1)) is not None:
        got.append(m["task_id"])
        ok(broker, W1, m)
    assert got == expected
    assert got[:2] == ["t3", "t7"] and got[-2:] == ["t2", "t8"]


def test_default_priority_comes_from_the_task_type(clock) -> None:
    b = MemoryBroker(
        clock=clock, task_types={"lo": TaskOptions(priority=1), "hi": TaskOptions(priority=9)}
    )
    b.push(msg("lo", task_id="lo"))
    b.push(msg("hi", task_id="hi"))
    b.push(msg("lo", task_id="lo-boosted", priority=10))
    assert [b.pop(f"c{i}")["task_id"] for i in range(3)] == ["lo-boosted", "hi", "lo"]


def test_order_is_global_across_consumers_taking_turns(broker: MemoryBroker) -> None:
    rng = random.Random(5)
    prios = [rng.randint(0, 10) for _ in range(60)]
    for i, p in enumerate(prios):
        broker.push(msg(task_id=f"t{i:02d}", priority=p))
    expected = [f"t{i:02d}" for i in sorted(range(60), key=lambda i: (-prios[i], i))]
    consumers = [f"worker:{n}" for n in range(4)]
    got = []
    for consumer in itertools.cycle(consumers):
        m = broker.pop(consumer)
        if m is None:
            break
        got.append(m["task_id"])
        ok(broker, consumer, m)
    assert got == expected


def test_order_is_held_with_concurrent_consumers() -> None:
    """Four threads each hold a task while the others pop (rounds kept by a barrier); the
    hand-out order, stamped by a counting clock, is exactly priority then FIFO."""
    ticks = itertools.count(1)
    b = MemoryBroker(clock=lambda: float(next(ticks)))
    rng = random.Random(11)
    n_consumers, rounds = 4, 100
    prios = [rng.randint(0, 10) for _ in range(n_consumers * rounds)]
    b.push_many([msg(task_id=f"t{i:03d}", priority=p) for i, p in enumerate(prios)])
    expected = [f"t{i:03d}" for i in sorted(range(len(prios)), key=lambda i: (-prios[i], i))]
    taken: list[list[str]] = [[] for _ in range(n_consumers)]
    errors: list[BaseException] = []
    all_popped = threading.Barrier(n_consumers)

    def consume(n: int) -> None:
        consumer = f"worker:{n}"
        try:
            for _ in range(rounds):
                m = b.pop(consumer, wait_s=5)
                assert m is not None
                taken[n].append(m["task_id"])
                all_popped.wait(timeout=10)  # everyone holds one task now
                ok(b, consumer, m)
            assert b.pop(consumer, wait_s=0) is None
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            all_popped.abort()

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(n_consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert [len(part) for part in taken] == [rounds] * n_consumers
    all_taken = [tid for part in taken for tid in part]
    assert sorted(all_taken) == sorted(expected)  # each task handed out exactly once
    by_start = sorted(all_taken, key=lambda tid: b.get_task(tid)["started_at"])
    assert by_start == expected


# -- delayed tasks -------------------------------------------------------------------------------
def test_task_with_eta_is_invisible_until_due(broker: MemoryBroker, clock) -> None:
    eta = clock.now + 10
    tid = broker.push(msg(eta=eta, priority=10))
    broker.push(msg(task_id="ready", priority=0))
    assert broker.get_task(tid)["status"] == base.SCHEDULED
    assert broker.queue_size() == 1
    m = broker.pop(W1)
    assert m["task_id"] == "ready"  # a delayed high-priority task does not block a ready one
    ok(broker, W1, m)
    clock.advance(9.999)
    assert broker.pop(W1) is None
    assert broker.queue_size() == 0
    assert broker.stats()["scheduled"] == 1
    clock.now = eta
    assert broker.queue_size() == 1
    m = broker.pop(W1)
    assert m is not None and m["task_id"] == tid
    assert broker.get_task(tid)["status"] == base.RUNNING


def test_eta_in_the_past_is_ready_at_once(broker: MemoryBroker, clock) -> None:
    tid = broker.push(msg(eta=clock.now - 100))
    assert broker.get_task(tid)["status"] == base.QUEUED
    assert broker.pop(W1)["task_id"] == tid


def test_delay_is_measured_on_the_brokers_clock(broker: MemoryBroker, clock) -> None:
    tid = broker.push(msg(delay=30))
    assert broker.get_task(tid)["eta"] == clock.now + 30
    clock.advance(29)
    assert broker.pop(W1) is None
    clock.advance(1)
    assert broker.pop(W1)["task_id"] == tid


def test_delayed_tasks_come_due_in_eta_order_then_by_priority(broker: MemoryBroker, clock) -> None:
    t0 = clock.now
    broker.push(msg(task_id="late", eta=t0 + 20, priority=9))
    broker.push(msg(task_id="early-lo", eta=t0 + 10, priority=1))
    broker.push(msg(task_id="early-hi", eta=t0 + 10, priority=8))
    clock.advance(10)
    assert [broker.pop(f"c{i}")["task_id"] for i in range(2)] == ["early-hi", "early-lo"]
    assert broker.pop("c9") is None
    clock.advance(10)
    assert broker.pop("c9")["task_id"] == "late"


def test_maintain_promotes_due_tasks(broker: MemoryBroker, clock) -> None:
    broker.push(msg(eta=clock.now + 5))
    broker.push(msg(eta=clock.now + 6))
    clock.advance(5)
    assert broker.maintain()["promoted"] == 1
    clock.advance(1)
    assert broker.maintain()["promoted"] == 1
    assert broker.maintain()["promoted"] == 0


def test_waiting_pop_wakes_when_a_delayed_task_comes_due() -> None:
    b = MemoryBroker()  # the real clock: the wait itself is what is tested
    eta = time.time() + 0.2
    tid = b.push(msg(eta=eta))
    started = time.monotonic()
    m = b.pop(W1, wait_s=10)
    elapsed = time.monotonic() - started
    assert m is not None and m["task_id"] == tid
    assert time.time() >= eta  # never handed out early
    assert elapsed < 5  # woke at the eta, not at the end of wait_s


def test_waiting_pop_wakes_on_push_from_another_thread() -> None:
    b = MemoryBroker()
    box: dict[str, Any] = {}
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        box["msg"] = b.pop(W1, wait_s=10)

    t = threading.Thread(target=consume)
    started = time.monotonic()
    t.start()
    assert waiting.wait(5)
    tid = b.push(msg())
    t.join(timeout=10)
    assert not t.is_alive()
    assert box["msg"]["task_id"] == tid
    assert time.monotonic() - started < 5


def test_unbounded_pop_with_a_far_eta_pending_still_waits() -> None:
    """A task due in 30,000 years must not turn a blocking pop's wait into an OverflowError."""
    b = MemoryBroker()
    b.push(msg(task_id="far", eta=time.time() + 1e12))
    box: dict[str, Any] = {}
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        try:
            box["msg"] = b.pop(W1, wait_s=None)
        except Exception as exc:  # surfaced below
            box["error"] = exc

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert waiting.wait(5)
    b.push(msg(task_id="now"))
    t.join(timeout=10)
    assert not t.is_alive()
    assert "error" not in box, box.get("error")
    assert box["msg"]["task_id"] == "now"


def test_pop_with_a_wait_returns_none_after_it(broker: MemoryBroker) -> None:
    started = time.monotonic()
    assert broker.pop(W1, wait_s=0.05) is None
    assert time.monotonic() - started >= 0.04


# -- dispatching ---------------------------------------------------------------------------------
def test_set_dispatching_false_makes_pop_return_none_at_once(broker: MemoryBroker) -> None:
    tid = broker.push(msg())
    broker.set_dispatching(False)
    started = time.monotonic()
    assert broker.pop(W1, wait_s=10) is None
    assert time.monotonic() - started < 1
    assert broker.stats()["dispatching"] is False
    assert broker.queue_size() == 1  # nothing lost
    broker.set_dispatching(True)
    assert broker.pop(W1)["task_id"] == tid


def test_set_dispatching_false_releases_a_waiting_pop() -> None:
    b = MemoryBroker()
    box: dict[str, Any] = {"msg": "unset"}
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        box["msg"] = b.pop(W1, wait_s=20)

    t = threading.Thread(target=consume)
    started = time.monotonic()
    t.start()
    assert waiting.wait(5)
    b.set_dispatching(False)
    t.join(timeout=10)
    assert not t.is_alive()
    assert box["msg"] is None
    assert time.monotonic() - started < 10


# -- retries -------------------------------------------------------------------------------------
def test_failed_report_requeues_with_backoff_as_retrying(clock) -> None:
    b = retry_broker(clock)
    tid = b.push(msg())
    m = b.pop(W1)
    assert m["attempt"] == 1
    t0 = clock.now
    b.report(W1, (tid, "failed", {"reason": "error", "error": "boom", "traceback": "tb1"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING
    assert rec["attempts"] == 1
    assert t0 <= rec["eta"] <= t0 + 1.0  # full jitter below base * 2**0
    assert rec["error"] == "boom"
    assert b.stats()["retrying"] == 1
    clock.now = rec["eta"]
    m = b.pop(W1)
    assert m["task_id"] == tid and m["attempt"] == 2
    b.report(W1, (tid, "failed", {"reason": "error", "error": "boom2"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING
    assert clock.now <= rec["eta"] <= clock.now + 2.0  # base * 2**1


def test_task_that_fails_every_time_ends_dead_keeping_its_last_error(clock) -> None:
    b = retry_broker(clock, max_retries=2)
    tid = b.push(msg())
    for attempt in (1, 2, 3):
        clock.advance(10)  # past any backoff (cap 4)
        m = b.pop(W1)
        assert m is not None and m["attempt"] == attempt
        b.report(
            W1,
            (
                tid,
                "failed",
                {"reason": "error", "error": f"boom{attempt}", "traceback": f"Traceback {attempt}"},
            ),
        )
    rec = b.get_task(tid)
    assert rec["status"] == base.DEAD
    assert rec["attempts"] == 3
    assert rec["error"] == "boom3"
    assert rec["traceback"] == "Traceback 3"
    assert [e["error"] for e in rec["errors"]] == ["boom1", "boom2", "boom3"]
    clock.advance(1000)
    assert b.pop(W1) is None


def test_worker_lost_every_time_ends_dead_after_max_retries_plus_one(clock) -> None:
    """Attempts are counted at hand-out: a task that kills its worker cannot loop forever."""
    b = retry_broker(clock, max_retries=3)
    tid = b.push(msg())
    b.push(msg(task_id="other", priority=0))
    handed_out = 0
    for n in range(20):
        clock.advance(10)
        consumer = f"worker:{n}"
        m = b.pop(consumer)
        if m is None or m["task_id"] != tid:
            break
        handed_out += 1
        assert (
            b.release_consumer(
                consumer, base.REASON_WORKER_LOST, error=f"killed by signal 9 ({n})", exit_status=-9
            )
            == tid
        )
    assert handed_out == 4
    rec = b.get_task(tid)
    assert rec["status"] == base.DEAD
    assert rec["attempts"] == 4
    assert rec["error"] == "killed by signal 9 (3)"
    assert {e["reason"] for e in rec["errors"]} == {base.REASON_WORKER_LOST}
    assert rec["errors"][-1]["exit_status"] == -9
    assert m is not None and m["task_id"] == "other"  # the rest keep flowing


def test_invalid_goes_dead_at_once(clock) -> None:
    b = retry_broker(clock, max_retries=5)
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "invalid", {"error": "params: 'x' is required"}))
    rec = b.get_task(tid)
    assert rec["status"] == base.DEAD
    assert rec["attempts"] == 1
    assert rec["error"] == "params: 'x' is required"
    assert rec["errors"][-1]["reason"] == base.REASON_INVALID


def test_retry_with_delay_honours_the_delay(clock) -> None:
    b = retry_broker(clock, backoff_cap_s=1.0)
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "retry", {"error": "not yet", "delay": 30}))
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING
    assert rec["eta"] == clock.now + 30  # the handler's delay, not the (1 s) backoff cap
    assert rec["errors"][-1]["reason"] == base.REASON_RETRY
    clock.advance(29.9)
    assert b.pop(W1) is None
    clock.advance(0.1)
    m = b.pop(W1)
    assert m["task_id"] == tid and m["attempt"] == 2  # a Retry still counts


def test_zero_backoff_settings_retry_at_once(clock) -> None:
    b = MemoryBroker(
        clock=clock,
        default_options=TaskOptions(
            timeout_s=10, max_retries=1, backoff_base_s=0.0, backoff_cap_s=0.0
        ),
    )
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "x"}))
    assert b.get_task(tid)["eta"] is None or b.get_task(tid)["eta"] <= clock.now
    assert b.pop(W1)["task_id"] == tid


def test_max_retries_zero_means_one_attempt(clock) -> None:
    b = retry_broker(clock, max_retries=0)
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "once"}))
    assert b.get_task(tid)["status"] == base.DEAD


def test_shutdown_requeues_at_the_front_without_counting_the_attempt(clock) -> None:
    b = retry_broker(clock)
    a = b.push(msg(task_id="a"))
    b.push(msg(task_id="b"))
    assert b.pop(W1)["task_id"] == a
    assert b.release_consumer(W1, base.REASON_SHUTDOWN, error="killed by shutdown") == a
    rec = b.get_task(a)
    assert rec["status"] == base.QUEUED
    assert rec["attempts"] == 0
    assert rec["errors"] == []
    m = b.pop(W2)
    assert m["task_id"] == a and m["attempt"] == 1  # before "b", and still its first attempt


def test_retry_task_requeues_a_dead_task_with_attempts_reset(clock) -> None:
    b = retry_broker(clock, max_retries=0)
    tid = b.push(msg())
    b.pop(W1)
    b.report(W1, (tid, "failed", {"error": "first life"}))
    assert b.get_task(tid)["status"] == base.DEAD
    assert b.retry_task(tid) is True
    rec = b.get_task(tid)
    assert rec["status"] == base.QUEUED
    assert rec["attempts"] == 0
    assert [e["error"] for e in rec["errors"]] == ["first life"]  # history kept
    m = b.pop(W1)
    assert m["task_id"] == tid and m["attempt"] == 1
    ok(b, W1, m, result=42)
    assert b.get_task(tid)["status"] == base.SUCCEEDED
    assert b.get_task(tid)["result"] == 42


def test_retry_task_refuses_tasks_that_are_not_dead(broker: MemoryBroker) -> None:
    tid = broker.push(msg())
    assert broker.retry_task(tid) is False  # queued
    m = broker.pop(W1)
    assert broker.retry_task(tid) is False  # running
    ok(broker, W1, m)
    assert broker.retry_task(tid) is False  # succeeded
    assert broker.retry_task("no-such-task") is False


# -- push validation -----------------------------------------------------------------------------
def test_unknown_type_raises_naming_the_known_types(clock) -> None:
    b = MemoryBroker(clock=clock, task_types={"resize": TaskOptions(), "email": TaskOptions()})
    with pytest.raises(
        UnknownTaskType, match=r"'thumbnail' is not registered; known: email, resize"
    ):
        b.push(msg("thumbnail"))
    assert b.queue_size() == 0


def test_unknown_type_with_no_types_registered(clock) -> None:
    b = MemoryBroker(clock=clock, task_types={})
    with pytest.raises(UnknownTaskType, match=r"known: \(none\)"):
        b.push(msg("x"))


@pytest.mark.parametrize("prio", [-1, 11, 100, "5", 5.0, True, None.__class__])
def test_bad_priority_raises(broker: MemoryBroker, prio: object) -> None:
    with pytest.raises(TaskError, match="priority"):
        broker.push(msg(priority=prio))
    assert broker.queue_size() == 0


@pytest.mark.parametrize("prio", [0, 10])
def test_priority_bounds_are_inclusive(broker: MemoryBroker, prio: int) -> None:
    tid = broker.push(msg(priority=prio))
    assert broker.get_task(tid)["priority"] == prio


def test_oversize_params_raise(clock) -> None:
    b = MemoryBroker(clock=clock, max_payload_bytes=100)
    b.push(msg(params=b"x" * 100))
    with pytest.raises(TaskError, match="101 bytes pickled; the limit is 100"):
        b.push(msg(params=b"x" * 101))
    assert b.queue_size() == 1


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("not a dict", "must be a dict"),
        ({"params": b""}, "'type' must be a non-empty string"),
        ({"type": "", "params": b""}, "'type' must be a non-empty string"),
        ({"type": "t", "params": {"a": 1}}, "pickled"),
        ({"type": "t", "params": b"", "task_id": 7}, "task_id must be a string"),
        ({"type": "t", "params": b"", "task_id": "x" * 201}, "task_id must be a string"),
        ({"type": "t", "params": b"", "eta": "tomorrow"}, "eta must be epoch seconds"),
        ({"type": "t", "params": b"", "eta": True}, "eta must be epoch seconds"),
        ({"type": "t", "params": b"", "eta": float("nan")}, "eta"),
        ({"type": "t", "params": b"", "eta": float("inf")}, "eta"),
        ({"type": "t", "params": b"", "delay": -1}, "delay"),
        ({"type": "t", "params": b"", "delay": "5"}, "delay"),
    ],
)
def test_malformed_messages_raise(broker: MemoryBroker, message: Any, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        broker.push(message)
    assert broker.stats()["by_status"] == {}


def test_duplicate_live_task_id_raises(broker: MemoryBroker) -> None:
    broker.push(msg(task_id="dup"))
    with pytest.raises(TaskError, match="'dup' is already queued"):
        broker.push(msg(task_id="dup"))
    m = broker.pop(W1)
    with pytest.raises(TaskError, match="'dup' is already running"):
        broker.push(msg(task_id="dup"))
    ok(broker, W1, m)
    assert broker.push(msg(task_id="dup")) == "dup"  # a finished id may be used again
    assert broker.get_task("dup")["status"] == base.QUEUED


def test_push_many_is_all_or_none(broker: MemoryBroker) -> None:
    broker.push(msg(task_id="live"))
    with pytest.raises(TaskError, match="same task_id twice"):
        broker.push_many([msg(task_id="x"), msg(task_id="x")])
    with pytest.raises(TaskError, match="'live' is already queued"):
        broker.push_many([msg(task_id="y"), msg(task_id="live")])
    with pytest.raises(TaskError, match="priority"):
        broker.push_many([msg(task_id="z"), msg(priority=11)])
    with pytest.raises(TaskError, match="list"):
        broker.push_many(msg())  # type: ignore[arg-type]
    assert broker.queue_size() == 1
    assert broker.get_task("y") is None
    assert broker.push_many([msg(task_id="y"), msg(task_id="z")]) == ["y", "z"]
    assert broker.queue_size() == 3


def test_auto_ids_are_unique(broker: MemoryBroker) -> None:
    ids = {broker.push(msg()) for _ in range(200)}
    assert len(ids) == 200


def test_get_task_of_an_unknown_id_is_none(broker: MemoryBroker) -> None:
    assert broker.get_task("nope") is None


# -- consumers and reports -----------------------------------------------------------------------
def test_a_consumer_holding_a_task_must_report_it_first(broker: MemoryBroker) -> None:
    broker.push(msg(task_id="a"))
    broker.push(msg(task_id="b"))
    broker.pop(W1)
    with pytest.raises(TaskError, match="'worker:1' still holds task 'a'"):
        broker.pop(W1)
    assert broker.exchange(W1, ("a", base.SUCCEEDED, None), 0)["task_id"] == "b"
    assert broker.get_task("a")["status"] == base.SUCCEEDED
    assert broker.held() == {W1: "b"}


def test_reports_from_a_consumer_that_does_not_hold_the_task_are_ignored(
    broker: MemoryBroker,
) -> None:
    tid = broker.push(msg())
    broker.pop(W1)
    broker.report(W2, (tid, base.SUCCEEDED, "forged"))
    broker.report(W1, ("other-id", base.SUCCEEDED, None))
    rec = broker.get_task(tid)
    assert rec["status"] == base.RUNNING and rec["consumer"] == W1


def test_release_of_an_idle_consumer_is_a_no_op(broker: MemoryBroker) -> None:
    assert broker.release_consumer(W1, base.REASON_WORKER_LOST) is None


# -- leases --------------------------------------------------------------------------------------
def test_lease_of_an_external_consumer_expires_via_maintain(clock) -> None:
    b = retry_broker(clock, timeout_s=10.0)
    tid = b.push(msg())
    consumer = "client:host:123:abc:0"
    b.pop(consumer)
    lease_end = clock.now + 10.0 + LEASE_GRACE_S
    clock.now = lease_end - 0.5
    assert b.maintain()["leases_expired"] == 0
    assert b.get_task(tid)["status"] == base.RUNNING
    clock.now = lease_end
    assert b.maintain()["leases_expired"] == 1
    rec = b.get_task(tid)
    assert rec["status"] == base.RETRYING
    assert rec["errors"][-1]["reason"] == base.REASON_TIMEOUT
    assert consumer in rec["error"]
    assert b.held() == {}
    b.report(consumer, (tid, base.SUCCEEDED, None))  # too late: ignored
    assert b.get_task(tid)["status"] == base.RETRYING


def test_worker_consumers_have_no_broker_lease(clock) -> None:
    b = retry_broker(clock, timeout_s=10.0)
    tid = b.push(msg())
    b.pop(W1)  # the master enforces a worker's deadline, not the broker
    clock.advance(10**6)
    assert b.maintain()["leases_expired"] == 0
    assert b.get_task(tid)["status"] == base.RUNNING


# -- stats and records ---------------------------------------------------------------------------
def test_stats_counts(clock) -> None:
    b = retry_broker(clock)
    b.push(msg(task_id="q1", priority=2))
    clock.advance(5)
    b.push(msg(task_id="q2", priority=2))
    b.push(msg(task_id="q3", priority=9))
    b.push(msg(task_id="later", eta=clock.now + 100))
    b.push(msg(task_id="run", priority=10))
    b.pop(W1)  # "run"
    b.push(msg(task_id="fail", priority=10))
    b.pop(W2)
    b.set_public("k1", b"v")
    b.set_public("k2", b"v", ttl=1)
    clock.advance(1)
    b.report(W2, ("fail", "failed", {"error": "x"}))  # retrying for up to 1 s
    s = b.stats()
    assert s["queued"] == 3
    assert s["by_priority"] == {2: 2, 9: 1}
    assert s["oldest_age_s"][2] == pytest.approx(6.0)
    assert s["oldest_age_s"][9] == pytest.approx(1.0)
    assert s["scheduled"] == 1
    assert s["retrying"] == 1
    assert s["running"] == 1
    assert s["by_status"] == {"queued": 3, "scheduled": 1, "retrying": 1, "running": 1}
    assert s["store_keys"] == 1
    assert s["dispatching"] is True
    assert s["counters"][("pushed", "t", "")] == 6
    assert s["counters"][("started", "t", "")] == 2
    assert s["counters"][("retried", "t", "error")] == 1
    assert b.queue_size() == 3


def test_finished_records_are_capped_oldest_first(clock) -> None:
    b = MemoryBroker(clock=clock, finished_records=2)
    for name in ("a", "b", "c"):
        b.push(msg(task_id=name))
        ok(b, W1, b.pop(W1))
    assert b.get_task("a") is None
    assert [b.get_task(n)["status"] for n in ("b", "c")] == [base.SUCCEEDED] * 2
    assert b.stats()["by_status"] == {"succeeded": 2}


def test_drain_events_reports_start_latency_and_outcomes(clock) -> None:
    b = MemoryBroker(clock=clock)
    tid = b.push(msg())
    clock.advance(2)
    b.pop(W1)
    clock.advance(3)
    ok(b, W1, {"task_id": tid})
    assert b.drain_events() == [("started", "t", "", 2.0), ("finished", "t", "succeeded", 3.0)]
    assert b.drain_events() == []


def test_configure_changes_the_known_types(clock) -> None:
    b = MemoryBroker(clock=clock)
    b.push(msg("anything"))
    b.configure({"a": TaskOptions()}, max_payload_bytes=10)
    with pytest.raises(UnknownTaskType):
        b.push(msg("anything"))
    with pytest.raises(TaskError, match="limit is 10"):
        b.push(msg("a", params=b"x" * 11))
    b.configure(None)
    b.push(msg("anything-again"))


def test_store_is_served_by_the_broker(broker: MemoryBroker, clock) -> None:
    broker.set_public("k", b"v", ttl=10)
    assert broker.get_public("k") == b"v"
    assert broker.list_keys() == ["k"]
    clock.advance(10)
    assert broker.get_public("k") is None
    broker.set_public("a", b"1", ttl=1)
    broker.set_public("b", b"1")
    clock.advance(1)
    assert broker.maintain()["keys_expired"] == 1
    assert broker.get_store_size() == 1
    assert broker.delete_public("b") is True
    broker.set_public("c", b"")
    broker.clear_store()
    assert broker.list_keys() == []
    assert broker.ping() == "pong"


def test_retry_refuses_a_task_whose_unique_key_is_held_again() -> None:
    b = MemoryBroker()
    first = b.push({"type": "t", "params": b"", "unique_key": "k"})
    m = b.pop("worker:0:1")
    b.report("worker:0:1", (m["task_id"], "invalid", {"error": "no"}))
    second = b.push({"type": "t", "params": b"", "unique_key": "k"})
    assert second != first
    assert not b.retry_task(first)  # two live tasks must never share a unique key
    assert b.get_task(first)["status"] == "dead"
