"""A ``supervisor run --broker redis://…`` node executes what the document's
``QueueManager.push`` sends, with the node's supervision (retries, priority) — the code of the
document unchanged: ``QueueManager(backend=QueueBackend.REDIS, redis_url=..., queue_name=...)``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import supervisor
from supervisor import QueueBackend, QueueManager
from tests.helpers import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_node_runs_what_queuemanager_pushes(
    start_master: Any, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"qm{uuid.uuid4().hex[:8]}"
    path = tmp_path / "runs.txt"
    queue = QueueManager(
        backend=QueueBackend.REDIS, redis_url=redis_url, queue_name="meeting_tasks", prefix=prefix
    )
    client = supervisor.connect(broker=redis_url, key_prefix=prefix)
    try:
        # Pushed before any node runs: they wait in Redis, in priority order.
        for task_id, priority in (("low", 1), ("high", 9), ("mid", 5)):
            assert queue.push(task_id, {"path": str(path), "meeting_id": task_id}, priority)
        assert queue.push("flaky", {"path": str(path), "fail_first": True}, 5)
        assert queue.get_queue_length() == 4
        start_master(
            "--broker", redis_url, "--key-prefix", prefix, "--app", "tests.e2e.qm_app",
            workers=1,
        )  # fmt: skip
        for task_id in ("low", "high", "mid", "flaky"):
            wait_until(
                lambda t=task_id: (client.get_task_state(t) or {}).get("status") == "succeeded",
                30,
                what=f"task {task_id} to succeed",
            )
        runs = [line.split() for line in lines(path)]
        first_attempts = [t for t, attempt in runs if attempt == "1"]
        assert first_attempts[:3] == ["high", "mid", "flaky"]  # one worker: priority order
        assert first_attempts[-1] == "low"
        assert ["flaky", "2"] in runs  # retried by the node's policy, then succeeded
        flaky = client.get_task_state("flaky")
        assert flaky is not None and flaky["attempts"] == 2 and flaky["queue"] == "meeting_tasks"
        assert queue.get_queue_length() == 0
    finally:
        queue.close()
        client.broker.close()  # type: ignore[attr-defined]


def test_a_node_that_does_not_list_the_queue_leaves_its_tasks(
    start_master: Any, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"qm{uuid.uuid4().hex[:8]}"
    path = tmp_path / "runs.txt"
    queue = QueueManager(redis_url=redis_url, queue_name="meeting_tasks", prefix=prefix)
    try:
        node = start_master(
            "--broker", redis_url, "--key-prefix", prefix, "--app", "tests.e2e.qm_app",
            "--queues", "default", workers=1,
        )  # fmt: skip
        assert queue.push("m1", {"path": str(path)}, 5)
        client = node.queue
        # The node's worker waits on its own queue; the task stays for a consumer of its queue.
        assert client.broker.stats()["by_queue"] == {"meeting_tasks": 1}
        msg = queue.pull(timeout=5)  # the document's own consumer path still takes it
        assert msg is not None and msg["task_id"] == "m1" and msg["data"]["path"] == str(path)
        assert queue.task_done("m1")
        assert not path.exists()  # the node never ran it
    finally:
        queue.close()
