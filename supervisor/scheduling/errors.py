"""The scheduler's error type.

``ScheduleError`` is a :class:`~supervisor.errors.SupervisorError` (so the CLI prints it as one
line and exits with code 2) and, for callers written against the first release, still a
``ValueError``.
"""

from __future__ import annotations

from supervisor.errors import SupervisorError


class ScheduleError(SupervisorError, ValueError):
    """A schedule was refused or cannot be used.

    The message names the field, the bad value and what was expected, so the CLI can print it as
    it is. ``field`` is the first offending field (None when the error is not about one field);
    ``problems`` lists every message when several fields were wrong at once.
    """

    def __init__(
        self, message: str, *, field: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.problems = problems or (message,)
