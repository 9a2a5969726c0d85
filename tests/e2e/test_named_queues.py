"""``supervisor run --queues``: a node's workers take tasks only from the named queues it lists,
on the embedded broker and on Redis (a GPU node and a CPU node sharing one cluster)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import supervisor
from supervisor.errors import UnknownTaskType
from tests.helpers import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def status_of(q: Any, task_id: str) -> str:
    rec = q.get_task_state(task_id)
    return rec["status"] if rec else "unknown"


def test_an_embedded_node_takes_only_its_queues(start_master: Any) -> None:
    m = start_master("--queues", "gpu,high")
    q = m.queue
    waiting = q.push_task({"type": "noop"})  # pushed first, to the default queue
    gpu = q.push_task({"type": "noop", "queue": "gpu"})
    high = q.push_task({"type": "noop", "queue": "high"})
    m.wait_status(gpu, "succeeded")
    m.wait_status(high, "succeeded")
    assert status_of(q, waiting) == "queued"  # two idle workers, and still not taken
    assert q.broker.stats()["by_queue"] == {"default": 1}


def test_two_redis_nodes_split_the_work_by_queue(
    start_master: Any, redis_url: str, tmp_path: Any
) -> None:
    prefix = f"nq{uuid.uuid4().hex[:8]}"
    producer = supervisor.connect(broker=redis_url, key_prefix=prefix)
    try:

        def node(name: str, queues: str) -> Any:
            return start_master(
                "--broker", redis_url, "--key-prefix", prefix, "--node-name", name,
                "--queues", queues, name=name,
            )  # fmt: skip

        gpu_node = node("gpu-node", "gpu")
        path = str(tmp_path / "runs.txt")
        cpu_ids = producer.push_tasks([{"type": "record", "params": {"path": path}}] * 3)
        gpu_ids = producer.push_tasks(
            [{"type": "record", "params": {"path": path}, "queue": "gpu"}] * 3
        )
        for t in gpu_ids:
            gpu_node.wait_status(t, "succeeded")
        assert {status_of(producer, t) for t in cpu_ids} == {"queued"}
        cpu_node = node("cpu-node", "default")
        for t in cpu_ids:
            cpu_node.wait_status(t, "succeeded")
        for m, mine, theirs in ((gpu_node, gpu_ids, cpu_ids), (cpu_node, cpu_ids, gpu_ids)):
            log = m.log_text()  # each node's workers log the tasks they ran
            assert all(f"task {t} (record) succeeded" in log for t in mine)
            assert not any(f"task {t} (record)" in log for t in theirs)
        wait_until(
            lambda: producer.broker.stats()["by_queue"] == {},
            10,
            what="every named queue to be empty",
        )
    finally:
        producer.broker.close()  # type: ignore[attr-defined]


def test_a_node_publishes_its_types_queues_at_start(start_master: Any, redis_url: str) -> None:
    prefix = f"nq{uuid.uuid4().hex[:8]}"
    start_master(
        "--broker", redis_url, "--key-prefix", prefix, "--app", "tests.e2e.qm_app",
        "--queues", "gpu", workers=1,
    )  # fmt: skip
    producer = supervisor.connect(broker=redis_url, key_prefix=prefix)  # only the URL
    try:
        task_id = producer.push_task({"type": "render"})  # no queue: its type's, gpu
        wait_until(
            lambda: status_of(producer, task_id) == "succeeded", 20, what="render to succeed"
        )
        assert producer.get_task_state(task_id)["queue"] == "gpu"
        with pytest.raises(UnknownTaskType, match="'rendr' is not registered on any node"):
            producer.push_task({"type": "rendr"})
    finally:
        producer.broker.close()  # type: ignore[attr-defined]
