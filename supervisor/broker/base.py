"""The broker contract: a priority task queue with delays and leases, task records and control,
a public key/value store, and a status board.

Every caller (the seed API's :class:`~supervisor.client.queue.Queue`, the worker, the master, the
scheduler's pusher, the CLI) programs against :class:`Broker`, split by role into
:class:`TaskQueue`, :class:`TaskControl`, :class:`PublicStore` and :class:`StatusBoard`.
Implementations: the embedded broker (:mod:`supervisor.broker.embedded`: in memory or journaled,
served to other processes by a manager) and Redis (:mod:`supervisor.broker.redis`). Remote
callers hold a :class:`~supervisor.client.proxy.BrokerClient`, a typed proxy whose methods are
exactly :data:`CONTRACT_METHODS`; the server exposes nothing else. ``tests/contract/`` runs the
same tests over every implementation.

Wire format. Task params and store values cross the wire as pickled ``bytes`` made by the client
(:mod:`supervisor.payload`): the broker never unpickles user data, so a bad value cannot crash it
and the hot path stays on C pickle. A *message* handed to a consumer is a dict::

    {"task_id": str, "type": str, "params": bytes, "priority": int, "attempt": int,
     "pushed_at": float, "eta": float | None}

A *report* is ``(task_id, outcome, detail)`` with ``outcome`` one of ``succeeded`` (detail: the
result, JSON-able or None), ``failed`` (detail: {"reason", "error", "traceback"}), ``retry``
(detail: {"error", "delay"}) or ``invalid`` (detail: {"error"}; goes dead at once).
"""

from __future__ import annotations

import abc
from typing import Any

Report = tuple[str, str, Any]

MAX_DELAY_S = 10 * 365 * 86_400.0  # a delay or eta further than 10 years is refused as a mistake

# Task statuses (see ARCHITECTURE "Task lifecycle").
SCHEDULED = "scheduled"  # waiting for its eta (first attempt)
QUEUED = "queued"
RUNNING = "running"
RETRYING = "retrying"  # waiting for its retry backoff
SUCCEEDED = "succeeded"
DEAD = "dead"
CANCELLED = "cancelled"
ACTIVE_STATUSES = (SCHEDULED, QUEUED, RUNNING, RETRYING)
FINAL_STATUSES = (SUCCEEDED, DEAD, CANCELLED)

# Reasons an attempt ended without success.
REASON_ERROR = "error"
REASON_TIMEOUT = "timeout"
REASON_WORKER_LOST = "worker_lost"
REASON_INVALID = "invalid"
REASON_RETRY = "retry"
REASON_CANCELLED = "cancelled"  # a user cancelled it: finished as cancelled, never retried
REASON_SHUTDOWN = "shutdown"  # killed by the shutdown: requeued, the attempt not counted


Queues = tuple[str, ...] | list[str] | None  # named queues a consumer takes from (None: all)


class TaskQueue(abc.ABC):
    """The queue and the task lifecycle: push, hand out (counting the attempt), report."""

    @abc.abstractmethod
    def configure(
        self,
        task_types: dict[str, Any] | None,
        *,
        default_options: Any = None,
        max_payload_bytes: int | None = None,
        finished_records: int | None = None,
    ) -> None:
        """Set the known task types (``{name: TaskOptions}``; None: accept any type) and the
        limits. Called at start and on HUP; tasks already queued keep their place."""

    @abc.abstractmethod
    def push(self, message: dict[str, Any]) -> str:
        """Accept one task (``type``, ``params`` bytes, optional ``task_id``, ``priority``,
        ``eta`` or ``delay``, ``unique_key``, ``schedule_id``, ``scheduled_at``, ``queue``);
        return its id. Without a ``queue`` the task goes to its type's registered queue
        (``default`` for a type the broker does not know).

        Safe when it returns (journaled, or in Redis). A ``unique_key`` held by a live task
        returns that task's id instead. Raises TaskError (UnknownTaskType, DuplicateTaskId) for
        bad input, and changes nothing then."""

    @abc.abstractmethod
    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        """Accept several tasks at once, all or none; return their ids in order."""

    @abc.abstractmethod
    def pop(
        self, consumer: str, wait_s: float | None = 0.0, queues: Queues = None
    ) -> dict[str, Any] | None:
        """Hand the highest-priority ready task of the named ``queues`` (None: every queue; a
        Redis handle built with ``queues=`` uses those) to ``consumer``, waiting up to
        ``wait_s`` (None: until one comes). Priority is global across the queues, ties go
        first pushed first.

        The attempt is counted here. Returns None on timeout or while dispatching is off.
        Raises TaskError if ``consumer`` still holds a task it has not reported."""

    @abc.abstractmethod
    def report(self, consumer: str, report: Report) -> None:
        """Record the outcome of the task ``consumer`` holds and apply the retry policy.

        A report for a task the consumer no longer holds (released, timed out, recovered
        elsewhere) changes nothing: a task is never recorded twice."""

    @abc.abstractmethod
    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None, queues: Queues = None
    ) -> dict[str, Any] | None:
        """``report`` (if any) then ``pop`` in one round trip: the worker's hot path."""

    @abc.abstractmethod
    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        """The consumer is gone: fail the task it held with ``reason`` (``shutdown`` puts it
        back first in its lane without counting the attempt). Returns the task id, if any."""

    @abc.abstractmethod
    def set_dispatching(self, on: bool) -> None:
        """Stop (or resume) handing out tasks; waiting pops return None at once."""

    @abc.abstractmethod
    def queue_size(self) -> int:
        """Tasks ready to run now (not delayed, not running)."""

    @abc.abstractmethod
    def maintain(self) -> dict[str, int]:
        """Housekeeping, about once a second: promote due delayed tasks, expire leases of
        external consumers, sweep the store. Returns counts of what it did."""


class TaskControl(abc.ABC):
    """Task records and control: read, list, count, cancel, retry, purge."""

    @abc.abstractmethod
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task's record, or None when the id is unknown (never a guessed status)."""

    @abc.abstractmethod
    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Task records newest first, filtered by status, type and push time (epoch s)."""

    @abc.abstractmethod
    def get_queue_stats(self) -> dict[str, int]:
        """Counts of task records by status (statuses with none left out)."""

    @abc.abstractmethod
    def cancel(self, task_id: str) -> str:
        """``cancelled`` (it was waiting: removed at once), ``cancelling`` (it runs: its
        master is told through :meth:`pending_cancels`), ``finished`` or ``unknown``."""

    @abc.abstractmethod
    def pending_cancels(self) -> list[tuple[str, str, float]]:
        """(consumer, task id, requested at) of running tasks a user cancelled."""

    @abc.abstractmethod
    def retry_task(self, task_id: str) -> bool:
        """Queue a dead or cancelled task again with its attempts reset (history kept)."""

    @abc.abstractmethod
    def purge(self, status: str, older_than_s: float) -> int:
        """Delete finished records of ``status`` finished more than ``older_than_s`` ago;
        return how many. Raises TaskError for a status that is not final."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts by status and priority, oldest queued age, store size, cumulative counters.

        Keys: ``queued``, ``by_priority``, ``oldest_age_s``, ``scheduled``, ``retrying``,
        ``running``, ``by_status``, ``store_keys``, ``dispatching``, ``counters``. Cheap: it is
        scraped often."""


class PublicStore(abc.ABC):
    """The public key/value store with TTL (values are pickled bytes made by the client)."""

    @abc.abstractmethod
    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds when given."""

    @abc.abstractmethod
    def get_public(self, key: str) -> bytes | None:
        """The value, or None when missing or expired (expired keys are never returned)."""

    @abc.abstractmethod
    def delete_public(self, key: str) -> bool:
        """Remove ``key``; True when it existed (and had not expired)."""

    @abc.abstractmethod
    def cleanup(self) -> int:
        """Remove expired keys now; return how many."""

    @abc.abstractmethod
    def get_store_size(self) -> int:
        """Number of live keys."""

    @abc.abstractmethod
    def list_keys(self) -> list[str]:
        """Live keys, sorted."""

    @abc.abstractmethod
    def clear_store(self) -> None:
        """Remove every key."""


class StatusBoard(abc.ABC):
    """Where the master and the scheduler publish their status for ``supervisor status``."""

    @abc.abstractmethod
    def publish_status(self, status: dict[str, Any]) -> None:
        """The master's view of its workers (replaces the previous one)."""

    @abc.abstractmethod
    def get_status(self) -> dict[str, Any]:
        """``{"master": ..., "stats": ..., "scheduler": ... | None}``: what ``status`` shows."""

    @abc.abstractmethod
    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        """The scheduler's status document (see :func:`supervisor.scheduling.status.status_doc`);
        the board notes when it came. Raises TaskError when ``doc`` is not a dict."""

    @abc.abstractmethod
    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        """The scheduler's last document and its age in seconds (None: never published)."""

    @abc.abstractmethod
    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        """The status document of a component of some node (e.g. an ingest child), under a
        ``name`` unique across the cluster (so it holds the node's name); replaces the previous
        one and the board notes when it came. Raises TaskError for a bad name or doc."""

    @abc.abstractmethod
    def component_statuses(self) -> dict[str, dict[str, Any]]:
        """Every component's last document by name, each with ``report_age_s`` added."""

    @abc.abstractmethod
    def ping(self) -> str:
        """``"pong"``: the broker answers."""


class Broker(TaskQueue, TaskControl, PublicStore, StatusBoard):
    """The whole contract. All methods are safe to call from many threads and processes."""


def contract_methods() -> frozenset[str]:
    """The names of every method of the contract: what a proxy has, what a server exposes."""
    return frozenset(
        name
        for cls in (TaskQueue, TaskControl, PublicStore, StatusBoard)
        for name in cls.__abstractmethods__
    )


CONTRACT_METHODS = contract_methods()
