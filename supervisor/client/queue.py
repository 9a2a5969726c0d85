"""The task queue and public store as every process sees them (the seed's API, kept).

``Queue`` talks to a broker: the master's over its manager connection (``supervisor.connect()``),
or an in-process :class:`MemoryBroker` (``MemoryQueue``, the seed's class). The seed's method names
and return values are kept; params and values are pickled here, on the client side.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from supervisor import payload
from supervisor.broker.base import MAX_DELAY_S, Broker
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.errors import PayloadError, TaskError
from supervisor.registry import check_priority, queue_name

_TASK_KEYS = {"task_id", "type", "params", "priority", "delay", "eta", "unique_key", "queue"}


def build_message(
    task: Any,
    *,
    priority: int | None = None,
    delay: float | None = None,
    max_payload_bytes: int | None = None,
) -> dict[str, Any]:
    """Validate a seed-style task dict and turn it into a broker message (params pickled).

    A ``delay`` travels as it is: the broker adds it to its own clock, so that neither a
    producer's clock skew nor a broker's injected clock shifts it.
    """
    if not isinstance(task, dict):
        raise TaskError(
            f"a task must be a dict like {{'type': ..., 'params': {{...}}}}, "
            f"got {type(task).__name__}"
        )
    unknown = set(task) - _TASK_KEYS
    if unknown:
        raise TaskError(f"unknown task key(s) {sorted(unknown)}; known: {sorted(_TASK_KEYS)}")
    task_type = task.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise TaskError(f"task 'type' must be a non-empty string, got {task_type!r}")
    prio = priority if priority is not None else task.get("priority")
    if prio is not None:
        check_priority(prio)
    delay = delay if delay is not None else task.get("delay")
    eta = task.get("eta")
    if delay is not None:
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay < math.inf
        ):
            raise TaskError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if delay > MAX_DELAY_S:
            raise TaskError(f"delay {delay!r} s is more than 10 years (at most {MAX_DELAY_S:.0f})")
        eta = None
    elif eta is not None and (
        isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta)
    ):
        raise TaskError(f"eta must be epoch seconds, got {eta!r}")
    params = task.get("params")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TaskError(
            f"task params must be a dict (the handler is called as handler(params)), "
            f"got {type(params).__name__}"
        )
    task_id = task.get("task_id")
    if task_id is not None and (not isinstance(task_id, str) or not task_id):
        raise TaskError(f"task_id must be a non-empty string, got {task_id!r}")
    blob = payload.dumps(params, what=f"params of task type {task_type!r}", limit=max_payload_bytes)
    msg: dict[str, Any] = {"type": task_type, "params": blob, "priority": prio, "eta": eta}
    if delay is not None:
        msg["delay"] = delay
    if task.get("task_id") is not None:
        msg["task_id"] = task["task_id"]
    if task.get("unique_key") is not None:
        msg["unique_key"] = task["unique_key"]
    if task.get("queue") is not None:  # else the broker routes it by its type
        try:
            msg["queue"] = queue_name(task["queue"])
        except ValueError as exc:
            raise TaskError(f"task {exc}") from None
    return msg


def decode_message(msg: dict[str, Any]) -> dict[str, Any]:
    """A broker message as the seed's task dict (params unpickled)."""
    task = dict(msg)
    task["params"] = payload.loads(msg["params"], what=f"params of task {msg.get('task_id')}")
    return task


def _decoded_or_raw(rec: dict[str, Any]) -> dict[str, Any]:
    try:
        return decode_message(rec)
    except PayloadError:
        return {**rec, "params": None}


class Queue:
    """Seed-compatible queue + public store client."""

    def __init__(self, broker: Broker, *, max_payload_bytes: int | None = 1 << 20) -> None:
        self.broker = broker
        self.max_payload_bytes = max_payload_bytes
        self._consumer_prefix = (
            f"client:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._counter = itertools.count()
        self._held: dict[str, str] = {}  # task id -> consumer (for task_done)
        self._last = threading.local()

    # -- tasks -------------------------------------------------------------------------------
    def push_task(
        self, task: dict[str, Any], priority: int | None = None, delay: float | None = None
    ) -> str:
        """Queue one task; return its id. Keys: type, params, task_id, priority, delay, eta."""
        msg = build_message(
            task, priority=priority, delay=delay, max_payload_bytes=self.max_payload_bytes
        )
        return self.broker.push(msg)

    def push_tasks(self, tasks: Iterable[dict[str, Any]]) -> list[str]:
        """Queue many tasks in one round trip, all or none."""
        msgs = [build_message(t, max_payload_bytes=self.max_payload_bytes) for t in tasks]
        return self.broker.push_many(msgs) if msgs else []

    def pop_task(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Take the next task, waiting up to ``timeout`` s (None: until one comes).

        Call :meth:`task_done` when it is handled; a task never acknowledged goes back to the
        queue once its timeout (plus a grace) passes, as an attempt that timed out.
        """
        consumer = f"{self._consumer_prefix}:{next(self._counter)}"
        msg = self.broker.pop(consumer, timeout)
        if msg is None:
            return None
        self._held[msg["task_id"]] = consumer
        self._last.task_id = msg["task_id"]
        return decode_message(msg)

    def task_done(self, task_id: str | None = None, result: Any = None) -> None:
        """Mark a popped task succeeded (the last one this thread popped, by default)."""
        self._settle(task_id, ("succeeded", result))

    def task_failed(
        self, task_id: str | None = None, error: str = "", *, retry: bool = True
    ) -> None:
        """Mark a popped task failed: retried per its policy, or dead at once."""
        outcome = (
            ("failed", {"reason": "error", "error": error})
            if retry
            else ("invalid", {"error": error})
        )
        self._settle(task_id, outcome)

    def _settle(self, task_id: str | None, outcome: tuple[str, Any]) -> None:
        task_id = task_id or getattr(self._last, "task_id", None)
        if task_id is None:
            return  # the seed's task_done() after nothing was popped: a no-op, as Queue's was
        consumer = self._held.pop(task_id, None)
        if consumer is None:
            raise TaskError(f"task {task_id!r} was not popped by this client")
        if getattr(self._last, "task_id", None) == task_id:
            self._last.task_id = None
        self.broker.report(consumer, (task_id, *outcome))

    def get_queue_size(self) -> int:
        return self.broker.queue_size()

    def is_empty(self) -> bool:
        return self.get_queue_size() == 0

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task's record with params unpickled, or None if the id is unknown."""
        rec = self.broker.get_task(task_id)
        return None if rec is None else decode_message(rec)

    get_task_state = get_task

    def list_tasks(
        self,
        status: str | None = None,
        type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records, newest first, filtered by status, type and push time."""
        rows = self.broker.list_tasks(status, type, since, limit)
        return [_decoded_or_raw(r) for r in rows]

    def get_queue_stats(self) -> dict[str, int]:
        """Counts of task records by status."""
        return self.broker.get_queue_stats()

    def cancel_task(self, task_id: str) -> str:
        """Cancel a task: ``cancelled`` (it was waiting: removed at once), ``cancelling`` (it is
        running: its handler is asked to stop, then its worker is killed after a grace),
        ``finished`` (too late) or ``unknown``. A cancelled task is not retried."""
        return self.broker.cancel(task_id)

    def purge(self, status: str, older_than_s: float) -> int:
        """Delete finished records of ``status`` older than ``older_than_s``; return how many."""
        return self.broker.purge(status, older_than_s)

    def retry_task(self, task_id: str) -> bool:
        return self.broker.retry_task(task_id)

    def stats(self) -> dict[str, Any]:
        return self.broker.stats()

    # -- public store ------------------------------------------------------------------------
    def set_public(self, key: str, value: Any, ttl: float | None = None) -> None:
        blob = payload.dumps(
            value, what=f"value of store key {key!r}", limit=self.max_payload_bytes
        )
        self.broker.set_public(key, blob, ttl)

    def get_public(self, key: str, default: Any = None) -> Any:
        blob = self.broker.get_public(key)
        return default if blob is None else payload.loads(blob, what=f"store key {key!r}")

    def delete_public(self, key: str) -> bool:
        return self.broker.delete_public(key)

    def cleanup(self) -> int:
        return self.broker.cleanup()

    def get_store_size(self) -> int:
        return self.broker.get_store_size()

    def list_keys(self) -> list[str]:
        return self.broker.list_keys()

    def clear_store(self) -> None:
        self.broker.clear_store()


class MemoryQueue(Queue):
    """The seed's in-process queue: no master, no manager; a background sweep if started."""

    def __init__(self, cleanup_interval: float = 60.0, **broker_options: Any) -> None:
        self.broker: MemoryBroker = MemoryBroker(**broker_options)
        super().__init__(self.broker)
        self.cleanup_interval = cleanup_interval
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start_cleanup(self) -> None:
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep, name="store-cleanup", daemon=True)
        self._sweeper.start()

    def stop_cleanup(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
            self._sweeper = None

    def _sweep(self) -> None:
        while not self._stop.wait(self.cleanup_interval):
            self.broker.maintain()
