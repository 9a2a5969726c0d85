"""The app of a team that pushes with the document's QueueManager: one handler registered under
the queue's name (the rule of the Redis backend), called with each message's data dict."""

from __future__ import annotations

import os
from typing import Any

from supervisor import TaskRegistry, current_task

app = TaskRegistry()


@app.task("meeting_tasks", timeout_s=30, max_retries=2, backoff_base_s=0.05, backoff_cap_s=0.1)
def meeting_tasks(data: dict[str, Any]) -> int:
    """Append ``<task id> <attempt>`` to data['path']; fail the first attempt when asked."""
    task = current_task()
    assert task is not None
    fd = os.open(data["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.task_id} {task.attempt}\n".encode())
    finally:
        os.close(fd)
    if data.get("fail_first") and task.attempt == 1:
        raise RuntimeError("the first attempt fails, as asked")
    return os.getpid()


@app.task("render", queue="gpu", timeout_s=30)
def render(data: dict[str, Any]) -> int:
    """A type registered in a named queue: a producer with only the URL routes it there."""
    return os.getpid()
