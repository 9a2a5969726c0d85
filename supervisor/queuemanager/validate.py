"""Argument checks shared by both backends (pure: no I/O), and URL redaction for logs.

Both backends refuse the same arguments with the same words, so code written against one runs
on the other: a task id is a non-empty string of at most 200 characters, the data a dict that
JSON can carry (RabbitMQ sends JSON; Redis pickles it, but keeps the same rule), the priority
an integer from 0 to 10.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

from supervisor.errors import TaskError
from supervisor.registry import PRIORITY_MAX, PRIORITY_MIN, check_priority

MAX_ID_LEN = 200


class Message(TypedDict):
    """What :meth:`QueueManager.pull` returns (the document's shape)."""

    task_id: str
    data: dict[str, Any]
    priority: int


def check_task(task_id: Any, task_data: Any, priority: Any) -> tuple[str, dict[str, Any], int]:
    """The checked ``(task_id, task_data, priority)``, or TaskError naming the bad value."""
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LEN:
        raise TaskError(
            f"task_id must be a non-empty string of at most {MAX_ID_LEN} characters, "
            f"got {task_id!r}"[:300]
        )
    if not isinstance(task_data, dict):
        raise TaskError(f"task_data must be a dict, got {type(task_data).__name__}")
    try:
        json.dumps(task_data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"task_data of task {task_id!r} is not JSON-able: {exc}") from None
    check_priority(priority, what=f"priority of task {task_id!r} ({PRIORITY_MIN}-{PRIORITY_MAX})")
    return task_id, task_data, priority


def check_batch(tasks: Any) -> list[tuple[str, dict[str, Any], int]]:
    """Each ``(task_id, task_data, priority)`` of a batch checked; the ids must differ."""
    if not isinstance(tasks, list | tuple):
        raise TaskError(
            f"push_many takes a list of (task_id, task_data, priority), got {type(tasks).__name__}"
        )
    out = []
    for item in tasks:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise TaskError(f"a batch item is (task_id, task_data, priority), got {item!r}"[:300])
        out.append(check_task(*item))
    ids = [t[0] for t in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"push_many got task id {dup!r} twice")
    return out


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
    return urlunsplit(parts._replace(netloc=netloc))
