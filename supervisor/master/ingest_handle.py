"""The master's side of the ingest processes: one per ``--ingest`` URL, started, respawned with
backoff, replaced on HUP when the URLs change, stopped first on shutdown.

One child per URL (not one for all): a RabbitMQ that hangs or a queue in flood stalls only its
own child, a crash restarts only that queue's consumer, and each child publishes its own status
document. A child that dies is forked again after a growing delay (see
:mod:`supervisor.master.respawn`); RabbitMQ being down does not kill it (it retries inside), so
a death here is a bug or an OOM kill, and what it held unacked went back to RabbitMQ with it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from supervisor import osutil
from supervisor.ingest.url import IngestSpec, check_task_types, parse_ingest_urls
from supervisor.master.respawn import RespawnedChild

if TYPE_CHECKING:
    from supervisor.broker.backend import BrokerBackend
    from supervisor.config import Settings

STOP_WAIT_S = 10.0  # a child finishes its batch and closes within about a second


def ingest_specs(settings: Settings, task_types: Collection[str]) -> list[IngestSpec]:
    """The ``ingest`` setting's URLs parsed, each queue a registered task type of the app
    (else one ConfigError naming the value and what is expected)."""
    specs = parse_ingest_urls(getattr(settings, "ingest", ()) or ())
    check_task_types(specs, task_types)
    return specs


def build_ingest(
    spec: IngestSpec, *, settings: Settings, backend: BrokerBackend, close_fds: Sequence[int]
) -> Any:
    """The IngestProcess of ``spec``, publishing under this node's name: ``--node-name``, else
    the Redis backend's node name, else the host name."""
    from supervisor.ingest.process import IngestProcess  # imports pika: only when ingesting

    node = settings.node_name or getattr(backend, "node", None) or socket.gethostname()
    return IngestProcess(
        spec=spec,
        connect=backend.history_connector(),
        node=str(node),
        close_fds=close_fds,
        options={"max_payload_bytes": settings.max_payload_bytes},
    )


class IngestChild(RespawnedChild):
    """The handle of one ingest process (its spec, pid, backoff)."""

    def __init__(
        self,
        spec: IngestSpec,
        make: Callable[[IngestSpec], Any],
        cap_s: float,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        # make(spec) builds an IngestProcess (pre-fork: touches nothing)
        super().__init__(
            lambda: int(make(spec).start()),
            what=f"the ingest of queue {spec.queue!r}",
            cap_s=cap_s,
            kill=kill,
        )
        self.spec = spec
        self.log = self.log.bind(queue=spec.queue)

    def on_exit(self, status: int, now: float) -> None:
        how = osutil.describe_status(status)
        self.pid = 0
        if self.stopping:
            self.log.debug("{} stopped ({})", self.what, how)
            return
        delay = self.crashed(now)
        self.log.error(
            "the ingest process of queue {!r} died ({}); its unacked messages go back to "
            "RabbitMQ; restarting it in {:.1f} s",
            self.spec.queue,
            how,
            delay,
        )


class IngestChildren:
    """Every ingest child of the master. ``make(spec)`` builds one IngestProcess; ``kill``
    signals a child (a fake in tests)."""

    def __init__(
        self,
        specs: Sequence[IngestSpec],
        make: Callable[[IngestSpec], Any],
        *,
        backoff_cap_s: float = 30.0,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        self._make = make
        self._cap_s = backoff_cap_s
        self._kill = kill
        self.children = [self._child(s) for s in specs]
        self._retired: list[IngestChild] = []  # replaced on HUP, still stopping
        self.stopping = False
        self.log = logger.bind(component="master")

    def _child(self, spec: IngestSpec) -> IngestChild:
        return IngestChild(spec, self._make, self._cap_s, self._kill)

    def start(self, now: float) -> None:
        for child in self.children:
            child.start(now)

    def owns(self, pid: int) -> bool:
        return bool(pid) and pid in self.alive

    def on_exit(self, pid: int, status: int, now: float) -> bool:
        """True when ``pid`` was an ingest child (then it is handled)."""
        for child in (*self.children, *self._retired):
            if child.pid == pid:
                child.on_exit(status, now)
                self._retired = [c for c in self._retired if c.pid]
                return True
        return False

    def tick(self, now: float) -> None:
        if not self.stopping:
            for child in self.children:
                child.tick(now)

    def next_wake(self, now: float) -> float | None:
        waits = [w for c in self.children if (w := c.next_wake(now)) is not None]
        return min(waits) if waits and not self.stopping else None

    @property
    def alive(self) -> list[int]:
        return [c.pid for c in (*self.children, *self._retired) if c.pid]

    def stop(self, *, kill: bool = False) -> None:
        """Stop consuming (SIGTERM: each finishes its batch; unacked messages go back)."""
        if self.stopping and not kill:
            return
        if not self.stopping and self.alive:
            self.log.info("stopping {} ingest process(es)", len(self.alive))
        self.stopping = True
        for child in (*self.children, *self._retired):
            child.stop(kill=kill)

    def reconfigure(self, specs: Sequence[IngestSpec], now: float) -> None:
        """HUP: stop the children whose URL is gone, start the new ones; keep the others."""
        if self.stopping:
            return
        wanted = {s.url: s for s in specs}
        keep = [c for c in self.children if c.spec.url in wanted]
        gone = [c for c in self.children if c.spec.url not in wanted]
        have = {c.spec.url for c in keep}
        added = [self._child(s) for s in specs if s.url not in have]
        for c in gone:
            c.stop()
        self._retired = [*self._retired, *(c for c in gone if c.pid)]
        self.children = keep + added
        for c in added:
            c.start(now)
        if gone or added:
            self.log.info(
                "SIGHUP: ingest of {} queue(s) stopped, {} started",
                len(gone),
                len(added),
            )

    def wait_stopped(
        self, timeout_s: float = STOP_WAIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """At the master's end, before the broker stops: reap every child within
        ``timeout_s``, then SIGKILL the ones left (nothing is lost: unacked goes back)."""
        self.stop()
        deadline = clock() + timeout_s
        for child in (*self.children, *self._retired):
            if child.pid:
                osutil.stop_child(child.pid, max(0.0, deadline - clock()), clock)
                child.pid = 0
        self._retired = []
