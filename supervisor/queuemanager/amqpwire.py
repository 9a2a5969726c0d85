"""The wire format of a QueueManager's RabbitMQ queue: its declare arguments and its messages.

Pure (no connection), so that anything else that produces to or consumes from the queue (an
ingest into our broker, a producer in another service) can use the same format: a persistent
message, ``message_id`` = task id, AMQP priority = task priority, body JSON
``{"task_id", "data", "priority"}``, and the AMQP ``timestamp`` (epoch seconds) of the push, from
which an ingest measures its lag.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika

from supervisor.queuemanager.validate import Message
from supervisor.registry import PRIORITY_MAX, PRIORITY_MIN

MAX_PRIORITY = PRIORITY_MAX  # x-max-priority: the document's 0-10, one to one


def queue_arguments(queue_name: str, *, dead_letter: bool = True) -> dict[str, Any]:
    """The ``queue_declare`` arguments of a QueueManager queue (every user of the queue must
    declare it with the same ones)."""
    args: dict[str, Any] = {"x-max-priority": MAX_PRIORITY}
    if dead_letter:
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = dead_letter_queue(queue_name)
    return args


def dead_letter_queue(queue_name: str) -> str:
    """The name of ``queue_name``'s dead-letter queue."""
    return f"{queue_name}.dead"


def encode(task_id: str, data: dict[str, Any], priority: int) -> tuple[bytes, Any]:
    """The body and properties of one task message."""
    body = json.dumps({"task_id": task_id, "data": data, "priority": priority}).encode()
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=priority,
        message_id=task_id,
        timestamp=int(time.time()),
    )
    return body, props


def decode(body: bytes, props: Any) -> Message | str:
    """The message, or the reason it is not one of ours (a string)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deep: ours? no
        return f"body is not JSON: {type(exc).__name__}: {exc}"
    if not isinstance(obj, dict):
        return f"body is JSON {type(obj).__name__}, not an object"
    task_id = obj.get("task_id") or getattr(props, "message_id", None)
    if not isinstance(task_id, str) or not task_id:
        return f"no task id (task_id {obj.get('task_id')!r}, message_id unset)"
    data = obj.get("data", {})
    if not isinstance(data, dict):
        return f"data is {type(data).__name__}, not an object"
    priority = obj.get("priority", getattr(props, "priority", None) or 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        return f"priority {priority!r} is not an integer"
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        return f"priority {priority} is not from {PRIORITY_MIN} to {PRIORITY_MAX}"
    return {"task_id": task_id, "data": data, "priority": priority}
