"""The master's side of the scheduler process: start it, respawn it with backoff, stop it.

The scheduler runs in a child of its own (see :mod:`supervisor.scheduling.process`) so that a
slow or locked database never delays the master's loop. If it dies it is forked again after a
growing delay; if it exits with ``ExitCode.USAGE`` (bad database URL, missing driver, a newer
schema) it is not respawned, and the workers carry on without scheduling.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor import osutil
from supervisor.errors import ExitCode
from supervisor.policy import SlotBackoff

HEALTHY_AFTER_S = 10.0


class SchedulerChild:
    def __init__(self, make: Callable[[], Any], *, backoff_cap_s: float = 30.0) -> None:
        self._make = make  # builds a SchedulerProcess (pre-fork: touches nothing)
        self.backoff = SlotBackoff(base_s=0.5, cap_s=backoff_cap_s)
        self.pid = 0
        self.started_at = 0.0
        self.spawn_after: float | None = None
        self.given_up = False
        self.stopping = False
        self.restarts = 0
        self.restarting = False
        self.log = logger.bind(component="master")

    def start(self, now: float) -> int:
        """Fork the scheduler process; 0 if fork failed (it is tried again after a backoff)."""
        try:
            self.pid = self._make().start()
        except OSError as exc:  # EAGAIN at a pid limit, ENOMEM: the master must not die of it
            delay = self.backoff.crashed()
            self.spawn_after = now + delay
            self.log.error("cannot fork the scheduler ({}); trying again in {:.1f} s", exc, delay)
            return 0
        self.started_at = now
        self.spawn_after = None
        self.log.debug("forked scheduler pid {}", self.pid)
        return self.pid

    def on_exit(self, status: int, now: float) -> None:
        """The scheduler process was reaped with ``status``."""
        how = osutil.describe_status(status)
        self.pid = 0
        if self.stopping:
            return
        if self.restarting:  # replaced on purpose (HUP): at once, quietly
            self.restarting = False
            self.spawn_after = now
            self.log.info("scheduler replaced to read the reloaded configuration")
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == ExitCode.USAGE:
            self.given_up = True
            self.log.critical(
                "the scheduler cannot work with this configuration ({}); "
                "running without it (see its error above)",
                how,
            )
            return
        if now - self.started_at >= HEALTHY_AFTER_S:
            self.backoff.healthy()
        delay = self.backoff.crashed()
        self.spawn_after = now + delay
        self.restarts += 1
        self.log.error("the scheduler process died ({}); restarting it in {:.1f} s", how, delay)

    def tick(self, now: float) -> None:
        if self.spawn_after is not None and now >= self.spawn_after and not self.stopping:
            self.start(now)

    def next_wake(self, now: float) -> float | None:
        return None if self.spawn_after is None else max(0.0, self.spawn_after - now)

    def stop(self, *, kill: bool = False) -> None:
        self.stopping = True
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def restart(self) -> None:
        """Replace it (HUP): the next one reads the reloaded schedules."""
        if self.pid:
            self.restarting = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
