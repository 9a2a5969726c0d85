"""Where the task core reports its changes: nowhere (in memory), or the journal (durable).

The core calls ``changed(rec)`` after every state change of a task, with the broker's lock held,
so the sink sees changes in the broker's order. A request that may change several tasks (a push
and its hand-over to a parked worker; a report and the next hand-out) is bracketed by
``begin``/``end``: ``begin`` may refuse the request before anything changes (a full disk), and
``end`` makes the request's changes safe in one write before anyone is answered.
"""

from __future__ import annotations

from typing import Any, Protocol

from supervisor.broker.records import TaskRecord


class ChangeSink(Protocol):
    def begin(self, method: str, args: tuple[Any, ...]) -> None:
        """A request starts (lock held); raise to refuse it before it changes anything."""

    def changed(self, rec: TaskRecord) -> None:
        """``rec`` was queued, taken, finished or otherwise changed (lock held)."""

    def end(self) -> BaseException | None:
        """The request is over (lock held): make its changes safe; the error if that failed."""


class NullSink:
    """The in-memory broker's sink: changes are kept nowhere but in memory."""

    def begin(self, method: str, args: tuple[Any, ...]) -> None:
        return None

    def changed(self, rec: TaskRecord) -> None:
        return None

    def end(self) -> BaseException | None:
        return None
