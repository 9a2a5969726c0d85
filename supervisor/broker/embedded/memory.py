"""The embedded broker: the contract, composed of a task core, a dispatcher, a store and a board.

It lives in the broker process and is served to every other process by the manager in
:mod:`supervisor.broker.embedded.server`; it is also usable in-process (the seed's
``MemoryQueue``). Its parts, each with one role:

- :class:`~supervisor.broker.embedded.core.TaskCore`: lanes, delayed heap, records, counts and
  the retry policy, reporting its changes to a change sink (:mod:`.changes`; the journal in the
  durable broker, nothing here);
- :class:`~supervisor.broker.embedded.dispatcher.Dispatcher`: the one path of every push, report
  and exchange, and the consumers parked waiting for work;
- :class:`~supervisor.broker.embedded.store.MemoryStore`: the public key/value store;
- :class:`~supervisor.broker.embedded.board.Board`: the status documents.

One lock guards the core and the dispatcher: the manager serves each client connection in its
own thread, and the critical sections are a few dict and deque operations.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from supervisor.broker.base import Broker, Queues, Report
from supervisor.broker.embedded import control
from supervisor.broker.embedded.board import Board
from supervisor.broker.embedded.changes import ChangeSink
from supervisor.broker.embedded.core import LEASE_GRACE_S, WORKER_PREFIX, TaskCore
from supervisor.broker.embedded.dispatcher import PARKED, Dispatcher, LocalSink
from supervisor.broker.embedded.store import MemoryStore
from supervisor.registry import TaskOptions

__all__ = ["LEASE_GRACE_S", "WORKER_PREFIX", "MemoryBroker"]
DAY_S = 86_400.0


class MemoryBroker(Broker):
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        task_types: dict[str, TaskOptions] | None = None,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int = 1 << 20,
        finished_records: int = 10_000,
        result_ttl_s: float = 7 * DAY_S,
        failure_ttl_s: float = 30 * DAY_S,
        changes: ChangeSink | None = None,
    ) -> None:
        self._clock = clock
        self.lock = threading.RLock()  # guards the core and the dispatcher
        self.core = TaskCore(
            clock=clock,
            rng=rng,
            changes=changes,
            task_types=task_types,
            default_options=default_options,
            max_payload_bytes=max_payload_bytes,
            finished_records=finished_records,
            result_ttl_s=result_ttl_s,
            failure_ttl_s=failure_ttl_s,
        )
        self.dispatcher = Dispatcher(self.core, self.lock, self.core.changes)
        self.store = MemoryStore(clock=clock)
        self.board = Board(clock=clock)

    # -- the queue ---------------------------------------------------------------------------
    def configure(
        self,
        task_types: dict[str, Any] | None,
        *,
        default_options: Any = None,
        max_payload_bytes: int | None = None,
        finished_records: int | None = None,
    ) -> None:
        with self.lock:
            core = self.core
            core.types = dict(task_types) if task_types is not None else None
            if default_options is not None:
                core.default = default_options
            if max_payload_bytes is not None:
                core.max_payload = max_payload_bytes
            if finished_records is not None:
                core.finished_cap = finished_records

    def _hot(self, method: str, *args: Any) -> Any:
        """A hot call made in this process: the dispatcher's one path, waiting here if parked."""
        while True:
            sink = LocalSink()
            result, error, handoffs = self.dispatcher.serve(method, args, sink)
            self.dispatcher.deliver(handoffs)
            if error is not None:
                raise error
            if result is not PARKED:
                return result
            consumer, wait_s = args[0], args[2]
            if not sink.event.wait(wait_s) and self.dispatcher.withdraw(consumer, sink):
                return None  # the wait ran out, and nothing was handed over meanwhile
            sink.event.wait()  # answered, or a hand-over is on its way
            if sink.answer is not None or wait_s is not None or not self.core.dispatching:
                return sink.answer
            args = (consumer, None, None, *args[3:])  # an unbounded wait outlived the park

    def push(self, message: dict[str, Any]) -> str:
        return str(self._hot("push", message))

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        return list(self._hot("push_many", messages))

    def report(self, consumer: str, report: Report) -> None:
        self._hot("report", consumer, report)

    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None, queues: Queues = None
    ) -> dict[str, Any] | None:
        msg: dict[str, Any] | None = self._hot("exchange", consumer, report, wait_s, queues)
        return msg

    def pop(
        self, consumer: str, wait_s: float | None = 0.0, queues: Queues = None
    ) -> dict[str, Any] | None:
        return self.exchange(consumer, None, wait_s, queues)

    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        with self.lock:
            self.dispatcher.parked.pop(consumer, None)
            return self.core.release(consumer, reason, error, exit_status)

    def set_dispatching(self, on: bool) -> None:
        with self.lock:
            self.core.dispatching = bool(on)
            self.dispatcher.dispatching_changed()

    def queue_size(self) -> int:
        with self.lock:
            return control.queue_size(self.core)

    def maintain(self) -> dict[str, int]:
        with self.lock:
            now = self._clock()
            promoted = self.core.promote(now)
            expired = self.core.expire_leases(now)
            forgotten = control.expire_finished(self.core, now)
        swept = self.store.cleanup()
        return {
            "promoted": promoted,
            "leases_expired": expired,
            "records_expired": forgotten,
            "keys_expired": swept,
        }

    # -- records and control -----------------------------------------------------------------
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self.lock:
            rec = control.lookup(self.core, task_id)
            return None if rec is None else rec.as_dict()

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records in memory, newest first (the durable broker reads its database)."""
        with self.lock:
            return control.list_records(self.core, status, task_type, since, limit)

    def get_queue_stats(self) -> dict[str, int]:
        """Counts of the task records in memory by status."""
        with self.lock:
            return self.core.counts.nonzero()

    def cancel(self, task_id: str) -> str:
        with self.lock:
            return control.cancel(self.core, task_id)

    def pending_cancels(self) -> list[tuple[str, str, float]]:
        with self.lock:
            return control.pending_cancels(self.core)

    def retry_task(self, task_id: str) -> bool:
        with self.lock:
            return control.retry(self.core, task_id)

    def purge(self, status: str, older_than_s: float) -> int:
        with self.lock:
            return control.purge(self.core, status, older_than_s)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            out = control.stats(self.core)
        out["store_keys"] = self.store.get_store_size()
        return out

    # -- the public store --------------------------------------------------------------------
    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.store.set_public(key, value, ttl)

    def get_public(self, key: str) -> bytes | None:
        return self.store.get_public(key)

    def delete_public(self, key: str) -> bool:
        return self.store.delete_public(key)

    def cleanup(self) -> int:
        return self.store.cleanup()

    def get_store_size(self) -> int:
        return self.store.get_store_size()

    def list_keys(self) -> list[str]:
        return self.store.list_keys()

    def clear_store(self) -> None:
        self.store.clear_store()

    # -- the status board --------------------------------------------------------------------
    def publish_status(self, status: dict[str, Any]) -> None:
        self.board.publish_status(status)

    def get_status(self) -> dict[str, Any]:
        return self.board.status(self.stats())

    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        self.board.publish_scheduler_status(doc)

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        return self.board.scheduler_status()

    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        self.board.publish_component_status(name, doc)

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        return self.board.component_statuses()

    def ping(self) -> str:
        return "pong"

    # -- for the metrics and HTTP endpoints in this process (not on the wire) -----------------
    def master_status(self) -> dict[str, Any]:
        return self.board.master_status()

    def dispatching(self) -> bool:
        return self.core.dispatching

    def known_task_types(self) -> list[str]:
        """The registered task type names (empty when any type is accepted)."""
        with self.lock:
            return sorted(self.core.types or ())

    def held(self) -> dict[str, str]:
        """consumer -> task id, for every task being run now."""
        with self.lock:
            return dict(self.core.held)

    def drain_events(self) -> list[tuple[str, str, str, float]]:
        """Observations since the last call: (event, type, status, seconds) for metrics."""
        with self.lock:
            out = list(self.core.events)
            self.core.events.clear()
            return out

    @property
    def counters(self) -> Any:
        return self.core.counters

    def close(self) -> None:
        """Answer every parked consumer None and stop the dispatcher (the broker closes)."""
        self.dispatcher.stop()
