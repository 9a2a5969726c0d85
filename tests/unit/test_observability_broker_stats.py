"""MemoryBroker's scrape-time accessors: O(priorities) stats that match a full walk, failed-attempt
counters, the scheduler's published status, and the master's."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.errors import TaskError
from supervisor.registry import PRIORITY_MAX, TaskOptions

pytestmark = pytest.mark.timeout(60)


def msg(task_type: str = "t", **kw: Any) -> dict[str, Any]:
    return {"type": task_type, "params": b"p", **kw}


def walked(b: MemoryBroker) -> dict[str, Any]:
    """What stats() reported before it kept counts: a walk over every record and lane entry."""
    now = b._clock()
    by_priority: dict[int, int] = {}
    oldest: dict[int, float] = {}
    for prio in range(11):
        lanes = [lanes[prio] for lanes in b.core.ready.values()]
        live = [b.core.active[t] for lane in lanes for t, s in lane if b.core.live(t, s)]
        if live:
            by_priority[prio] = len(live)
            oldest[prio] = now - min(r.ready_at or now for r in live)
    counts = Counter(r.status for r in b.core.active.values())
    counts.update(r.status for r in b.core.finished.values())
    return {
        "by_priority": by_priority,
        "oldest_age_s": oldest,
        "by_status": dict(counts),
        "queued": sum(by_priority.values()),
    }


def check(b: MemoryBroker) -> None:
    s = b.stats()
    want = walked(b)  # after stats(): it promotes due tasks first
    for key, value in want.items():
        assert s[key] == (pytest.approx(value) if key == "oldest_age_s" else value), key
    assert b.queue_size() == want["queued"]


def test_kept_counts_match_a_full_walk_through_random_operations(clock) -> None:
    rng = random.Random(1234)
    opts = TaskOptions(max_retries=2, backoff_base_s=1.0, backoff_cap_s=3.0, timeout_s=5.0)
    b = MemoryBroker(clock=clock, rng=random.Random(0), task_types={"t": opts}, finished_records=25)
    consumers = [f"worker:{i}" for i in range(4)] + ["ext:1"]
    for step in range(3000):
        op = rng.random()
        c = rng.choice(consumers)
        held = b.held().get(c)
        if op < 0.35:
            extra = {"eta": clock.now + rng.uniform(0, 4)} if rng.random() < 0.2 else {}
            b.push(msg(priority=rng.randint(0, PRIORITY_MAX), **extra))
        elif op < 0.55 and held is None:
            b.pop(c)
        elif op < 0.75 and held is not None:
            outcome = rng.choice([base.SUCCEEDED, "failed", "retry", "invalid"])
            detail: Any = None if outcome == base.SUCCEEDED else {"error": "x", "delay": 0.5}
            if outcome == "failed" and rng.random() < 0.5:
                detail = {"error": "x"}  # backoff from the policy
            b.report(c, (held, outcome, detail))
        elif op < 0.82 and held is not None:
            b.release_consumer(c, rng.choice([base.REASON_SHUTDOWN, base.REASON_WORKER_LOST]))
        elif op < 0.86:
            dead = [t for t, r in b.core.finished.items() if r.status == base.DEAD]
            if dead:
                b.retry_task(rng.choice(dead))
        elif op < 0.90:
            b.maintain()
        else:
            clock.advance(rng.uniform(0, 2))
        if step % 7 == 0:
            check(b)
    check(b)
    assert sum(b.stats()["by_status"].values()) == len(b.core.active) + len(b.core.finished)


def test_oldest_age_sees_tasks_put_back_at_the_front(clock) -> None:
    b = MemoryBroker(clock=clock)
    b.push(msg(task_id="old", priority=3))
    clock.advance(10)
    b.push(msg(task_id="running", priority=3))
    b.pop("worker:1")  # "old"
    b.pop("worker:2")  # "running"
    clock.advance(5)
    b.push(msg(task_id="new", priority=3))
    clock.advance(1)
    b.release_consumer("worker:1", base.REASON_SHUTDOWN)  # "old" goes back at the front, now
    assert b.stats()["oldest_age_s"][3] == pytest.approx(1.0)  # "new" waits longest
    clock.advance(2)
    b.release_consumer("worker:2", base.REASON_SHUTDOWN)
    assert b.stats()["oldest_age_s"][3] == pytest.approx(3.0)
    assert b.stats()["by_priority"] == {3: 3}
    assert [b.pop(f"w{i}")["task_id"] for i in range(3)] == ["running", "old", "new"]
    assert b.stats()["by_priority"] == {} and b.core.front_seqs == set()


def test_stale_lane_heads_are_dropped_by_stats(clock) -> None:
    b = MemoryBroker(clock=clock)
    b.push(msg(task_id="a"))
    b.pop("worker:1")
    b.release_consumer("worker:1", base.REASON_SHUTDOWN)
    clock.advance(4)
    b.push(msg(task_id="b"))
    b.pop("worker:1")  # "a" (front) again; the lane holds "b" only
    assert b.stats()["oldest_age_s"] == {5: 0.0}
    assert len(b.core.ready["default"][5]) == 1


def test_stats_cost_does_not_grow_with_the_number_of_records(clock) -> None:
    b = MemoryBroker(clock=clock, finished_records=60_000)
    b.push_many([msg(priority=i % 11) for i in range(60_000)])
    for i in range(30_000):
        b.report("worker:1", (b.pop("worker:1")["task_id"], base.SUCCEEDED, None))
        if i % 1000 == 0:
            clock.advance(1)
    best = min(_timed(b.stats) for _ in range(20))
    assert b.stats()["queued"] == 30_000
    assert best < 0.002, f"stats() took {best * 1000:.2f} ms with 60,000 records"
    assert min(_timed(b.queue_size) for _ in range(20)) < 0.002


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_failed_attempts_are_counted_by_reason_but_not_shutdowns(clock) -> None:
    b = MemoryBroker(clock=clock, task_types={"t": TaskOptions(max_retries=1, backoff_base_s=0)})
    b.push(msg(task_id="x"))
    b.pop("worker:1")
    b.release_consumer("worker:1", base.REASON_SHUTDOWN)
    b.pop("worker:1")
    b.report("worker:1", ("x", "failed", {"error": "boom"}))
    b.pop("worker:1")
    b.release_consumer("worker:1", base.REASON_WORKER_LOST)
    c = b.stats()["counters"]
    assert c[("failed", "t", "error")] == 1
    assert c[("failed", "t", "worker_lost")] == 1
    assert ("failed", "t", "shutdown") not in c
    assert c[("retried", "t", "error")] == 1
    assert c[("finished", "t", "dead")] == 1


def test_master_status_and_dispatching_accessors(clock) -> None:
    b = MemoryBroker(clock=clock, task_types={"b": TaskOptions(), "a": TaskOptions()})
    assert b.master_status() == {}
    b.publish_status({"state": "running", "workers": []})
    assert b.master_status()["state"] == "running"
    assert b.dispatching() is True
    b.set_dispatching(False)
    assert b.dispatching() is False
    assert b.known_task_types() == ["a", "b"]
    assert MemoryBroker(clock=clock).known_task_types() == []


def test_scheduler_status_is_kept_with_its_age(clock) -> None:
    b = MemoryBroker(clock=clock)
    assert b.scheduler_status() == ({}, None)
    b.publish_scheduler_status({"state": "running", "counters": {"fired": 4}})
    clock.advance(3)
    doc, age = b.scheduler_status()
    assert doc == {"state": "running", "counters": {"fired": 4}}
    assert age == pytest.approx(3.0)
    with pytest.raises(TaskError, match="must be a dict"):
        b.publish_scheduler_status([1, 2])  # type: ignore[arg-type]


def test_counts_survive_records_put_in_place_or_removed_directly(clock) -> None:
    """What the durable broker does: recovery adds a running record then fails it; a purge
    deletes finished records; retry_task of an evicted record puts it back first."""
    opts = TaskOptions(max_retries=3, backoff_base_s=0.0, backoff_cap_s=0.0)
    b = MemoryBroker(clock=clock, task_types={"t": opts}, finished_records=2)
    b.push(msg(task_id="q"))
    recovered = b.core.record(msg(task_id="r"))
    recovered.status = base.RUNNING
    recovered.attempts = 1
    with b.lock:
        b.core.active["r"] = recovered
        b.core.fail(recovered, base.REASON_WORKER_LOST, {"error": "master stopped"}, clock.now)
    check(b)
    for name in ("a", "b", "c"):
        b.push(msg(task_id=name, priority=10))
        t = b.pop("worker:1")
        b.report("worker:1", (t["task_id"], "invalid", {"error": "no"}))
    del b.core.finished["c"]  # purged
    check(b)
    evicted = b.core.record(msg(task_id="a"))
    evicted.status = base.DEAD
    b.core.finished["a"] = evicted  # brought back from the journal
    assert b.retry_task("a") is True
    check(b)
    assert b.stats()["by_status"] == {"queued": 3, "dead": 1}


def test_a_task_cancelled_while_it_waited_has_no_duration(clock) -> None:
    b = MemoryBroker(clock=clock, task_types={"t": TaskOptions(max_retries=1, backoff_base_s=9)})
    ran_once = b.push(msg())
    never_ran = b.push(msg())
    b.pop("worker:1")
    b.report("worker:1", (ran_once, "failed", {"error": "x"}))  # now retrying
    b.drain_events()
    clock.advance(5)
    assert b.cancel(ran_once) == base.CANCELLED
    assert b.cancel(never_ran) == base.CANCELLED
    assert b.drain_events() == []
    assert b.stats()["counters"][("finished", "t", "cancelled")] == 2
