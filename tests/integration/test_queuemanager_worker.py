"""TaskWorker in a subprocess on Redis and RabbitMQ: SIGTERM during a task lets it finish
(exit 0, the next task left queued); SIGTERM past max_shutdown_wait marks the task failed and
it goes to another consumer; a task that raises is marked failed; SIGINT stops an idle worker."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.queuemanager import QueueBackend, QueueManager, TaskWorker
from tests.helpers import wait_until
from tests.qm_support import QueueSpec, WorkerProc, spec_for

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=[QueueBackend.REDIS, QueueBackend.RABBITMQ], ids=["redis", "rabbitmq"])
def spec(request: pytest.FixtureRequest) -> Iterator[QueueSpec]:
    yield from spec_for(request.param)


@pytest.fixture
def procs() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for p in started:
        p.kill()


def record(spec: QueueSpec, queue: QueueManager, task_id: str) -> dict[str, object] | None:
    """The Redis broker's record of a task (None on RabbitMQ, which keeps none)."""
    if spec.backend is QueueBackend.RABBITMQ:
        return None
    return queue._impl.broker.get_task(task_id)  # type: ignore[attr-defined]


def test_sigterm_during_a_task_lets_it_finish_and_exits_0(
    spec: QueueSpec, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    queue = spec.manager()
    assert queue.push("first", {"n": 1}, 9)
    assert queue.push("second", {"n": 2}, 1)
    worker = WorkerProc(tmp_path, spec.worker_args(mode="wait", max_shutdown_wait=15))
    procs.append(worker)
    wait_until(lambda: worker.started("first"), what="the worker to start the first task")
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "waiting up to 15 s" in worker.log(), what="the worker to see SIGTERM")
    assert not worker.finished("first")
    worker.release()
    assert worker.wait() == 0, worker.log()
    assert worker.finished("first")
    assert not worker.started("second")  # it stopped pulling
    assert "succeeded" in worker.log()
    assert queue.get_queue_length() == 1
    rec = record(spec, queue, "first")
    assert rec is None or rec["status"] == "succeeded"
    message = queue.pull(timeout=2)  # only "second" is left: "first" was acknowledged
    assert message is not None and message["task_id"] == "second"
    assert queue.task_done("second")
    assert queue.pull(timeout=0.2) is None


def test_sigterm_past_max_shutdown_wait_fails_the_task_and_another_consumer_gets_it(
    spec: QueueSpec, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    queue = spec.manager()
    assert queue.push("long", {"n": 1}, 5)
    worker = WorkerProc(tmp_path, spec.worker_args(mode="hang", max_shutdown_wait=0.5))
    procs.append(worker)
    wait_until(lambda: worker.started("long"), what="the worker to start the task")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log()
    assert (
        "task 'long' FAILED: cut off by the shutdown after max_shutdown_wait=0.5 s" in worker.log()
    )
    assert not worker.finished("long")
    rec = record(spec, queue, "long")
    if rec is not None:
        assert rec["status"] in ("retrying", "queued")
        assert "cut off by the shutdown" in str(rec["error"])
    message = queue.pull(timeout=5)  # RabbitMQ: requeued at once; Redis: after the backoff
    assert message is not None and message["task_id"] == "long"
    assert queue.task_done("long")


def test_a_task_that_raises_is_marked_failed(
    spec: QueueSpec, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    queue = spec.manager()
    assert queue.push("boom", {}, 5)
    worker = WorkerProc(tmp_path, spec.worker_args(mode="raise"))
    procs.append(worker)
    wait_until(lambda: "task 'boom' FAILED" in worker.log(), what="the task to fail")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait() == 0, worker.log()
    assert "RuntimeError: pipeline failed on boom" in worker.log()
    if spec.backend is QueueBackend.RABBITMQ:
        assert spec.dead_letter_count() == 1
        assert queue.get_queue_length() == 0
    else:
        rec = record(spec, queue, "boom")
        assert rec is not None
        assert rec["status"] in ("retrying", "queued", "running")  # our retry policy applies
        assert "pipeline failed on boom" in str(rec["error"])


def test_sigint_stops_an_idle_worker(
    spec: QueueSpec, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    worker = WorkerProc(tmp_path, spec.worker_args())
    procs.append(worker)
    wait_until(lambda: "worker started" in worker.log(), what="the worker to start")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait() == 0, worker.log()
    assert "SIGINT received: stopping" in worker.log()


def test_pipeline_rule_and_in_process_stop(spec: QueueSpec) -> None:
    queue = spec.manager()
    seen: list[tuple[str, dict[str, object]]] = []
    worker: TaskWorker

    def pipeline(task_id: str, data: dict[str, object]) -> None:  # a plain callable
        seen.append((task_id, data))
        worker.stop()

    worker = TaskWorker(queue_manager=queue, pipeline_service=pipeline, max_shutdown_wait=5)
    assert queue.push("c1", {"v": 1}, 5)
    assert worker.start() == 0
    assert seen == [("c1", {"v": 1})]
    with pytest.raises(ConfigError, match="process"):
        TaskWorker(queue_manager=queue, pipeline_service=42)
