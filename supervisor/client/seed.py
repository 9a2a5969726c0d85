"""The seed's module-level convenience functions, over one explicit default client.

``get_queue()`` returns, in a worker, the worker's own connection; in the master, the master's;
anywhere else, a client of the Redis broker at ``SUPERVISOR_BROKER``, or of the master found
with ``SUPERVISOR_ADDRESS``/``SUPERVISOR_AUTHKEY`` or the run folder's files (see
:func:`supervisor.client.discovery.locate`). This is the only module-level state in the package,
as in the seed.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from supervisor.client.discovery import REDIS_SCHEMES, published_redis
from supervisor.client.proxy import BrokerClient
from supervisor.client.queue import Queue

_lock = threading.Lock()
_default: Queue | None = None
_default_pid: int | None = None


def connect(
    address: str | None = None,
    authkey: str | bytes | None = None,
    run_dir: str | None = None,
    *,
    broker: str | None = None,
    key_prefix: str | None = None,
    timeout_s: float | None = None,
    max_payload_bytes: int | None = 1 << 20,
) -> Queue:
    """A new client of a running master's broker (see module docstring for how it is found).

    ``broker`` (or ``SUPERVISOR_BROKER``, or an ``address`` that is a ``redis://`` or
    ``rediss://`` URL) names a Redis broker: any process with the URL is a producer or a
    client, with no run folder; ``key_prefix`` (or ``SUPERVISOR_KEY_PREFIX``, default ``sv``)
    picks the cluster on that Redis."""
    url = broker or os.environ.get("SUPERVISOR_BROKER")
    if url is None and address is not None and address.startswith(REDIS_SCHEMES):
        url = address
    published = None if url or address else published_redis(run_dir)
    node = None
    if published is not None:  # the run folder of a master of this machine that uses Redis
        url, key_prefix, node = published[0], key_prefix or published[1], published[2]
    if url:
        from supervisor.broker.redis import RedisBroker

        prefix = key_prefix or os.environ.get("SUPERVISOR_KEY_PREFIX") or "sv"
        redis_broker = RedisBroker(url=url, prefix=prefix, node=node, task_types=None)
        try:
            redis_broker.ping()
        except BaseException:
            redis_broker.close()  # its connection pool, which a failed ping may have opened
            raise
        return Queue(redis_broker, max_payload_bytes=max_payload_bytes)
    client = BrokerClient.from_env(address, authkey, run_dir, timeout_s=timeout_s)
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return Queue(client, max_payload_bytes=max_payload_bytes)


def set_default_queue(queue: Queue | None) -> None:
    global _default, _default_pid
    with _lock:
        _default, _default_pid = queue, os.getpid() if queue is not None else None


def get_queue() -> Queue:
    """The process's default queue client, connected on first use."""
    global _default, _default_pid
    with _lock:
        if _default is None or _default_pid != os.getpid():
            _default, _default_pid = connect(), os.getpid()
        return _default


def push_task(task: dict[str, Any], priority: int | None = None, delay: float | None = None) -> str:
    return get_queue().push_task(task, priority=priority, delay=delay)


def pop_task(timeout: float | None = None) -> dict[str, Any] | None:
    return get_queue().pop_task(timeout)


def task_done(task_id: str | None = None, result: Any = None) -> None:
    get_queue().task_done(task_id, result)


def get_queue_size() -> int:
    return get_queue().get_queue_size()


def is_empty() -> bool:
    return get_queue().is_empty()


def set_public(key: str, value: Any, ttl: float | None = None) -> None:
    get_queue().set_public(key, value, ttl)


def get_public(key: str) -> Any:
    return get_queue().get_public(key)


def delete_public(key: str) -> bool:
    return get_queue().delete_public(key)


def cleanup() -> int:
    return get_queue().cleanup()


def get_store_size() -> int:
    return get_queue().get_store_size()


def list_keys() -> list[str]:
    return get_queue().list_keys()


def clear_store() -> None:
    get_queue().clear_store()


def get_scheduler(database_url: str | None = None) -> Any:
    """The seed's scheduler API (``add_scheduler_task``, ``pause_task``, ...) on the schedules
    database (``SUPERVISOR_DATABASE`` or ``sqlite:///supervisor.db`` by default)."""
    from supervisor.scheduling.client import get_scheduler as scheduler_for

    return scheduler_for(database_url)
