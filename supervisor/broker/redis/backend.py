"""Redis as a master's backend: no broker process of ours, leases renewed by the master.

``supervisor run --broker redis://…`` makes the node use Redis for the queue, the public store
and live task state. The master connects (a clear error naming the URL, without its password,
when Redis cannot be reached), warns loudly when the server may lose tasks (an eviction policy
other than ``noeviction``, persistence off), and forks the node process
(:mod:`supervisor.broker.redis.node`) for its HTTP endpoints and the task history writer.

On its loop (:meth:`RedisBackend.tick`) the master renews the leases of its workers' tasks every
``lease_s / 3`` (never the workers: a handler that hogs the CPU must not lose its lease), notes
in Redis that it did (:mod:`supervisor.broker.redis.nodes`: how the exporter of the metrics
tells a node that stopped renewing), and recovers, once a second, the expired leases of any
node, as ``worker_lost`` attempts. A worker
whose lease was lost (this node was cut off longer than a lease, and another node recovered its
task) is reported by :meth:`lost_consumers`: the master kills it, its late report would be
refused anyway. Calls from the master use short socket timeouts, and after a failure the backend
waits before it calls again, so a Redis that hangs never holds up the master's hard timeouts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from supervisor import osutil
from supervisor.broker.backend import BrokerBackend, Connector, http_hook
from supervisor.broker.base import Broker
from supervisor.broker.redis.core import default_node, safe_url
from supervisor.broker.redis.nodes import NodeBroker
from supervisor.client.discovery import KEY_PREFIX_FILE, NODE_FILE
from supervisor.errors import BrokerError, BrokerUnreachable
from supervisor.policy import compute_backoff

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.master.runfiles import RunFiles
    from supervisor.master.scoreboard import Scoreboard

MASTER_SOCKET_TIMEOUT_S = 2.0  # a master call to Redis that takes longer fails (and backs off)
# The node process's calls: a scrape while Redis hangs answers "broker down" within a scrape
# timeout (5 s in deploy/prometheus) instead of failing; above the history writer's 0.5 s block.
NODE_SOCKET_TIMEOUT_S = 3.0
STOP_WAIT_S = 5.0


class RedisBackend(BrokerBackend):
    name = "redis"

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.url: str = str(getattr(settings, "broker", None))
        self.where = safe_url(self.url)
        self.prefix: str = getattr(settings, "key_prefix", "sv")
        self.node: str = getattr(settings, "node_name", None) or default_node()
        self.lease_s: float = getattr(settings, "lease", 30.0)
        self._broker: NodeBroker | None = None
        self._pid: int | None = None
        self._options: tuple[dict[str, Any], Any] = ({}, None)
        self._next_renew = 0.0
        self._next_recover = 0.0
        self._quiet_until = 0.0  # after a failed call: no call before this (monotonic)
        self._failures = 0
        self._lost: list[str] = []
        self.recovered = 0
        self.renewals = {"ok": 0, "failed": 0}  # renewal rounds of this master
        self.leases_lost = 0  # tasks of this node whose lease another node recovered
        self.log = logger.bind(component="master", node=self.node)

    def make_broker(self, *, socket_timeout_s: float | None = None) -> NodeBroker:
        task_types, default = self._options
        client = None
        if socket_timeout_s is not None:
            import redis

            try:
                client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=socket_timeout_s,
                    socket_timeout=socket_timeout_s,
                )
            except ValueError as exc:
                raise BrokerError(f"bad Redis URL {self.where}: {exc}") from None
        s = self.settings
        return NodeBroker(
            url=self.url,
            client=client,
            prefix=self.prefix,
            node=self.node,
            task_types=task_types,
            default_options=default,
            max_payload_bytes=s.max_payload_bytes,
            finished_records=s.finished_records,
            lease_s=self.lease_s,
            result_ttl_s=s.result_ttl,
            failure_ttl_s=s.failure_ttl,
        )

    # -- start -------------------------------------------------------------------------------
    def start(
        self,
        *,
        run_files: RunFiles,
        scoreboard: Scoreboard,
        task_types: dict[str, Any],
        default_options: Any,
        fork_guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> Broker:
        from supervisor.broker.redis.node import fork_node_process

        self._options = (task_types, default_options)
        broker = self.make_broker(socket_timeout_s=MASTER_SOCKET_TIMEOUT_S)
        try:
            broker.ping()
        except BrokerError as exc:  # naming the URL (never its password): exit code 7
            raise BrokerUnreachable(f"{exc}; check --broker and that Redis runs") from None
        for problem in broker.check_server():
            self.log.warning("Redis at {} may lose tasks: {}", self.where, problem)
        # This node's task types and their queues, for producers that have only the URL.
        broker.configure(task_types or None, default_options=default_options)
        self._broker = broker
        # Local clients (`supervisor status`) find the broker in the run folder (0600 files).
        # The address file is what they look for: it comes last, once the prefix and the node
        # name are there, or a client would settle on the default prefix.
        _write_private(run_files.run_dir / KEY_PREFIX_FILE, self.prefix + "\n")
        _write_private(run_files.run_dir / NODE_FILE, self.node + "\n")
        run_files.publish(self.url)
        with fork_guard():
            self._pid = fork_node_process(
                make_broker=lambda: self.make_broker(socket_timeout_s=NODE_SOCKET_TIMEOUT_S),
                on_serve=self.http_hook(scoreboard),
                make_history=self.history_hook(),
            )
        return broker

    def http_hook(self, scoreboard: Scoreboard) -> Callable[[Any], None] | None:
        """The HTTP endpoints start in the node process: the master never runs a thread."""
        return http_hook(self.settings, scoreboard)

    def history_hook(self) -> Callable[[Any], Any] | None:
        """The task history writer of the node process (always: the task table is where
        finished tasks are kept and queried)."""
        database = self.settings.database
        node = self.node
        keep: float | None = getattr(self.settings, "redis_keep_finished", None)

        def make(broker: NodeBroker) -> Any:
            from supervisor.broker.embedded.tasktable import TaskTable
            from supervisor.broker.redis.history import HistoryWriter
            from supervisor.broker.redis.keys import Keys
            from supervisor.db import make_engine

            table = TaskTable(make_engine(database))
            table.migrate()
            broker._history = table  # the node's API answers for what has left Redis
            return HistoryWriter(
                broker._client, Keys(self.prefix), table, node=node, keep_finished_s=keep
            )

        return make

    # -- watch -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._broker is not None

    def on_child_exit(self, pid: int, status: int) -> str:
        self._pid = None
        return (
            f"the node process (HTTP endpoints, task history) died "
            f"({osutil.describe_status(status)}); the tasks stay in Redis at {self.where}"
        )

    def connector(self) -> Connector:
        return self.make_broker

    def history_connector(self) -> Connector:
        """A handle whose get_task falls back to the task table, for finished tasks that have
        left Redis (``redis_keep_finished``)."""
        database = self.settings.database

        def connect() -> Broker:
            from supervisor.broker.embedded.tasktable import TaskTable
            from supervisor.db import make_engine

            broker = self.make_broker()
            table = TaskTable(make_engine(database))
            table.migrate()  # idempotent (and serialized): the node process may not have yet
            broker._history = table
            return broker

        return connect

    def describe(self) -> str:
        return f"Redis at {self.where} (node {self.node}, key prefix {self.prefix!r})"

    def tick(self, now: float, consumers: Iterable[str]) -> None:
        """Renew this node's leases every lease/3 s; recover expired leases once a second."""
        broker = self._broker
        if broker is None or now < self._quiet_until:
            return
        try:
            if now >= self._next_renew:
                self._next_renew = now + self.lease_s / 3
                self._renew(broker, consumers)
            if now >= self._next_recover:
                self._next_recover = now + 1.0
                n = broker.recover()
                if n:
                    self.recovered += n
                    self.log.warning(
                        "recovered {} task(s) whose node stopped renewing their lease", n
                    )
        except BrokerError as exc:
            self._failures += 1
            # Back within a third of a lease of Redis' return, so leases are renewed before any
            # node may recover them (recovery waits a whole lease after a restart).
            cap = min(10.0, self.lease_s / 3)
            wait = compute_backoff(self._failures, base_s=min(0.5, cap), cap_s=cap, jitter=False)
            self._quiet_until = now + wait
            self._next_renew = min(self._next_renew, now)  # renew first thing when it is back
            self.log.error("{}; trying again in {:.1f} s", exc, wait)
            return
        if self._failures:
            self.log.info("Redis at {} answers again", self.where)
        self._failures = 0

    def _renew(self, broker: NodeBroker, consumers: Iterable[str]) -> None:
        try:
            got = broker.renew(sorted(consumers))
            broker.mark_renewed()  # even with no task: "this node renews" is what is watched
        except BrokerError:
            self.renewals["failed"] += 1
            raise
        self.renewals["ok"] += 1
        if got["lost"]:
            self._lost.extend(got["lost"])
            self.leases_lost += len(got["lost"])

    def status_counters(self) -> dict[str, Any]:
        """This master's lease counters, for its published status (and so for the metrics)."""
        return {"lease_renewals": dict(self.renewals), "leases_lost": self.leases_lost}

    def lost_consumers(self, held: dict[str, str]) -> list[str]:
        """Consumers (of ``held``: consumer -> task id) whose task's lease was lost; each is
        named once."""
        if not self._lost:
            return []
        lost = set(self._lost)
        self._lost.clear()
        return [c for c, t in held.items() if t in lost]

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        pid = self._pid
        if pid is not None:
            osutil.stop_child(pid, STOP_WAIT_S, self.clock)
            self._pid = None
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.forget_node()  # a clean stop: no stale status in `status`
            with contextlib.suppress(Exception):
                self._broker.forget_node_health()  # nor a node that "stopped renewing"
            with contextlib.suppress(Exception):
                self._broker.close()
            self._broker = None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
