"""A RabbitMQ message → a task of our broker, as a pure function (no connection, no clock).

The wire format is the QueueManager's (:mod:`supervisor.queuemanager.amqpwire`): a JSON body
``{"task_id", "data", "priority"}`` (the task id may instead be the ``message_id`` property,
the priority the AMQP priority). The task's type is the queue's name, its params the data dict,
its id the message's task id -- so a message delivered twice maps to the same task. The task
goes to its type's registered named queue (no ``queue`` field is set here).

A message that is not ours (not JSON, no task id, a priority out of range, data too large once
pickled, an id too long) is :class:`Rejected` with the reason; it is dead-lettered, never
retried: it would be refused again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisor import payload
from supervisor.errors import TaskError
from supervisor.queuemanager.amqpwire import decode
from supervisor.queuemanager.validate import check_task

REASON_HEADER = "x-ingest-reason"  # why a dead-lettered message was refused
QUEUE_HEADER = "x-ingest-queue"  # the queue it was consumed from
REJECTED_AT_HEADER = "x-ingest-rejected-at"  # epoch seconds (integer)
MAX_REASON = 1000


@dataclass(frozen=True)
class Accepted:
    """A message that is a task: ``message`` is what :meth:`Broker.push` takes."""

    task_id: str
    priority: int
    message: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A message that is not ours, and why (for the dead-letter header and the log)."""

    reason: str


def to_task(
    body: bytes, props: Any, *, queue: str, max_payload_bytes: int | None
) -> Accepted | Rejected:
    """The task a message stands for, or why it is refused."""
    decoded = decode(body, props)
    if isinstance(decoded, str):
        return Rejected(decoded)
    try:
        task_id, data, priority = check_task(
            decoded["task_id"], decoded["data"], decoded["priority"]
        )
        blob = payload.dumps(
            data, what=f"data of task {task_id!r}", limit=max_payload_bytes
        )  # a PayloadError is a TaskError
    except TaskError as exc:
        return Rejected(str(exc))
    message = {"type": queue, "task_id": task_id, "params": blob, "priority": priority}
    return Accepted(task_id=task_id, priority=priority, message=message)


def message_label(props: Any, delivery_tag: int) -> str:
    """How a message is named in the log: its message id, else its delivery tag."""
    mid = getattr(props, "message_id", None)
    return repr(mid)[:80] if mid else f"#{delivery_tag}"


def dead_letter_headers(
    headers: dict[str, Any] | None, *, reason: str, queue: str, now: float
) -> dict[str, Any]:
    """The original headers plus why, from where and when the message was refused."""
    out = dict(headers or {})
    out[REASON_HEADER] = reason[:MAX_REASON]
    out[QUEUE_HEADER] = queue
    out[REJECTED_AT_HEADER] = int(now)
    return out


def sent_at(props: Any, received_at: float) -> float:
    """When the message was sent: its AMQP ``timestamp`` (epoch seconds) if it has a sane one
    (not in the future), else when we received it."""
    ts = getattr(props, "timestamp", None)
    if isinstance(ts, int | float) and not isinstance(ts, bool) and 0 < ts <= received_at:
        return float(ts)
    return received_at
