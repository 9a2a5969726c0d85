"""A RabbitMQ message → a task: the task id, data as params, priority, the type the queue's
name; a message that is not ours refused with the reason (pure: no connection)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pika
import pytest

from supervisor.ingest.mapping import (
    Accepted,
    Rejected,
    dead_letter_headers,
    message_label,
    sent_at,
    to_task,
)
from supervisor.queuemanager.amqpwire import encode

pytestmark = pytest.mark.timeout(30)


def _map(body: bytes, props: Any = None, limit: int | None = 1 << 20) -> Accepted | Rejected:
    return to_task(
        body, props or pika.BasicProperties(), queue="meeting_tasks", max_payload_bytes=limit
    )


def test_a_queuemanager_message_maps_to_a_task_of_the_queues_type() -> None:
    body, props = encode("task_123", {"audio_files": ["meeting.wav"]}, 7)
    task = _map(body, props)
    assert isinstance(task, Accepted)
    assert task.task_id == "task_123" and task.priority == 7
    msg = task.message
    assert set(msg) == {"type", "task_id", "params", "priority"}  # the type routes it
    assert msg["type"] == "meeting_tasks" and msg["task_id"] == "task_123"
    assert msg["priority"] == 7
    assert pickle.loads(msg["params"]) == {"audio_files": ["meeting.wav"]}


def test_the_id_and_priority_may_come_from_the_properties() -> None:
    props = pika.BasicProperties(message_id="from-props", priority=3)
    task = _map(json.dumps({"data": {"n": 1}}).encode(), props)
    assert isinstance(task, Accepted)
    assert (task.task_id, task.priority) == ("from-props", 3)
    bare = _map(json.dumps({"task_id": "t"}).encode())  # no data, no priority: {} and 0
    assert isinstance(bare, Accepted) and bare.priority == 0
    assert pickle.loads(bare.message["params"]) == {}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"\xff\xfe", "body is not JSON"),
        (b"[1, 2]", "body is JSON list, not an object"),
        (b'{"data": {}}', "no task id"),
        (b'{"task_id": "", "data": {}}', "no task id"),
        (b'{"task_id": "t", "data": [1]}', "data is list, not an object"),
        (b'{"task_id": "t", "priority": 11}', "priority 11 is not from 0 to 10"),
        (b'{"task_id": "t", "priority": -1}', "priority -1 is not from 0 to 10"),
        (b'{"task_id": "t", "priority": "high"}', "is not an integer"),
        (b'{"task_id": "t", "priority": true}', "is not an integer"),
        (b'{"task_id": "t", "data": {"x": NaN}}', "not JSON-able"),
        (json.dumps({"task_id": "t" * 201}).encode(), "at most 200 characters"),
    ],
)
def test_a_message_that_is_not_ours_is_refused_with_the_reason(body: bytes, reason: str) -> None:
    out = _map(body)
    assert isinstance(out, Rejected) and reason in out.reason, out


def test_data_too_large_once_pickled_is_refused_naming_the_limit() -> None:
    body, props = encode("big", {"blob": "x" * 5000}, 1)
    out = _map(body, props, limit=1000)
    assert isinstance(out, Rejected)
    assert "data of task 'big'" in out.reason and "max_payload_bytes" in out.reason


def test_dead_letter_headers_keep_the_originals_and_say_why() -> None:
    headers = dead_letter_headers(
        {"trace": "abc"}, reason="x" * 2000, queue="jobs", now=1_700_000_000.7
    )
    assert headers["trace"] == "abc"
    assert headers["x-ingest-reason"] == "x" * 1000
    assert headers["x-ingest-queue"] == "jobs"
    assert headers["x-ingest-rejected-at"] == 1_700_000_000
    assert dead_letter_headers(None, reason="r", queue="q", now=0)["x-ingest-reason"] == "r"


def test_sent_at_is_the_amqp_timestamp_when_sane() -> None:
    now = 1_700_000_100.0
    assert sent_at(pika.BasicProperties(timestamp=1_700_000_090), now) == 1_700_000_090.0
    assert sent_at(pika.BasicProperties(timestamp=1_700_000_200), now) == now  # in the future
    assert sent_at(pika.BasicProperties(), now) == now  # none: when we received it
    _, props = encode("t", {}, 1)  # the QueueManager's messages carry one
    assert isinstance(props.timestamp, int) and props.timestamp > 1_700_000_000


def test_a_message_is_named_by_its_id_else_its_delivery_tag() -> None:
    assert message_label(pika.BasicProperties(message_id="m1"), 7) == "'m1'"
    assert message_label(pika.BasicProperties(), 7) == "#7"
