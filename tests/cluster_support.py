"""Task app and producer for the e2e tests of a Redis cluster's global order and unique keys
(``tests/e2e/test_redis_cluster_order.py``): nodes load it with ``--app tests.cluster_support``.

Handlers say where they ran (node, consumer) in their result, because a finished record no
longer names its consumer. The producer runs in a spawned process with nothing but the broker's
URL and key prefix, as any producer of a cluster would.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from supervisor import TaskRegistry, current_task, get_queue

app = TaskRegistry()

GATE_OPEN = "gates-open"  # the store key the gate tasks wait for
GATE_LIMIT_S = 60.0  # a gate never opened fails its task instead of hanging the test


def _append(path: str, line: str) -> None:
    """One ``write`` to an O_APPEND file: lines of concurrent processes never interleave, and
    their order in the file is the order of the writes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _where() -> dict[str, Any]:
    """This worker's node and consumer, as its running record names them."""
    task = current_task()
    assert task is not None
    q = get_queue()
    rec = q.get_task(task.task_id)
    assert rec is not None and rec["status"] == "running", rec
    return {
        "node": q.broker.node,  # type: ignore[attr-defined]
        "consumer": rec["consumer"],
        "started_at": rec["started_at"],
        "pid": os.getpid(),
    }


@app.task("gate", timeout_s=120, max_retries=0)
def gate(params: dict[str, Any]) -> dict[str, Any]:
    """Keep this worker busy until the store key :data:`GATE_OPEN` is set."""
    where = _where()
    q = get_queue()
    deadline = time.monotonic() + GATE_LIMIT_S
    while not q.get_public(GATE_OPEN):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate stayed shut for {GATE_LIMIT_S:g} s")
        time.sleep(0.01)
    return where


@app.task("ordered", timeout_s=30, max_retries=0)
def ordered(params: dict[str, Any]) -> dict[str, Any]:
    """Work ``params['work_s']`` seconds; return where it ran."""
    where = _where()
    time.sleep(float(params["work_s"]))  # stands for real work of varying length
    return where


@app.task("ukey", timeout_s=30, max_retries=0)
def ukey(params: dict[str, Any]) -> dict[str, Any]:
    """Append ``start <key> <id>``, work, append ``end <key> <id>`` to ``params['path']``."""
    task = current_task()
    assert task is not None
    where = _where()
    _append(params["path"], f"start {params['key']} {task.task_id}")
    time.sleep(float(params["work_s"]))
    _append(params["path"], f"end {params['key']} {task.task_id}")
    return where


def produce(
    *,
    url: str,
    prefix: str,
    index: int,
    barrier: Any,
    keys: list[str],
    generations: int,
    runs_path: str,
    out_path: str,
    max_pushes: int = 5000,
) -> None:
    """A producer process: connect, wait at ``barrier`` with the others, then push ``ukey``
    tasks with ids of our own, each on a random key of ``keys``, until the pushes of every key
    have returned ``generations`` different ids (so the contention spans several holders of
    each key, however fast the machine), or ``max_pushes`` were made (the test then fails on
    what they returned). Writes to ``out_path`` a JSON list of ``[key, own id, returned id,
    t0, t1]`` (``time.time()`` around each push).

    Even-numbered producers find the broker through ``SUPERVISOR_BROKER`` and
    ``SUPERVISOR_KEY_PREFIX``, odd-numbered ones are given it: both ways must work."""
    import supervisor

    if index % 2 == 0:
        os.environ["SUPERVISOR_BROKER"] = url
        os.environ["SUPERVISOR_KEY_PREFIX"] = prefix
        q = supervisor.connect()
    else:
        q = supervisor.connect(broker=url, key_prefix=prefix)
    rng = random.Random(index)
    seen: dict[str, set[str]] = {k: set() for k in keys}
    out = []
    try:
        barrier.wait(timeout=60)
        for n in range(max_pushes):
            if all(len(ids) >= generations for ids in seen.values()):
                break
            key = rng.choice(keys)
            own = f"p{index}-{n}"
            task = {
                "type": "ukey",
                "task_id": own,
                "unique_key": key,
                "params": {"key": key, "path": runs_path, "work_s": 0.02},
            }
            t0 = time.time()
            got = q.push_task(task)
            out.append([key, own, got, t0, time.time()])
            seen[key].add(got)
    finally:
        q.broker.close()  # type: ignore[attr-defined]
    Path(out_path).write_text(json.dumps(out))
