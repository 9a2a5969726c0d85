"""What a worker's exit means: pure functions from a wait status to words and broker reasons.

The master reaps a worker and must decide three things: what to tell the broker about the task
the worker held (a reason and an error for the task record), how to count the restart in the
metrics, and how to say it in the log (the "replaced" line's *why*). No I/O here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from supervisor.broker.base import (
    REASON_CANCELLED,
    REASON_SHUTDOWN,
    REASON_TIMEOUT,
    REASON_WORKER_LOST,
)
from supervisor.errors import ExitCode
from supervisor.master import scoreboard as sb
from supervisor.osutil import describe_status

# Why the master killed a worker (WorkerHandle.kill_reason).
KILL_TIMEOUT, KILL_HUNG, KILL_CANCELLED, KILL_SHUTDOWN = "timeout", "hung", "cancelled", "shutdown"
KILL_LEASE_LOST = "lease_lost"

_KILL_BROKER_REASON = {
    KILL_TIMEOUT: REASON_TIMEOUT,
    KILL_SHUTDOWN: REASON_SHUTDOWN,
    KILL_CANCELLED: REASON_CANCELLED,
}
_KILL_WHY = {
    KILL_TIMEOUT: "killed for a hard timeout",
    KILL_HUNG: "killed as hung",
    KILL_CANCELLED: "killed: its task ignored a cancel",
    KILL_SHUTDOWN: "killed by the shutdown",
    KILL_LEASE_LOST: "killed: its task's lease was lost",
}
_CLEAN_WHY = {
    "recycle-tasks": "recycled after its task limit",
    "recycle-memory": "recycled over its memory limit",
    "shutdown": "asked to stop",
    "parent-gone": "its master was gone",
}


@dataclass(frozen=True)
class Exit:
    """One reaped worker, classified.

    ``kind``: ``killed``, ``clean``, ``boot_failed`` or ``crash``. ``restart_reason`` counts in
    ``status.restarts`` (``timeout``, ``hung``, ``crash``, ``recycle-tasks``, ...).
    ``broker_reason`` and ``error`` go to ``release_consumer`` for the task it held.
    ``why`` is the few words of the replacement's log line; ``how`` the wait status in words."""

    kind: str
    restart_reason: str
    broker_reason: str
    error: str
    why: str
    how: str


def classify_exit(status: int, *, kill_reason: str | None, exit_reason: int) -> Exit:
    """Classify a worker's wait ``status``; ``kill_reason`` is why the master killed it (None:
    it was not killed), ``exit_reason`` what the worker wrote in the scoreboard on its way out."""
    how = describe_status(status)
    if kill_reason is not None:
        return Exit(
            "killed",
            kill_reason,
            _KILL_BROKER_REASON.get(kill_reason, REASON_WORKER_LOST),
            {
                KILL_TIMEOUT: f"hard timeout exceeded; worker killed ({how})",
                KILL_HUNG: f"worker hung; killed ({how})",
            }.get(kill_reason, f"worker killed ({how})"),
            _KILL_WHY.get(kill_reason, f"killed ({kill_reason})"),
            how,
        )
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        reason = sb.EXIT_REASONS.get(exit_reason) or "exit"
        return Exit(
            "clean",
            reason,
            REASON_WORKER_LOST,
            f"worker exited ({how}) holding the task",
            _CLEAN_WHY.get(reason, "exited"),
            how,
        )
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == ExitCode.WORKER_BOOT:
        return Exit("boot_failed", "boot", REASON_WORKER_LOST, "", "failed to boot", how)
    return Exit("crash", "crash", REASON_WORKER_LOST, f"worker lost ({how})", f"died ({how})", how)
