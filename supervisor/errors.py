"""One exception hierarchy and the master's named exit codes.

Every error a user can cause carries a message built from data: the bad value, and what was
expected, so that the CLI can print it as it is and exit with a named code.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of ``supervisor`` (listed in the README; 128+N means killed by signal N)."""

    OK = 0
    ERROR = 1  # an unexpected error, or a CLI call that failed (no master, bad answer)
    USAGE = 2  # bad command line or configuration
    WORKER_BOOT = 3  # a worker failed to boot: not respawned in a loop
    APP_IMPORT = 4  # the task app failed to import
    CRASH_LOOP = 5  # the crash-loop breaker tripped
    BROKER_LOST = 6  # the broker process died under the master
    BROKER_UNREACHABLE = 7  # the Redis broker could not be reached at start: not respawned


class SupervisorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(SupervisorError):
    """A setting has a bad value; the message names the field, the value and its source."""


class AppImportError(SupervisorError):
    """The task app given with ``--app`` could not be imported or is not a registry."""


class TaskError(SupervisorError):
    """A task was refused at the boundary (push): bad type, priority, payload or id."""


class UnknownTaskType(TaskError):
    """A task names a type that no handler is registered for."""


class DuplicateTaskId(TaskError):
    """A push names a task id that is still queued, delayed or running."""


class PayloadError(TaskError):
    """A task's params or a store value cannot be pickled, or is over the size cap."""


class BrokerError(SupervisorError):
    """The broker could not be reached, refused the auth key, or did not answer in time."""


class BrokerUnreachable(BrokerError):
    """The Redis broker at the configured URL does not answer (or refuses us) at start."""


class DatabaseBusy(BrokerError):
    """The task table is locked by another process (a backup, a migration) or unreachable: the
    answer would be wrong, so none is given. Retry once the lock is gone; nothing was lost."""


class StoreError(SupervisorError):
    """A public-store call got a bad key or TTL."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a handler when its soft timeout passes, so that it can clean up."""


class Retry(Exception):
    """Raised by a handler to ask for another attempt, after ``delay`` seconds if given.

    The attempt still counts against ``max_retries``.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None):
        super().__init__(message)
        self.delay = delay

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_retry, (str(self), self.delay))


class Cancelled(Exception):
    """Raised by a handler that saw ``cancel_requested()``: the task ends ``cancelled``."""


class Reject(Exception):
    """Raised by a handler whose input is invalid: the task goes dead at once, no retry."""


def _rebuild_retry(message: str, delay: float | None) -> Retry:
    return Retry(message, delay=delay)
