"""QueueManager on our Redis broker: what a push stores (a task a supervised node can run), a
pulled task never acknowledged coming back after its lease, release, clear of retrying tasks,
and Redis down at push time."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest

from supervisor.broker.redis import RedisBroker
from supervisor.errors import DuplicateTaskId
from supervisor.queuemanager import QueueBackend, QueueManager, redisqueue
from supervisor.registry import TaskOptions
from tests.helpers import wait_until
from tests.qm_support import LogCapture, QueueSpec, closed_port, spec_for

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def spec() -> Iterator[QueueSpec]:
    yield from spec_for(QueueBackend.REDIS)


def test_a_push_is_a_task_of_the_queues_type_with_pickled_params(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.push("m1", {"audio_files": ["a.wav"]}, 8)
    broker = RedisBroker(url=spec.url, prefix=spec.prefix)
    try:
        rec = broker.get_task("m1")
        assert rec is not None
        assert rec["type"] == spec.queue_name
        assert rec["status"] == "queued"
        assert rec["priority"] == 8
        assert pickle.loads(rec["params"]) == {"audio_files": ["a.wav"]}
        # the seed's consumer path sees it too (what a supervised node's worker gets)
        msg = broker.pop("worker:1", 0)
        assert msg is not None and msg["task_id"] == "m1" and msg["type"] == spec.queue_name
    finally:
        broker.close()


def test_a_task_id_still_queued_is_refused(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.push("same", {}, 1)
    with pytest.raises(DuplicateTaskId):
        queue.push("same", {}, 1)


def test_a_pulled_task_never_acknowledged_comes_back_after_its_lease(
    spec: QueueSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a lease of 0.3 s: the type's timeout, with no grace
    monkeypatch.setattr("supervisor.broker.redis.core.LEASE_GRACE_S", 0.0)
    monkeypatch.setattr(redisqueue, "RECOVER_EVERY_S", 0.0)
    opts = TaskOptions(timeout_s=0.3, max_retries=3, backoff_base_s=0.01, backoff_cap_s=0.05)
    broker = RedisBroker(url=spec.url, prefix=spec.prefix, default_options=opts, lease_s=1.0)
    try:
        first = spec.manager(broker=broker)
        assert first.push("lost", {"n": 1}, 5)
        assert first.pull(timeout=1) is not None  # and never acknowledged
        second = spec.manager(broker=broker)
        message = wait_until(lambda: second.pull(timeout=0.1), what="the task to come back")
        assert message == {"task_id": "lost", "data": {"n": 1}, "priority": 5}
        assert second.task_done("lost")
        assert first.task_done("lost") is False  # its lease was lost: refused, logged
        rec = broker.get_task("lost")
        assert rec is not None and rec["status"] == "succeeded" and rec["attempts"] == 2
    finally:
        broker.close()


def test_release_gives_a_task_back_uncounted(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.push("r", {}, 5)
    assert queue.pull(timeout=1) is not None
    assert queue.release("r")
    assert queue.get_queue_length() == 1
    message = queue.pull(timeout=1)
    assert message is not None and message["task_id"] == "r"
    assert queue.task_done("r")


def test_clear_cancels_queued_and_retrying_tasks(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.push_many([("a", {}, 1), ("b", {}, 2), ("c", {}, 3)])
    assert queue.pull(timeout=1) is not None  # c
    assert queue.task_failed("c", "transient")  # retrying, under the backoff
    assert queue.clear() == 3
    assert queue.get_queue_length() == 0
    assert queue.pull(timeout=0.2) is None


def test_push_while_redis_is_down_returns_false_and_logs_why() -> None:
    logs = LogCapture()
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/0"
        queue = QueueManager(backend=QueueBackend.REDIS, redis_url=url, queue_name="q")
        assert queue.push("x", {}, 5) is False
        assert queue.push_many([("y", {}, 5)]) is False
        assert queue.pull(timeout=0.1) is None
        text = logs.text()
        assert "push of task 'x' not accepted" in text and "cannot reach Redis" in text
        assert "s3cret-pw" not in text
        queue.close()
    finally:
        logs.close()


def test_a_queue_no_node_registered_is_still_pushed_for_its_own_consumer(spec: QueueSpec) -> None:
    node = RedisBroker(url=spec.url, prefix=spec.prefix)
    try:
        node.configure({"other": TaskOptions(timeout_s=10.0)})  # a node published its types
        queue = spec.manager()
        assert queue.push("m1", {"n": 1}, 5)  # the document's own pull() consumes it
        msg = queue.pull(timeout=5)
        assert msg is not None and msg["task_id"] == "m1"
        assert queue.task_done("m1")
    finally:
        node.close()
