"""The broker contract: a priority task queue with delays and leases, and a public key/value store.

Two implementations satisfy it: :class:`~supervisor.broker.memory.MemoryBroker` (embedded, served
to every process by the manager in :mod:`supervisor.broker.server`) and, later, Redis. The same
contract tests run against each.

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


class Broker(abc.ABC):
    """What every broker does. All methods are safe to call from many threads/processes."""

    # -- queue -------------------------------------------------------------------------------
    @abc.abstractmethod
    def push(self, message: dict[str, Any]) -> str:
        """Accept one task (``type``, ``params`` bytes, optional ``task_id``, ``priority``,
        ``eta``); return its id. Raises TaskError for an unknown type or a duplicate live id."""

    @abc.abstractmethod
    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        """Accept several tasks at once, all or none; return their ids in order."""

    @abc.abstractmethod
    def pop(self, consumer: str, wait_s: float | None = 0.0) -> dict[str, Any] | None:
        """Hand the highest-priority ready task to ``consumer``, waiting up to ``wait_s``.

        The attempt is counted here. Returns None on timeout or while dispatching is off."""

    @abc.abstractmethod
    def report(self, consumer: str, report: Report) -> None:
        """Record the outcome of a task that ``consumer`` held; applies the retry policy."""

    @abc.abstractmethod
    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None
    ) -> dict[str, Any] | None:
        """``report`` then ``pop`` in one round trip (the worker's hot path)."""

    @abc.abstractmethod
    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        """The consumer is gone: fail the task it held with ``reason`` (``shutdown`` puts it
        back without counting the attempt). Returns the task id it held, if any."""

    @abc.abstractmethod
    def set_dispatching(self, on: bool) -> None:
        """Stop (or resume) handing out tasks; waiting pops return None at once."""

    @abc.abstractmethod
    def queue_size(self) -> int:
        """Tasks ready to run now (not delayed, not running)."""

    @abc.abstractmethod
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task's record, or None when the id is unknown (never a guessed status)."""

    @abc.abstractmethod
    def retry_task(self, task_id: str) -> bool:
        """Queue a dead or cancelled task again with its attempts reset (history kept)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts by status and priority, oldest queued age, store size, cumulative counters."""

    @abc.abstractmethod
    def maintain(self) -> dict[str, int]:
        """Periodic housekeeping: promote due delayed tasks, expire leases, sweep the store."""

    # -- public store ------------------------------------------------------------------------
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
