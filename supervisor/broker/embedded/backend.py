"""The embedded broker as a master's backend: a forked broker process, hosting the HTTP endpoints.

The master calls :meth:`EmbeddedBackend.start` before it forks any worker: it forks the broker
process (:func:`~supervisor.broker.embedded.server.start_broker_process`) with every handled
signal blocked, so the child never runs the master's handlers. The broker, its manager threads
and the HTTP server's threads all live in that process; the master keeps none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from loguru import logger

from supervisor import osutil
from supervisor.broker.backend import BrokerBackend, Connector, http_hook
from supervisor.broker.base import Broker
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.server import start_broker_process
from supervisor.client.discovery import format_address
from supervisor.client.proxy import BrokerClient
from supervisor.errors import BrokerError

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.master.runfiles import RunFiles
    from supervisor.master.scoreboard import Scoreboard

STOP_WAIT_S = 5.0  # how long stop() waits for the broker to flush its journal before SIGKILL


def make_broker(s: Settings, options: dict[str, Any], default: Any) -> MemoryBroker:
    """The broker for the settings (runs in the broker process, after the fork)."""
    common: dict[str, Any] = dict(
        task_types=options,
        default_options=default,
        max_payload_bytes=s.max_payload_bytes,
        finished_records=s.finished_records,
    )
    if s.durability == "none":
        return MemoryBroker(**common)
    from supervisor.broker.embedded.durable import DurableBroker
    from supervisor.broker.embedded.journal import open_journal

    return DurableBroker(
        journal=open_journal(s.database, run_dir=s.run_dir, fold_process=True),
        result_ttl_s=s.result_ttl,
        failure_ttl_s=s.failure_ttl,
        **common,
    )


class EmbeddedBackend(BrokerBackend):
    """The broker process of this machine (in memory, or journaled to SQLite); ``clock`` times
    the wait in :meth:`stop`."""

    name = "embedded"

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._pid: int | None = None
        self._address: Any = None
        self._authkey = b""
        self._client: BrokerClient | None = None
        self.log = logger.bind(component="master")

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
        s = self.settings
        with fork_guard():
            self._pid, address = start_broker_process(
                address=run_files.address,
                authkey=run_files.authkey,
                make_broker=lambda: make_broker(s, task_types, default_options),
                on_serve=self.http_hook(scoreboard),
            )
        run_files.publish(address)
        self._address, self._authkey = run_files.address, run_files.authkey
        self._client = BrokerClient(self._address, self._authkey, timeout_s=10.0)
        return self._client

    def http_hook(self, scoreboard: Scoreboard) -> Callable[[MemoryBroker], None] | None:
        """The HTTP endpoints start in the broker process: the master never runs a thread."""
        return http_hook(self.settings, scoreboard)

    # -- watch -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None

    def on_child_exit(self, pid: int, status: int) -> str:
        self._pid = None
        lost = (
            "its queue is gone"
            if self.settings.durability == "none"
            else "unfinished tasks stay in its journal for the next start"
        )
        return f"the broker process died ({osutil.describe_status(status)}); {lost}"

    def connector(self) -> Connector:
        address, authkey = self._address, self._authkey

        def connect() -> Broker:
            return BrokerClient(address, authkey)

        return connect

    def describe(self) -> str:
        where = format_address(self._address) if self._address is not None else "?"
        return f"broker pid {self._pid} at {where}"

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        pid = self._pid
        if pid is None:
            return
        if self._client is not None:
            with contextlib.suppress(BrokerError):
                stats = self._client.stats()
                left = stats["queued"] + stats["scheduled"] + stats["retrying"]
                if left and self.settings.durability == "none":
                    self.log.warning(
                        "{} task(s) still queued or delayed are dropped with the in-memory broker",
                        left,
                    )
            self._client.close()
        # On SIGTERM it commits what its journal still holds, then exits.
        osutil.stop_child(pid, STOP_WAIT_S, self.clock)
        self._pid = None
