"""The master's side of the scheduler process: start it, respawn it with backoff, stop it.

The scheduler runs in a child of its own (see :mod:`supervisor.scheduling.process`) so that a
slow or locked database never delays the master's loop. If it dies it is forked again after a
growing delay (:mod:`supervisor.master.respawn`); if it exits with ``ExitCode.USAGE`` (bad
database URL, missing driver, a newer schema) it is not respawned, and the workers carry on
without scheduling.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from supervisor import osutil
from supervisor.errors import ExitCode
from supervisor.master.respawn import RespawnedChild


class SchedulerChild(RespawnedChild):
    def __init__(
        self,
        make: Callable[[], Any],
        *,
        backoff_cap_s: float = 30.0,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        # make() builds a SchedulerProcess (pre-fork: touches nothing)
        super().__init__(
            lambda: int(make().start()), what="the scheduler", cap_s=backoff_cap_s, kill=kill
        )
        self.given_up = False
        self.restarting = False

    def on_exit(self, status: int, now: float) -> None:
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
        delay = self.crashed(now)
        self.log.error("the scheduler process died ({}); restarting it in {:.1f} s", how, delay)

    def restart(self) -> None:
        """Replace it (HUP): the next one reads the reloaded schedules."""
        if self.pid:
            self.restarting = True
            self.signal(signal.SIGTERM)
