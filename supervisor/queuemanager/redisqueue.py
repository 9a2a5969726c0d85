"""The Redis backend of :class:`~supervisor.queuemanager.QueueManager`: a thin client of
:class:`~supervisor.broker.redis.RedisBroker`.

A pushed item is a task of our broker, ``{"type": queue_name, "task_id": task_id, "params":
pickle of the data dict, "priority": priority, "queue": queue_name}``, under the broker's key
prefix (``sv`` by default, what ``supervisor run --broker redis://...`` uses). So a supervised
node executes what :meth:`push` sends, with its timeouts, retries and leases, when its app
registers a handler under the queue's name (``@app.task("meeting_tasks")``; the handler is
called with the data dict as its params). The ``"queue"`` field routes the task to the named
queue ``queue_name`` (so the name must be a valid queue name: letters, digits, ``_.:-``), and
the broker handle is built with ``queues=[queue_name]`` so that this client hands out and counts
only that queue's tasks. A node consumes it when it takes every queue (no ``--queues``) or
lists it.

This backend talks to the broker itself rather than through :class:`supervisor.client.queue.Queue`:
that class's ``build_message`` refuses the ``queue`` key, and its consumer names are fixed when it
is built (a fork would share them).

A pull is the seed's own-consumer path: each pulled task is held by a fresh consumer
``client:<host>:<pid>:<uuid>`` until :meth:`task_done` / :meth:`task_failed` /
:meth:`release`; one never acknowledged goes back once its lease (the type's timeout plus a
grace) runs out -- any node's housekeeping recovers it, and so does this client's next pull.
:meth:`keepalive` renews the leases this client holds while a long task runs.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from loguru import logger

from supervisor import payload
from supervisor.broker import base
from supervisor.broker.redis import RedisBroker
from supervisor.errors import BrokerError, ConfigError, PayloadError
from supervisor.queuemanager.validate import Message, safe_url
from supervisor.registry import queue_name as registry_queue_name

RECOVER_EVERY_S = 5.0  # how often a pulling client recovers expired leases itself
RENEW_EVERY_S = 5.0  # how often keepalive renews the leases held
WAITING = (base.QUEUED, base.RETRYING, base.SCHEDULED)
CLEAR_BATCH = 1000

log = logger.bind(component="queue")


class RedisQueue:
    """One named queue on our Redis broker (see the module docstring for the contract)."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        *,
        prefix: str = "sv",
        broker: Any = None,
        max_payload_bytes: int = 1 << 20,
    ) -> None:
        self.url = safe_url(url)
        try:
            self.queue_name = registry_queue_name(queue_name)
        except ValueError as exc:
            raise ConfigError(f"queue_name on Redis: {exc}") from None
        if broker is None:
            # No type check: its own pull() consumes the queue whether or not a node does.
            broker = RedisBroker(url=url, prefix=prefix, queues=[queue_name], check_types=False)
        self.broker = broker
        self._max_payload = max_payload_bytes
        self._held: dict[str, str] = {}  # task id -> consumer
        self._last_recover = 0.0
        self._last_renew = time.monotonic()
        self._failures = 0

    def _consumer(self) -> str:
        return f"client:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    def _message(self, task_id: str, data: dict[str, Any], priority: int) -> dict[str, Any]:
        blob = payload.dumps(data, what=f"data of task {task_id!r}", limit=self._max_payload)
        return {
            "type": self.queue_name,
            "task_id": task_id,
            "params": blob,
            "priority": priority,
            "queue": self.queue_name,
        }

    def close(self) -> None:
        """Close the broker handle's connections (held tasks go back after their lease)."""
        self.broker.close()

    # -- push --------------------------------------------------------------------------------
    def push(self, task_id: str, data: dict[str, Any], priority: int) -> bool:
        return self.push_many([(task_id, data, priority)])

    def push_many(self, tasks: list[tuple[str, dict[str, Any], int]]) -> bool:
        """One script call, all or none. DuplicateTaskId (a TaskError) when an id is still
        queued or running."""
        if not tasks:
            return True
        msgs = [self._message(*t) for t in tasks]
        try:
            self.broker.push_many(msgs)
        except BrokerError as exc:
            what = f"push of task {tasks[0][0]!r}" if len(tasks) == 1 else f"batch of {len(tasks)}"
            log.warning("{} not accepted: {}", what, exc)
            return False
        return True

    # -- pull and acknowledgements -----------------------------------------------------------
    def pull(self, timeout: float | None) -> Message | None:
        consumer = self._consumer()
        try:
            self._maybe_recover()
            msg = self.broker.pop(consumer, timeout)
        except BrokerError as exc:
            self._failures += 1
            wait = min(2.0, 0.1 * 2 ** min(self._failures - 1, 5))
            if timeout is not None:
                wait = min(wait, timeout)
            log.warning("pull: {}; next try in {:.2f} s", exc, wait)
            time.sleep(wait)
            return None
        self._failures = 0
        if msg is None:
            return None
        task_id = msg["task_id"]
        try:
            data = payload.loads(msg["params"], what=f"data of task {task_id!r}")
        except PayloadError as exc:
            log.error("task {!r} is unreadable, marked dead: {}", task_id, exc)
            self._report(consumer, (task_id, "invalid", {"error": str(exc)}))
            return None
        self._held[task_id] = consumer
        return {"task_id": task_id, "data": data, "priority": int(msg["priority"])}

    def _maybe_recover(self) -> None:
        now = time.monotonic()
        if now - self._last_recover >= RECOVER_EVERY_S:
            self._last_recover = now
            self.broker.recover()

    def _give_back(self, consumer: str, task_id: str) -> bool:
        try:
            self.broker.release_consumer(consumer, base.REASON_SHUTDOWN)
        except BrokerError as exc:
            log.warning("cannot give back task {!r} (back after its lease): {}", task_id, exc)
            return False
        return True

    def _report(self, consumer: str, report: Any) -> bool:
        try:
            self.broker.report_strict(consumer, report)
        except BrokerError as exc:  # LeaseLost is one: the attempt was recovered elsewhere
            log.warning("report of task {!r} not recorded: {}", report[0], exc)
            return False
        return True

    def _take(self, task_id: str, action: str) -> str | None:
        consumer = self._held.pop(task_id, None)
        if consumer is None:
            log.warning(
                "task {!r} is not held by this QueueManager: nothing to {}", task_id, action
            )
        return consumer

    def task_done(self, task_id: str) -> bool:
        consumer = self._take(task_id, "acknowledge")
        return consumer is not None and self._report(consumer, (task_id, base.SUCCEEDED, None))

    def task_failed(self, task_id: str, error: str, requeue: bool | None) -> bool:
        """Failed: retried under the retry policy (``requeue`` None or True), or dead at once
        (False)."""
        consumer = self._take(task_id, "fail")
        if consumer is None:
            return False
        if requeue is False:
            return self._report(consumer, (task_id, "invalid", {"error": error}))
        return self._report(
            consumer, (task_id, "failed", {"reason": base.REASON_ERROR, "error": error})
        )

    def release(self, task_id: str) -> bool:
        consumer = self._take(task_id, "release")
        return consumer is not None and self._give_back(consumer, task_id)

    def keepalive(self) -> None:
        """Renew the leases of the tasks held (at most every few seconds)."""
        now = time.monotonic()
        if not self._held or now - self._last_renew < RENEW_EVERY_S:
            return
        self._last_renew = now
        try:
            res = self.broker.renew(list(self._held.values()))
        except BrokerError as exc:
            log.warning("cannot renew leases: {}", exc)
            return
        for task_id in res.get("lost", []):
            log.warning("lease of task {!r} was lost: it will run again elsewhere", task_id)

    # -- queries -----------------------------------------------------------------------------
    def length(self) -> int:
        """Tasks ready now in this queue."""
        return int(self.broker.queue_size())

    def clear(self) -> int:
        """Cancel this queue's waiting tasks (queued, retrying, scheduled); running ones go on.
        Uses ``list_tasks`` + ``cancel`` (an admin walk of the records, not a hot path)."""
        cleared = 0
        for status in WAITING:
            while True:
                rows = self.broker.list_tasks(status, self.queue_name, None, CLEAR_BATCH)
                done = [r for r in rows if self.broker.cancel(r["task_id"]) == base.CANCELLED]
                cleared += len(done)
                if len(rows) < CLEAR_BATCH or not done:
                    break
        return cleared
