"""The seed's API through ``supervisor.MemoryQueue``: client-side pickling, in-process broker."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

import supervisor
from supervisor.broker import base
from supervisor.client.queue import build_message
from supervisor.errors import PayloadError, StoreError, TaskError, UnknownTaskType
from supervisor.registry import TaskOptions

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def q(clock) -> supervisor.MemoryQueue:
    return supervisor.MemoryQueue(clock=clock)


# -- the seed's examples -------------------------------------------------------------------------
def test_seed_push_with_an_auto_id_pop_and_task_done(q: supervisor.MemoryQueue) -> None:
    task_id = q.push_task(
        {
            "type": "download_audio",
            "params": {"url": "https://example.com/song.mp3", "save_path": "/music/song.mp3"},
        }
    )
    assert uuid.UUID(task_id)  # a generated UUID
    assert q.get_queue_size() == 1 and not q.is_empty()
    task = q.pop_task(timeout=3)
    assert task is not None
    assert task["task_id"] == task_id
    assert task["type"] == "download_audio"
    assert task["params"] == {"url": "https://example.com/song.mp3", "save_path": "/music/song.mp3"}
    assert task["attempt"] == 1
    assert q.is_empty()
    q.task_done()  # the seed's call: no argument, the task this thread popped last
    assert q.get_task(task_id)["status"] == base.SUCCEEDED
    assert q.stats()["running"] == 0


def test_seed_push_with_a_custom_id(q: supervisor.MemoryQueue) -> None:
    task_id = q.push_task(
        {
            "task_id": "my-custom-id",
            "type": "convert_format",
            "params": {"input": "song.mp3", "output": "song.flac"},
        }
    )
    assert task_id == "my-custom-id"
    rec = q.get_task("my-custom-id")
    assert rec["status"] == base.QUEUED
    assert rec["params"] == {"input": "song.mp3", "output": "song.flac"}


def test_seed_store_examples_with_ttl(q: supervisor.MemoryQueue, clock) -> None:
    q.set_public("api_key", "your_api_key")
    q.set_public("session_token", "token123", ttl=60)
    assert q.get_public("api_key") == "your_api_key"
    assert q.get_public("session_token") == "token123"
    assert q.list_keys() == ["api_key", "session_token"]
    assert q.get_store_size() == 2
    clock.advance(60)
    assert q.get_public("session_token") is None
    assert q.get_public("session_token", "fallback") == "fallback"
    assert q.list_keys() == ["api_key"]
    assert q.delete_public("session_token") is False
    assert q.delete_public("api_key") is True
    assert q.get_store_size() == 0


def test_cleanup_and_clear_store(q: supervisor.MemoryQueue, clock) -> None:
    q.set_public("a", 1, ttl=1)
    q.set_public("b", 2, ttl=1)
    q.set_public("c", [3])
    clock.advance(1)
    assert q.cleanup() == 2
    assert q.get_public("c") == [3]
    q.clear_store()
    assert q.get_store_size() == 0
    assert q.list_keys() == []


def test_pop_on_an_empty_queue_returns_none(q: supervisor.MemoryQueue) -> None:
    assert q.pop_task(timeout=0) is None
    q.task_done()  # nothing popped: a no-op, as the seed's was
    assert q.is_empty()


# -- tasks ---------------------------------------------------------------------------------------
def test_priority_and_fifo_through_the_client(q: supervisor.MemoryQueue) -> None:
    q.push_task({"task_id": "low", "type": "t"}, priority=1)
    q.push_task({"task_id": "high-1", "type": "t", "priority": 9})
    q.push_task({"task_id": "high-2", "type": "t"}, priority=9)
    order = []
    while (task := q.pop_task(timeout=0)) is not None:
        order.append(task["task_id"])
        q.task_done(task["task_id"])
    assert order == ["high-1", "high-2", "low"]


def test_delay_uses_the_brokers_clock(q: supervisor.MemoryQueue, clock) -> None:
    task_id = q.push_task({"type": "t", "params": {}}, delay=30)
    assert q.get_queue_size() == 0
    assert q.get_task(task_id)["status"] == base.SCHEDULED
    clock.advance(29.5)
    assert q.pop_task(timeout=0) is None
    clock.advance(0.5)
    task = q.pop_task(timeout=0)
    assert task is not None and task["task_id"] == task_id


def test_delay_key_and_eta_key(q: supervisor.MemoryQueue, clock) -> None:
    a = q.push_task({"type": "t", "delay": 10})
    b = q.push_task({"type": "t", "eta": clock.now + 20})
    clock.advance(10)
    assert q.pop_task(timeout=0)["task_id"] == a
    q.task_done()
    assert q.pop_task(timeout=0) is None
    clock.advance(10)
    assert q.pop_task(timeout=0)["task_id"] == b


def test_push_tasks_in_one_batch(q: supervisor.MemoryQueue) -> None:
    ids = q.push_tasks([{"type": "t", "params": {"i": i}} for i in range(5)])
    assert len(set(ids)) == 5
    assert q.get_queue_size() == 5
    assert [q.pop_task(timeout=0)["params"]["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.push_tasks([]) == []


def test_task_failed_retries_or_kills(clock) -> None:
    q = supervisor.MemoryQueue(clock=clock, task_types={"t": TaskOptions(max_retries=1)})
    a = q.push_task({"type": "t"})
    q.pop_task(timeout=0)
    q.task_failed(error="flaky")
    rec = q.get_task(a)
    assert rec["status"] == base.RETRYING and rec["error"] == "flaky"
    b = q.push_task({"type": "t"})
    q.pop_task(timeout=0)
    q.task_failed(b, error="bad params", retry=False)
    assert q.get_task(b)["status"] == base.DEAD
    assert q.retry_task(b) is True
    assert q.get_task(b)["status"] == base.QUEUED


def test_task_done_of_a_task_not_popped_here_raises(q: supervisor.MemoryQueue) -> None:
    task_id = q.push_task({"type": "t"})
    with pytest.raises(TaskError, match=f"{task_id!r} was not popped by this client"):
        q.task_done(task_id)
    q.pop_task(timeout=0)
    q.task_done(task_id, result={"ok": True})
    assert q.get_task(task_id)["result"] == {"ok": True}
    with pytest.raises(TaskError, match="not popped"):
        q.task_done(task_id)  # twice


def test_task_done_without_argument_is_per_thread(q: supervisor.MemoryQueue) -> None:
    q.push_task({"task_id": "main", "type": "t"})
    q.push_task({"task_id": "side", "type": "t"})
    assert q.pop_task(timeout=0)["task_id"] == "main"
    errors: list[BaseException] = []

    def side() -> None:
        try:
            assert q.pop_task(timeout=0)["task_id"] == "side"
            q.task_done()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=side)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and errors == []
    assert q.get_task("side")["status"] == base.SUCCEEDED
    assert q.get_task("main")["status"] == base.RUNNING
    q.task_done()
    assert q.get_task("main")["status"] == base.SUCCEEDED


def test_several_client_consumers_may_hold_tasks_at_once(q: supervisor.MemoryQueue) -> None:
    for i in range(3):
        q.push_task({"task_id": f"t{i}", "type": "t"})
    tasks = [q.pop_task(timeout=0) for _ in range(3)]
    assert [t["task_id"] for t in tasks] == ["t0", "t1", "t2"]
    assert q.stats()["running"] == 3
    for t in tasks:
        q.task_done(t["task_id"])
    assert q.stats()["by_status"] == {"succeeded": 3}


def test_pop_task_waits_for_a_push_from_another_thread(q: supervisor.MemoryQueue) -> None:
    got: dict[str, Any] = {}
    waiting = threading.Event()

    def consume() -> None:
        waiting.set()
        got["task"] = q.pop_task(timeout=10)

    t = threading.Thread(target=consume)
    t.start()
    assert waiting.wait(5)
    task_id = q.push_task({"type": "t", "params": {"x": 1}})
    t.join(timeout=10)
    assert not t.is_alive()
    assert got["task"]["task_id"] == task_id and got["task"]["params"] == {"x": 1}


def test_get_task_of_an_unknown_id_is_none(q: supervisor.MemoryQueue) -> None:
    assert q.get_task("no-such-id") is None
    assert q.get_task_state("no-such-id") is None


def test_unknown_type_is_refused_naming_known_types(clock) -> None:
    q = supervisor.MemoryQueue(clock=clock, task_types={"a": TaskOptions(), "b": TaskOptions()})
    with pytest.raises(UnknownTaskType, match="'c' is not registered; known: a, b"):
        q.push_task({"type": "c"})


@pytest.mark.parametrize(
    ("task", "kwargs", "match"),
    [
        ("download", {}, "must be a dict"),
        ({"params": {}}, {}, "'type' must be a non-empty string"),
        ({"type": "t", "prio": 3}, {}, r"unknown task key\(s\) \['prio'\]"),
        ({"type": "t"}, {"priority": 11}, "priority must be from 0 to 10, got 11"),
        ({"type": "t", "priority": "high"}, {}, "priority must be an integer"),
        ({"type": "t"}, {"delay": -1}, "delay must be a number of seconds >= 0, got -1"),
        ({"type": "t"}, {"delay": "5"}, "delay must be"),
        ({"type": "t"}, {"delay": float("nan")}, "delay must be"),
        ({"type": "t", "eta": "soon"}, {}, "eta must be epoch seconds"),
    ],
)
def test_bad_tasks_are_refused(
    q: supervisor.MemoryQueue, task: Any, kwargs: dict, match: str
) -> None:
    with pytest.raises(TaskError, match=match):
        q.push_task(task, **kwargs)
    assert q.stats()["by_status"] == {}


def test_oversize_params_raise_before_reaching_the_broker(q: supervisor.MemoryQueue) -> None:
    q.max_payload_bytes = 1000
    with pytest.raises(
        PayloadError,
        match=r"params of task type 't' is \d+ bytes pickled; "
        r"the limit is 1000",
    ):
        q.push_task({"type": "t", "params": {"blob": "x" * 2000}})
    assert q.get_queue_size() == 0
    q.push_task({"type": "t", "params": {"blob": "x" * 100}})
    assert q.get_queue_size() == 1


def test_build_message_pickles_params() -> None:
    msg = build_message({"type": "t", "params": {"a": 1}, "task_id": "x"}, priority=3)
    assert isinstance(msg["params"], bytes)
    assert msg["task_id"] == "x" and msg["priority"] == 3


# -- store values --------------------------------------------------------------------------------
def test_any_picklable_value_round_trips(q: supervisor.MemoryQueue) -> None:
    values = {
        "str": "s",
        "int": 1,
        "none_in_list": [None],
        "dict": {"a": (1, 2)},
        "bytes": b"\x00\xff",
        "set": {1, 2},
    }
    for key, value in values.items():
        q.set_public(key, value)
    assert {k: q.get_public(k) for k in values} == values


def test_lambdas_round_trip_as_store_values(q: supervisor.MemoryQueue) -> None:
    base_price = 10
    q.set_public("double", lambda x: x * 2)
    q.set_public("price", lambda n: n * base_price)
    assert q.get_public("double")(21) == 42
    assert q.get_public("price")(3) == 30


def test_unpicklable_value_raises_naming_the_key(q: supervisor.MemoryQueue) -> None:
    with pytest.raises(PayloadError, match="value of store key 'gen' cannot be pickled"):
        q.set_public("gen", (i for i in range(3)))
    assert q.get_store_size() == 0


def test_bad_store_key_or_ttl_raises(q: supervisor.MemoryQueue) -> None:
    with pytest.raises(StoreError, match="got ''"):
        q.set_public("", 1)
    with pytest.raises(StoreError, match="got -5"):
        q.set_public("k", 1, ttl=-5)


def test_background_sweep_removes_expired_keys(clock) -> None:
    q = supervisor.MemoryQueue(cleanup_interval=0.01, clock=clock)
    q.set_public("short", 1, ttl=5)
    q.set_public("long", 2)
    clock.advance(5)
    q.start_cleanup()
    try:
        deadline = time.monotonic() + 10
        while "short" in q.broker.store._data:  # swept from memory, not only hidden
            assert time.monotonic() < deadline, "the sweeper never ran"
            time.sleep(0.005)
    finally:
        q.stop_cleanup()
    assert q.list_keys() == ["long"]
    assert q._sweeper is None


@pytest.mark.parametrize(
    ("task", "kwargs", "match"),
    [
        ({"type": "t", "params": [1, 2]}, {}, "params must be a dict"),
        ({"type": "t", "params": "text"}, {}, "params must be a dict"),
        ({"type": "t", "task_id": ""}, {}, "task_id must be a non-empty string"),
        ({"type": "t"}, {"delay": 1e12}, "more than 10 years"),
        ({"type": "t", "delay": float("inf")}, {}, "delay must be"),
    ],
)
def test_bad_tasks_from_the_python_api_are_refused(
    q: supervisor.MemoryQueue, task: dict[str, Any], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(TaskError, match=match):
        q.push_task(task, **kwargs)
    assert q.get_queue_size() == 0


def test_the_broker_refuses_an_empty_task_id_and_a_far_delay(q: supervisor.MemoryQueue) -> None:
    with pytest.raises(TaskError, match="not empty"):
        q.broker.push({"type": "t", "params": b"", "task_id": ""})
    with pytest.raises(TaskError, match="10 years"):
        q.broker.push({"type": "t", "params": b"", "delay": 4e8})
