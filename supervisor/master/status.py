"""What the master tells its broker on every loop turn: housekeeping and its own status.

Once a second the broker's ``maintain`` (due delayed tasks, expired leases, the store's TTLs);
the backend's ``tick`` (e.g. lease renewal for the workers' tasks); and the master's status
document for ``supervisor status`` and the HTTP endpoints, at once whenever the workers changed.
A failed call is logged and tried again on the next turn: the master never stops for it.

The document names the node (``node``: the backend's node name, else ``--node-name``, else the
host name), which labels the node's metrics, and carries the backend's own counters when it has
any (``backend``: the Redis backend's lease renewals), which the metrics export.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor.broker.backend import BrokerBackend
from supervisor.broker.base import Broker
from supervisor.config import Settings
from supervisor.errors import BrokerError
from supervisor.master.pool import WorkerPool

MAINTAIN_EVERY_S = 1.0


class StatusPublisher:
    """``state()`` and ``settings()`` read the master's current ones (both change on the way)."""

    def __init__(
        self,
        *,
        broker: Broker,
        backend: BrokerBackend,
        pool: WorkerPool,
        state: Callable[[], str],
        settings: Callable[[], Settings],
    ) -> None:
        self.broker = broker
        self.backend = backend
        self.pool = pool
        self.state = state
        self.settings = settings
        self.log = logger.bind(component="master")
        self._last_maintain = 0.0
        self._published_pids: frozenset[tuple[int, bool, bool]] = frozenset()

    def tick(self, now: float) -> None:
        pool = self.pool
        if pool.pending_releases:
            pool.release_pending()
        pids = pool.generation()
        due = now - self._last_maintain >= MAINTAIN_EVERY_S
        try:
            self.backend.tick(now, [w.consumer for w in pool.workers.values()])
            if pids != self._published_pids or due:
                # first: a killed worker must not look ready a moment longer than it must
                self.broker.publish_status(self.snapshot(now))
                self._published_pids = pids
            if due:
                self._last_maintain = now
                self.broker.maintain()
        except BrokerError as exc:
            self.log.error("broker tick failed: {}", exc)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The master's status document (``status["master"]``)."""
        s = self.settings()
        counters = getattr(self.backend, "status_counters", None)
        return {
            "pid": os.getpid(),
            "node": self.node_name(s),
            "state": self.state(),
            "desired_workers": self.pool.desired,
            "workers": self.pool.snapshot(now),
            "restarts": dict(self.pool.stats.restarts),
            "loop_lag_s": round(self.pool.stats.loop_lag_s, 4),
            "scheduler": bool(s.scheduler),
            "max_memory_per_child_bytes": s.max_memory_per_child * 1024 * 1024,
            "backend": counters() if callable(counters) else {},
        }

    def node_name(self, s: Settings) -> str:
        node = getattr(self.backend, "node", None) or getattr(s, "node_name", None)
        return str(node) if node else socket.gethostname()
