"""A TaskWorker process for the QueueManager tests: ``python qm_worker_script.py '<json>'``.

JSON keys: backend, url, queue, prefix, dir, mode, max_shutdown_wait. Each task writes
``<dir>/started-<id>``; then by ``mode``: ``wait`` (until ``<dir>/release`` exists, at most
60 s), ``hang`` (the same, but nobody releases it), ``raise`` (raises RuntimeError); then
``<dir>/finished-<id>``. The process exits with what ``TaskWorker.start()`` returns.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger

from supervisor.queuemanager import QueueBackend, QueueManager, TaskWorker


class Pipeline:
    def __init__(self, folder: Path, mode: str) -> None:
        self.folder, self.mode = folder, mode

    def process(self, task_id: str, data: dict[str, Any]) -> None:
        (self.folder / f"started-{task_id}").write_text(json.dumps(data))
        if self.mode == "raise":
            raise RuntimeError(f"pipeline failed on {task_id}")
        deadline = time.monotonic() + 60
        while not (self.folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a stand-in for work: waits on the test's release file
        (self.folder / f"finished-{task_id}").write_text("ok")


def main() -> int:
    args = json.loads(sys.argv[1])
    logger.enable("supervisor")
    backend = QueueBackend(args["backend"])
    if backend is QueueBackend.RABBITMQ:
        qm = QueueManager(backend=backend, rabbitmq_url=args["url"], queue_name=args["queue"])
    else:
        qm = QueueManager(
            backend=backend, redis_url=args["url"], queue_name=args["queue"], prefix=args["prefix"]
        )
    worker = TaskWorker(
        queue_manager=qm,
        pipeline_service=Pipeline(Path(args["dir"]), args.get("mode", "wait")),
        max_shutdown_wait=args.get("max_shutdown_wait", 300),
        pull_timeout_s=0.2,
    )
    return worker.start()


if __name__ == "__main__":
    sys.exit(main())
