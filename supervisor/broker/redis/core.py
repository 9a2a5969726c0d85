"""The connection, configuration and policy shared by the Redis broker's parts."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from supervisor.broker import base
from supervisor.broker.redis.codec import time_str
from supervisor.broker.redis.keys import Keys
from supervisor.broker.redis.scripts import Scripts
from supervisor.config_values import node_name_problem
from supervisor.errors import BrokerError
from supervisor.policy import compute_backoff
from supervisor.registry import TaskOptions

WORKER_PREFIX = "worker:"  # consumers supervised by their node's master (which renews them)
LEASE_GRACE_S = 30.0  # other consumers: nobody renews, the lease is the type's timeout + this


class LeaseLost(BrokerError):
    """A report for an attempt whose lease was lost (recovered, or released): refused."""


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def default_node() -> str:
    """``<hostname>:<pid>``: a node's name when none is given."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Core:
    """Connection, key names, scripts, clock and per-type options."""

    _history: Any = None  # the task table of finished records gone from Redis (see broker)

    def __init__(
        self,
        *,
        url: str | None,
        client: redis.Redis | None,
        prefix: str,
        node: str | None,
        clock: Callable[[], float],
        rng: random.Random | None,
        task_types: dict[str, TaskOptions] | None,
        default_options: TaskOptions | None,
        max_payload_bytes: int,
        finished_records: int,
        lease_s: float,
        result_ttl_s: float,
        failure_ttl_s: float,
    ) -> None:
        if client is None:
            if not url:
                raise BrokerError("RedisBroker needs a url or a client")
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=5.0,
                    socket_timeout=30.0,  # above any BLPOP block (at most 1 s)
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
                )
            except ValueError as exc:
                raise BrokerError(f"bad Redis URL {safe_url(url)}: {exc}") from None
            self.url = safe_url(url)
        else:
            kw = client.connection_pool.connection_kwargs
            where = f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
            self.url = safe_url(url) if url else where
        if not lease_s > 0:
            raise BrokerError(f"lease_s must be > 0, got {lease_s!r}")
        self._client = client
        self._keys = Keys(prefix)
        self._node = node or default_node()
        if problem := node_name_problem(self._node):
            raise BrokerError(f"node name {self._node!r}: {problem}")
        self._task_keys = self._keys.task_keys(self._node)
        self._clock = clock
        self._rng = rng or random.Random()
        self._types: dict[str, TaskOptions] | None = (
            dict(task_types) if task_types is not None else None
        )
        self._default = default_options or TaskOptions(
            timeout_s=300.0, max_retries=3, backoff_base_s=1.0, backoff_cap_s=300.0
        )
        self._max_payload = max_payload_bytes
        self._finished_cap = finished_records
        self._lease_ms = round(lease_s * 1000)
        self._ok_ttl_ms = round(result_ttl_s * 1000)
        self._fail_ttl_ms = round(failure_ttl_s * 1000)
        self._scripts = Scripts(client)
        self._lease_cache: tuple[Any, tuple[int, str]] | None = None

    # -- plumbing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Redis errors become BrokerError naming the server (never its password)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerError(f"cannot reach Redis at {self.url}: {exc}") from None
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {self.url} refused a call: {exc}") from None

    def _run(self, name: str, args: list[Any], now: float | None = None) -> Any:
        """Run task script ``name`` with the header (clock, node, limits) and ``args``."""
        header = [
            time_str(self._clock() if now is None else now),
            self._node,
            self._finished_cap,
            self._ok_ttl_ms,
            self._fail_ttl_ms,
            self._lease_ms,
        ]
        with self._guard():
            return self._scripts.run(name, self._task_keys, header + args)

    def _qc(self, consumer: str) -> str:
        """The consumer's name qualified by this node (consumer names repeat across nodes)."""
        if not isinstance(consumer, str) or not consumer:
            raise BrokerError(f"consumer must be a non-empty string, got {consumer!r}")
        return f"{self._node}/{consumer}"

    def _lease_for(self, consumer: str) -> tuple[int, str]:
        """(lease ms, JSON of lease ms by task type or ""). A worker's lease is ``lease_s``,
        renewed by its master; nobody renews anyone else's, so it lasts the type's timeout
        plus a grace, as in MemoryBroker (the type is known only once the task is taken)."""
        if consumer.startswith(WORKER_PREFIX):
            return self._lease_ms, ""
        cached = self._lease_cache
        if cached is None or cached[0][0] is not self._types or cached[0][1] is not self._default:
            default = round((self._option("", "timeout_s", 300.0) + LEASE_GRACE_S) * 1000)
            by_type = {
                t: round((self._option(t, "timeout_s", 300.0) + LEASE_GRACE_S) * 1000)
                for t in (self._types or {})
            }
            lease = (default, json.dumps(by_type) if by_type else "")
            cached = ((self._types, self._default), lease)
            self._lease_cache = cached
        return cached[1]

    # -- policy ------------------------------------------------------------------------------
    def _options(self, task_type: str) -> TaskOptions:
        if self._types is not None and task_type in self._types:
            return self._types[task_type]
        return self._default

    def _option(self, task_type: str, name: str, fallback: Any) -> Any:
        """The type's option, else the default options', else ``fallback`` (0 is a value)."""
        value = getattr(self._options(task_type), name)
        if value is None:
            value = getattr(self._default, name)
        return fallback if value is None else value

    def _fail_item(
        self, qc: str, rec: dict[str, Any], reason: str, detail: dict[str, Any], now: float
    ) -> list[Any]:
        """The nine script arguments that fail attempt ``rec["attempts"]`` of ``rec`` held by
        ``qc``: the retry policy is decided here (``dead`` or ``retry`` with an eta)."""
        attempts = int(rec.get("attempts") or 0)
        task_type = rec.get("type", "")
        max_retries = self._option(task_type, "max_retries", 3)
        fate, eta = "retry", ""
        if reason == base.REASON_INVALID or attempts > max_retries:
            fate = "dead"
        elif reason not in (base.REASON_SHUTDOWN, base.REASON_CANCELLED):
            delay = detail.get("delay")
            if delay is None:
                delay = compute_backoff(
                    max(1, attempts),
                    base_s=self._option(task_type, "backoff_base_s", 1.0),
                    cap_s=self._option(task_type, "backoff_cap_s", 300.0),
                    rng=self._rng,
                )
            try:
                delay = max(0.0, float(delay))
            except (TypeError, ValueError):
                delay = 0.0
            eta = time_str(now + delay)
        exit_status = detail.get("exit_status")
        return [
            qc,
            rec["task_id"],
            str(attempts),
            reason,
            str(detail.get("error", "") or "")[:4000],
            str(detail.get("traceback", "") or "")[-16000:],
            "" if not isinstance(exit_status, int) else str(exit_status),
            fate,
            eta,
        ]

    def _now(self) -> float:
        return self._clock()

    @staticmethod
    def _monotonic() -> float:
        return time.monotonic()
