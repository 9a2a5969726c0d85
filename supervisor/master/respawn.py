"""One helper child the master keeps running (the scheduler, an ingest): fork it, reap it, fork
it again after a growing delay, stop it on request.

The delay is 0.5 s doubling to ``cap_s`` (a :class:`~supervisor.policy.SlotBackoff`), reset
once a child ran :data:`HEALTHY_AFTER_S`. A failed fork (EAGAIN at a pid limit, ENOMEM) is
retried after the same delay: the master must not die of it. What an exit means (given up,
replaced on purpose, crashed) is the subclass's :meth:`on_exit`; the shared part is here.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

from loguru import logger

from supervisor.policy import SlotBackoff

HEALTHY_AFTER_S = 10.0


class RespawnedChild:
    """``fork()`` starts the child and returns its pid; ``what`` names it in the log ("the
    scheduler"); ``kill`` signals it (a fake in tests)."""

    def __init__(
        self,
        fork: Callable[[], int],
        *,
        what: str,
        cap_s: float = 30.0,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        self._fork = fork
        self.what = what
        self._kill = kill
        self.backoff = SlotBackoff(base_s=0.5, cap_s=cap_s)
        self.pid = 0
        self.started_at = 0.0
        self.spawn_after: float | None = None
        self.stopping = False
        self.restarts = 0
        self.log = logger.bind(component="master")

    def start(self, now: float) -> int:
        """Fork the child; 0 if the fork failed (it is tried again after a backoff)."""
        try:
            self.pid = self._fork()
        except OSError as exc:
            delay = self.backoff.crashed()
            self.spawn_after = now + delay
            self.log.error("cannot fork {} ({}); trying again in {:.1f} s", self.what, exc, delay)
            return 0
        self.started_at = now
        self.spawn_after = None
        self.log.debug("forked {}: pid {}", self.what, self.pid)
        return self.pid

    def crashed(self, now: float) -> float:
        """Schedule the next start after an unplanned exit; the delay until then."""
        if now - self.started_at >= HEALTHY_AFTER_S:
            self.backoff.healthy()
        delay = self.backoff.crashed()
        self.spawn_after = now + delay
        self.restarts += 1
        return delay

    def on_exit(self, status: int, now: float) -> None:
        """The child was reaped with ``status``."""
        raise NotImplementedError

    def tick(self, now: float) -> None:
        if self.spawn_after is not None and now >= self.spawn_after and not self.stopping:
            self.start(now)

    def next_wake(self, now: float) -> float | None:
        return None if self.spawn_after is None else max(0.0, self.spawn_after - now)

    def signal(self, signum: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                self._kill(self.pid, signum)

    def stop(self, *, kill: bool = False) -> None:
        """No more starts; SIGTERM the child (SIGKILL with ``kill``)."""
        self.stopping = True
        self.spawn_after = None
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
