"""The user's document's QueueManager examples, as written, on Redis and on RabbitMQ (real
servers; skipped without them, failing under CI), plus the argument checks and batch push."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.errors import TaskError
from supervisor.queuemanager import QueueBackend, QueueManager
from tests.qm_support import ROOT, QueueSpec, spec_for

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=[QueueBackend.REDIS, QueueBackend.RABBITMQ], ids=["redis", "rabbitmq"])
def spec(request: pytest.FixtureRequest) -> Iterator[QueueSpec]:
    yield from spec_for(request.param)


def process_task(task_id: str, task_data: Any) -> None:
    """The document's process_task: nothing to do here."""


def test_the_documents_push_and_pull_example(spec: QueueSpec) -> None:
    queue = spec.manager()

    # -- the document's "推送任务" example, as written
    task_id = "task_123"
    task_data = {
        "audio_files": ["meeting.wav"],
        "meeting_type": "weekly_sync",
    }
    priority = 5  # 0-10, 数字越大优先级越高

    success = queue.push(task_id, task_data, priority)
    assert success is True

    # -- the document's "拉取任务" example, as written
    message = queue.pull(timeout=1)

    if message:
        task_id = message["task_id"]
        task_data = message["data"]
        priority = message["priority"]

        process_task(task_id, task_data)

    assert message == {
        "task_id": "task_123",
        "data": {"audio_files": ["meeting.wav"], "meeting_type": "weekly_sync"},
        "priority": 5,
    }
    assert queue.task_done("task_123") is True
    assert queue.pull(timeout=0.2) is None


def test_priority_order_nine_five_one(spec: QueueSpec) -> None:
    queue = spec.manager()
    for task_id, priority in [("low", 1), ("high", 9), ("mid", 5)]:
        assert queue.push(task_id, {"n": priority}, priority)
    pulled = []
    for _ in range(3):
        message = queue.pull(timeout=1)
        assert message is not None
        pulled.append((message["task_id"], message["priority"]))
    assert pulled == [("high", 9), ("mid", 5), ("low", 1)]
    for task_id, _ in pulled:
        assert queue.task_done(task_id)


def test_queue_length_and_clear(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.get_queue_length() == 0
    for i in range(4):
        assert queue.push(f"t{i}", {"i": i}, i)

    # -- the document's "队列长度" example
    length = queue.get_queue_length()
    assert length == 4

    held = queue.pull(timeout=1)
    assert held is not None and held["task_id"] == "t3"
    assert queue.get_queue_length() == 3  # a pulled task is not waiting
    assert queue.clear() == 3
    assert queue.get_queue_length() == 0
    assert queue.pull(timeout=0.2) is None
    assert queue.task_done("t3")  # clear left the task being handled alone


def test_the_documents_constructors_as_written() -> None:
    # building connects to nothing, so the document's defaults are fine anywhere
    queue = QueueManager(
        backend=QueueBackend.REDIS,
        redis_url="redis://localhost:6379/0",
        queue_name="meeting_tasks",
    )
    assert queue.queue_name == "meeting_tasks"
    pytest.importorskip("pika")
    queue = QueueManager(
        backend=QueueBackend.RABBITMQ,
        rabbitmq_url="amqp://guest:guest@localhost:5672/",
        queue_name="meeting_tasks",
    )
    assert queue.url == "amqp://guest:***@localhost:5672/"


def test_importing_the_package_imports_neither_client() -> None:
    code = (
        "import sys, supervisor.queuemanager; "
        "assert 'pika' not in sys.modules and 'redis' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=15)


def test_batch_push_is_one_call_and_keeps_priority(spec: QueueSpec) -> None:
    queue = spec.manager()
    batch = [(f"b{i}", {"i": i}, p) for i, p in enumerate([2, 10, 0, 7])]
    assert queue.push_many(batch) is True
    assert queue.get_queue_length() == 4
    order = []
    while (message := queue.pull(timeout=0.5)) is not None:
        order.append(message["priority"])
        queue.task_done(message["task_id"])
    assert order == [10, 7, 2, 0]
    assert queue.push_many([]) is True


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("t", {}, 11), "priority"),
        (("t", {}, -1), "priority"),
        (("t", {}, "5"), "priority"),
        (("t", {}, True), "priority"),
        (("", {}, 5), "task_id"),
        ((123, {}, 5), "task_id"),
        (("t", ["not", "a", "dict"], 5), "dict"),
        (("t", {"when": object()}, 5), "JSON"),
        (("t", {"x": float("nan")}, 5), "JSON"),
    ],
)
def test_bad_arguments_raise_task_error(
    spec: QueueSpec, args: tuple[object, object, object], words: str
) -> None:
    queue = spec.manager()
    with pytest.raises(TaskError, match=words):
        queue.push(*args)  # type: ignore[arg-type]
    with pytest.raises(TaskError):
        queue.push_many([args])  # type: ignore[list-item]
    assert queue.get_queue_length() == 0


def test_batch_with_a_repeated_id_is_refused_whole(spec: QueueSpec) -> None:
    queue = spec.manager()
    with pytest.raises(TaskError, match="twice"):
        queue.push_many([("a", {}, 1), ("a", {}, 2)])
    with pytest.raises(TaskError, match="batch item"):
        queue.push_many([("a", {})])  # type: ignore[list-item]
    assert queue.get_queue_length() == 0


def test_failed_task_goes_where_the_backend_says(spec: QueueSpec) -> None:
    queue = spec.manager()
    assert queue.push("f", {}, 3)
    message = queue.pull(timeout=1)
    assert message is not None
    assert queue.task_failed("f", "boom", requeue=True)
    again = queue.pull(timeout=5)  # RabbitMQ: at once; Redis: after the retry backoff (<= 1 s)
    assert again is not None and again["task_id"] == "f"
    assert queue.task_failed("f", "boom again", requeue=False)
    assert queue.pull(timeout=0.3) is None
    assert queue.task_done("f") is False  # no longer held: logged, not raised
