"""Turning a pushed message into a task record, or refusing it with a message naming the field.

Shared by every broker, so that each refuses the same messages with the same words. Pure: the
broker calls it with its own clock, so a producer's clock skew never shifts a ``delay``. Nothing
here changes any state; a refused push leaves the broker untouched.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from supervisor.broker import base
from supervisor.broker.records import TaskRecord
from supervisor.errors import StoreError, TaskError, UnknownTaskType
from supervisor.registry import TaskOptions, check_priority, queue_name

MAX_ID_LEN = 200
MAX_KEY_LEN = 1024  # a public store key


def check_key(key: object) -> str:
    """``key`` if it is a valid public store key, else StoreError."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"store key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LEN:
        raise StoreError(f"store key is {len(key)} characters long; at most {MAX_KEY_LEN}")
    return key


def check_ttl(ttl: object) -> float | None:
    """``ttl`` as seconds (None: no expiry), else StoreError."""
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not ttl > 0
        or ttl == float("inf")
    ):
        raise StoreError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


def check_component(name: Any, doc: Any) -> None:
    """TaskError unless ``name`` is a non-empty string of at most 200 characters and ``doc``
    a dict (shared by every board)."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise TaskError(f"a component name must be a string of 1-200 characters, got {name!r}")
    if not isinstance(doc, dict):
        raise TaskError(f"component status must be a dict, got {type(doc).__name__}")


def check_queues(queues: Any) -> tuple[str, ...] | None:
    """A consumer's named queues, as a tuple (None: every queue); TaskError if malformed."""
    if queues is None:
        return None
    if isinstance(queues, str) or not isinstance(queues, list | tuple) or not queues:
        raise TaskError(f"queues must be a non-empty list of queue names or None, got {queues!r}")
    for q in queues:
        try:
            queue_name(q)
        except ValueError as exc:
            raise TaskError(str(exc)) from None
    return tuple(queues)


def unique_key(value: Any) -> str | None:
    """The message's ``unique_key``: None, or a non-empty string of at most MAX_ID_LEN."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise TaskError(
            f"unique_key must be a non-empty string of at most {MAX_ID_LEN} "
            f"characters, got {value!r}"
        )
    return value


def _seconds(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def validate(
    msg: Any,
    *,
    types: dict[str, TaskOptions] | None,
    options: TaskOptions,
    max_payload: int,
    now: float,
) -> TaskRecord:
    """The record for ``msg`` (status QUEUED, not yet enqueued), or TaskError.

    ``types`` is the registry (None: any type is accepted); ``options`` are the type's options
    (for its default priority)."""
    if not isinstance(msg, dict):
        raise TaskError(f"a task must be a dict, got {type(msg).__name__}")
    task_type = msg.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise TaskError(f"task 'type' must be a non-empty string, got {task_type!r}")
    if types is not None and task_type not in types:
        known = ", ".join(sorted(types)) or "(none)"
        raise UnknownTaskType(f"task type {task_type!r} is not registered; known: {known}")
    params = msg.get("params", b"")
    if not isinstance(params, bytes):
        raise TaskError(
            "task params must reach the broker pickled (bytes); "
            "push through supervisor.connect() or get_queue()"
        )
    if len(params) > max_payload:
        raise TaskError(
            f"params of task type {task_type!r} are {len(params)} bytes pickled; "
            f"the limit is {max_payload} (max_payload_bytes)"
        )
    priority = msg.get("priority")
    priority = options.priority if priority is None else priority
    check_priority(priority)
    task_id = msg.get("task_id")
    if task_id is None:
        task_id = str(uuid.uuid4())
    elif not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LEN:
        raise TaskError(
            f"task_id must be a string of at most {MAX_ID_LEN} characters, not empty, "
            f"got {task_id!r}"
        )
    eta = msg.get("eta")
    if eta is not None and (not _seconds(eta) or not math.isfinite(eta)):
        raise TaskError(f"eta must be epoch seconds, got {eta!r}")
    delay = msg.get("delay")
    if delay is not None and (not _seconds(delay) or not 0 <= delay < math.inf):
        raise TaskError(f"delay must be a number of seconds >= 0, got {delay!r}")
    if delay is not None and delay > base.MAX_DELAY_S:
        raise TaskError(f"delay {delay!r} s is more than 10 years (at most {base.MAX_DELAY_S:.0f})")
    if delay is not None:  # on the broker's clock: a producer's clock may be skewed
        eta = now + delay
    return TaskRecord(
        task_id=task_id,
        type=task_type,
        params=params,
        priority=priority,
        status=base.QUEUED,
        pushed_at=now,
        eta=float(eta) if eta is not None else None,
        schedule_id=msg.get("schedule_id"),
        scheduled_at=msg.get("scheduled_at"),
        unique_key=unique_key(msg.get("unique_key")),
        queue=message_queue(msg.get("queue")),
    )


def message_queue(value: Any) -> str | None:
    """The message's ``queue``: None (routed by its type) or a queue name."""
    if value is None:
        return None
    try:
        return queue_name(value)
    except ValueError as exc:
        raise TaskError(f"task {exc}") from None
