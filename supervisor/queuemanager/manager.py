"""``QueueManager`` and ``QueueBackend``: the user's document's queue API, on Redis (our broker)
or RabbitMQ.

The contract of every method is the same on both backends (see ``redisqueue`` and ``amqp`` for
what each adds):

- ``push`` / ``push_many`` return True once the task (all of the batch) is safe on the broker,
  False with the reason logged (loguru, ``component="queue"``) when the broker cannot be
  reached or refused it -- never an exception for a broker that is down. Bad arguments raise
  :class:`~supervisor.errors.TaskError`.
- ``pull`` returns ``{"task_id", "data", "priority"}`` or None (nothing within ``timeout``, or
  the broker unreachable: logged). The task is held until ``task_done`` / ``task_failed`` /
  ``release``; never acknowledged, it goes back to the queue (RabbitMQ: when this connection
  ends; Redis: when its lease runs out). Delivery is at least once.
- ``get_queue_length`` and ``clear`` raise :class:`~supervisor.errors.BrokerError` when the
  broker is down (a made-up 0 would mislead).
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from supervisor.errors import ConfigError
from supervisor.queuemanager.validate import Message, check_batch, check_task


class QueueBackend(enum.Enum):
    """Where a QueueManager's queue lives."""

    REDIS = "redis"
    RABBITMQ = "rabbitmq"


class Backend(Protocol):
    """What a backend implements (arguments already checked)."""

    url: str

    def push(self, task_id: str, data: dict[str, Any], priority: int) -> bool: ...
    def push_many(self, tasks: list[tuple[str, dict[str, Any], int]]) -> bool: ...
    def pull(self, timeout: float | None) -> Message | None: ...
    def task_done(self, task_id: str) -> bool: ...
    def task_failed(self, task_id: str, error: str, requeue: bool | None) -> bool: ...
    def release(self, task_id: str) -> bool: ...
    def keepalive(self) -> None: ...
    def length(self) -> int: ...
    def clear(self) -> int: ...
    def close(self) -> None: ...


class QueueManager:
    """Push, pull and manage one named task queue (the document's API).

    ``QueueManager(backend=QueueBackend.REDIS, redis_url=..., queue_name=...)`` or
    ``QueueManager(backend=QueueBackend.RABBITMQ, rabbitmq_url=..., queue_name=...)``.
    Keyword-only extras: ``prefix`` (Redis key prefix, ``"sv"`` as ``supervisor run`` uses),
    ``dead_letter`` (RabbitMQ: declare ``<queue>.dead``, default True), ``broker`` (Redis: a
    :class:`~supervisor.broker.redis.RedisBroker` to use instead of building one). Building
    one connects to nothing; the first call does. Not thread-safe: one per thread.
    """

    def __init__(
        self,
        backend: QueueBackend = QueueBackend.REDIS,
        redis_url: str = "redis://localhost:6379/0",
        queue_name: str = "meeting_tasks",
        rabbitmq_url: str = "amqp://guest:guest@localhost:5672/",
        *,
        prefix: str = "sv",
        dead_letter: bool = True,
        broker: Any = None,
    ) -> None:
        if not isinstance(queue_name, str) or not queue_name or len(queue_name) > 200:
            raise ConfigError(f"queue_name must be a non-empty string, got {queue_name!r}")
        self.backend = QueueBackend(backend)
        self.queue_name = queue_name
        self._impl: Backend
        if self.backend is QueueBackend.RABBITMQ:
            try:
                from supervisor.queuemanager.amqp import RabbitMQQueue
            except ImportError as exc:
                raise ConfigError(
                    "the RabbitMQ backend needs pika: pip install 'supervisor-workers[rabbitmq]' "
                    f"({exc})"
                ) from None
            self._impl = RabbitMQQueue(rabbitmq_url, queue_name, dead_letter=dead_letter)
        else:
            try:
                from supervisor.queuemanager.redisqueue import RedisQueue
            except ImportError as exc:
                raise ConfigError(
                    f"the Redis backend needs redis-py: pip install 'supervisor-workers[redis]' "
                    f"({exc})"
                ) from None
            self._impl = RedisQueue(redis_url, queue_name, prefix=prefix, broker=broker)

    @property
    def url(self) -> str:
        """The broker's URL, password masked."""
        return self._impl.url

    def push(self, task_id: str, task_data: dict[str, Any], priority: int = 5) -> bool:
        """Queue one task (priority 0-10, higher first); True once it is safe on the broker,
        False (reason logged) when the broker is down or refused it. TaskError for bad
        arguments (and, on Redis, DuplicateTaskId for an id still queued or running)."""
        return self._impl.push(*check_task(task_id, task_data, priority))

    def push_many(self, tasks: list[tuple[str, dict[str, Any], int]]) -> bool:
        """Queue ``[(task_id, task_data, priority), ...]`` all or none, in one round trip
        (Redis: one script call; RabbitMQ: one transaction commit). True/False as :meth:`push`."""
        return self._impl.push_many(check_batch(tasks))

    def pull(self, timeout: float | None = 1) -> Message | None:
        """The highest-priority waiting task, waiting up to ``timeout`` s (None: until one
        comes), as ``{"task_id", "data", "priority"}``; None when there is none. Acknowledge it
        with :meth:`task_done` or :meth:`task_failed`."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise ConfigError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        return self._impl.pull(timeout)

    def task_done(self, task_id: str) -> bool:
        """Acknowledge a pulled task as handled. False (logged) when it is not held or the
        broker could not record it: it will then be delivered again."""
        return self._impl.task_done(task_id)

    def task_failed(self, task_id: str, error: str = "", *, requeue: bool | None = None) -> bool:
        """Mark a pulled task failed. ``requeue=None`` applies the backend's policy: Redis
        retries it under the retry policy (bounded attempts, backoff); RabbitMQ dead-letters it
        (it keeps no attempt count). True: Redis retry policy / RabbitMQ back to the queue at
        once. False: dead at once on both."""
        return self._impl.task_failed(task_id, str(error), requeue)

    def release(self, task_id: str) -> bool:
        """Give a pulled task back untouched (its attempt not counted on Redis)."""
        return self._impl.release(task_id)

    def keepalive(self) -> None:
        """Keep held tasks' connection and leases alive while one runs (every second or so)."""
        self._impl.keepalive()

    def get_queue_length(self) -> int:
        """Tasks waiting to be pulled (not those pulled and unacknowledged)."""
        return self._impl.length()

    def clear(self) -> int:
        """Remove the waiting tasks; return how many (tasks being handled are not touched)."""
        return self._impl.clear()

    def close(self) -> None:
        """Close the connections; held tasks go back to the queue."""
        self._impl.close()

    def __enter__(self) -> QueueManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
