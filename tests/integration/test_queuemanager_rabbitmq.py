"""QueueManager on a real RabbitMQ: down at push time, a drop and a comeback, a consumer killed
with kill -9 mid-task, the dead-letter queue, the queue's arguments and message properties."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.queuemanager import QueueBackend, QueueManager
from tests.helpers import wait_until
from tests.qm_support import LogCapture, QueueSpec, WorkerProc, closed_port, spec_for
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def spec() -> Iterator[QueueSpec]:
    yield from spec_for(QueueBackend.RABBITMQ)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    cap = LogCapture()
    yield cap
    cap.close()


def test_push_while_rabbitmq_is_unreachable_returns_false_and_logs_why(
    logs: LogCapture,
) -> None:
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{closed_port()}/"
    queue = QueueManager(backend=QueueBackend.RABBITMQ, rabbitmq_url=url, queue_name="q")
    assert queue.push("task_1", {"a": 1}, 5) is False
    assert queue.push_many([("task_2", {}, 1)]) is False
    assert queue.pull(timeout=0.1) is None
    text = logs.text()
    assert "push of task 'task_1' not accepted" in text
    assert "unreachable" in text and "127.0.0.1" in text
    assert "s3cret-pw" not in text
    assert queue.url.startswith("amqp://guest:***@127.0.0.1")


def test_connection_drop_then_comeback(spec: QueueSpec, logs: LogCapture) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))
    proxy.start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        queue = QueueManager(
            backend=QueueBackend.RABBITMQ, rabbitmq_url=url, queue_name=spec.queue_name
        )
        assert queue.push("before", {}, 1) is True
        proxy.stop()  # RabbitMQ "goes down" under an open connection
        assert queue.push("while-down", {}, 1) is False
        assert "while-down" in logs.text()
        proxy.start()  # and comes back on the same address
        assert queue.push("after", {}, 2) is True
        proxy.stop()  # a drop while idle, and a comeback before the next push:
        proxy.start()  # that push reconnects and succeeds
        assert queue.push("after-idle-drop", {}, 3) is True
        queue.close()
    finally:
        proxy.stop()
    direct = spec.manager()
    ids = []
    while (message := direct.pull(timeout=0.3)) is not None:
        ids.append(message["task_id"])
        direct.task_done(message["task_id"])
    assert ids[:2] == ["after-idle-drop", "after"] and "before" in ids
    # (a push that returned False may still have arrived: delivery is at least once)


def test_consumer_killed_mid_task_the_message_goes_to_another(
    spec: QueueSpec, tmp_path: Path
) -> None:
    producer = spec.manager()
    assert producer.push("t-kill", {"x": 1}, 5)
    worker = WorkerProc(tmp_path, spec.worker_args(mode="hang"))
    try:
        wait_until(lambda: worker.started("t-kill"), what="the consumer to start the task")
        assert producer.get_queue_length() == 0  # held, unacked, by the consumer
        worker.proc.send_signal(signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL
    finally:
        worker.kill()
    other = spec.manager()
    message = other.pull(timeout=5)
    assert message == {"task_id": "t-kill", "data": {"x": 1}, "priority": 5}
    assert other.task_done("t-kill")


def test_queue_arguments_and_message_properties(spec: QueueSpec) -> None:
    import pika

    queue = spec.manager()
    assert queue.push("p1", {"k": "v"}, 7)
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        ch = conn.channel()
        # the same arguments redeclare fine; different ones would be refused (406)
        ch.queue_declare(
            spec.queue_name,
            durable=True,
            arguments={
                "x-max-priority": 10,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{spec.queue_name}.dead",
            },
        )
        method, props, body = ch.basic_get(spec.queue_name, auto_ack=True)
        assert method is not None
        assert props.delivery_mode == 2
        assert props.priority == 7
        assert props.message_id == "p1"
        assert json.loads(body) == {"task_id": "p1", "data": {"k": "v"}, "priority": 7}
    finally:
        conn.close()


def test_failed_and_malformed_messages_are_dead_lettered(spec: QueueSpec, logs: LogCapture) -> None:
    import pika

    queue = spec.manager()
    assert queue.push("ok", {}, 1)
    assert queue.push("bad", {}, 2)
    message = queue.pull(timeout=1)
    assert message is not None and message["task_id"] == "bad"
    assert queue.task_failed("bad", "it broke")  # RabbitMQ's default: dead-letter
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", spec.queue_name, b"not json", pika.BasicProperties(priority=9))
        ch.basic_publish("", spec.queue_name, b'{"data": {}}', pika.BasicProperties(priority=9))
    finally:
        conn.close()
    message = queue.pull(timeout=1)  # the two malformed ones are rejected on the way
    assert message is not None and message["task_id"] == "ok"
    assert queue.task_done("ok")
    assert spec.dead_letter_count() == 3
    assert "not JSON" in logs.text() and "no task id" in logs.text()


def test_a_message_published_by_plain_pika_is_pulled(spec: QueueSpec) -> None:
    import pika

    queue = spec.manager()
    assert queue.get_queue_length() == 0  # declares the queue
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        body = json.dumps({"data": {"n": 1}}).encode()
        props = pika.BasicProperties(message_id="from-pika", priority=4, delivery_mode=2)
        conn.channel().basic_publish("", spec.queue_name, body, props)
    finally:
        conn.close()
    assert queue.pull(timeout=2) == {"task_id": "from-pika", "data": {"n": 1}, "priority": 4}
    assert queue.task_done("from-pika")


def test_pull_waits_for_a_push_from_another_connection(spec: QueueSpec) -> None:
    import threading
    import time

    import pika

    consumer = spec.manager()
    assert consumer.get_queue_length() == 0  # declares the queue
    outcome: list[bool] = []

    def push_once_the_consumer_waits() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(spec.url))
        try:
            ch = conn.channel()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # a deadline poll on RabbitMQ's consumer count
                ok = ch.queue_declare(spec.queue_name, passive=True)
                if ok.method.consumer_count == 1:
                    break
                time.sleep(0.01)
        finally:
            conn.close()
        producer = QueueManager(
            backend=QueueBackend.RABBITMQ, rabbitmq_url=spec.url, queue_name=spec.queue_name
        )
        outcome.append(producer.push("late", {}, 3))
        producer.close()

    t = threading.Thread(target=push_once_the_consumer_waits)
    t.start()
    message = consumer.pull(timeout=8)
    t.join(timeout=10)
    assert outcome == [True]
    assert message is not None and message["task_id"] == "late"
    assert consumer.task_done("late")
    assert consumer.get_queue_length() == 0


def test_push_to_a_deleted_queue_is_false_then_the_queue_is_declared_again(
    spec: QueueSpec, logs: LogCapture
) -> None:
    import pika

    queue = spec.manager()
    assert queue.push("one", {}, 1)
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        conn.channel().queue_delete(spec.queue_name)
    finally:
        conn.close()
    assert queue.push("unroutable", {}, 1) is False
    assert "is gone" in logs.text()
    assert queue.push("two", {}, 1) is True  # reconnected, and declared it again
    assert queue.push_many([("three", {}, 2)]) is True
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        conn.channel().queue_delete(spec.queue_name)
    finally:
        conn.close()
    assert queue.push_many([("four", {}, 1), ("five", {}, 1)]) is False  # a returned batch
    assert queue.push_many([("six", {}, 1)]) is True
    assert queue.get_queue_length() == 1


def test_out_of_range_priority_from_a_foreign_producer_is_dead_lettered(spec: QueueSpec) -> None:
    import pika

    queue = spec.manager()
    assert queue.get_queue_length() == 0
    conn = pika.BlockingConnection(pika.URLParameters(spec.url))
    try:
        body = json.dumps({"task_id": "p42", "data": {}, "priority": 42}).encode()
        conn.channel().basic_publish("", spec.queue_name, body)
    finally:
        conn.close()
    assert queue.pull(timeout=0.5) is None
    assert spec.dead_letter_count() == 1
