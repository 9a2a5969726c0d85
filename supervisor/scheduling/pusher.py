"""From a fired due time to a task in the broker, and which runs of a schedule are still live.

:class:`BrokerPusher` turns the claim's fire messages into broker messages (params pickled
by :func:`supervisor.client.queue.build_message`, plus ``schedule_id`` and ``scheduled_at``,
which reach the handler as ``current_task().scheduled_at``) and pushes a batch in one round
trip. A task id the broker already holds live (a fire pushed again after a crash) is "already
pushed", not an error.

:class:`InstanceTracker` answers ``active_instances(schedule_id)`` for ``max_instances``: it
remembers the task ids this process pushed per schedule (after a restart: the schedule's latest
fire rows) and asks the broker about those still outstanding, one ``get_task`` each, dropping
them once finished. A schedule whose previous run has finished costs one round trip per fire.

A broker whose task table is locked (:class:`~supervisor.errors.DatabaseBusy`) still answers
for live tasks (they are in its memory); only a finished task's record needs the table. So for
``max_instances`` a busy answer means "not live"; for :meth:`BrokerPusher.known` it means "cannot
tell", and the error goes to the caller (recovery then asks again later rather than pushing a
run that may have happened).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor.broker.base import ACTIVE_STATUSES, Broker
from supervisor.client.queue import build_message
from supervisor.errors import BrokerError, DatabaseBusy, DuplicateTaskId, TaskError
from supervisor.scheduling.status import LagHistogram

_log = logger.bind(component="scheduler")
_TASK_KEYS = ("task_id", "type", "params", "priority")


def is_duplicate(exc: BaseException) -> bool:
    """Whether the broker refused a push because the task id is already live."""
    return isinstance(exc, DuplicateTaskId)


class BrokerPusher:
    """Pushes fire messages into ``broker`` (in the scheduler process, a
    :class:`~supervisor.client.proxy.BrokerClient`).

    ``on_pushed(schedule_id, task_id)`` is told of every task the broker holds afterwards.
    ``lag`` observes push time - due time, in seconds, on ``clock``.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        max_payload_bytes: int | None = 1 << 20,
        clock: Callable[[], float] = time.time,
        on_pushed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._broker = broker
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._on_pushed = on_pushed
        self.lag = LagHistogram()
        self.counters: Counter[str] = Counter()

    def message(self, task: dict[str, Any]) -> dict[str, Any]:
        """The broker message for a fire (raises TaskError/PayloadError for bad params)."""
        msg = build_message(
            {k: task[k] for k in _TASK_KEYS if task.get(k) is not None},
            max_payload_bytes=self._max_payload,
        )
        msg["schedule_id"] = task["schedule_id"]
        msg["scheduled_at"] = task["scheduled_at"]
        return msg

    def push(self, task: dict[str, Any]) -> None:
        """Push one fire; raises what the broker raised, except for a duplicate live id."""
        msg = self.message(task)
        try:
            self._broker.push(msg)
        except TaskError as exc:
            if not is_duplicate(exc):
                raise
            self.counters["duplicate"] += 1
            _log.bind(task_id=task["task_id"]).info(
                "task {} is already in the broker; not pushed again", task["task_id"]
            )
        self._pushed(task)

    def push_many(self, tasks: list[dict[str, Any]]) -> list[BaseException | None]:
        """Push fires in one round trip; per task, None when pushed or the exception."""
        errors: list[BaseException | None] = [None] * len(tasks)
        good: list[int] = []
        msgs = []
        for i, task in enumerate(tasks):
            try:
                msgs.append(self.message(task))
                good.append(i)
            except TaskError as exc:
                errors[i] = exc
        if not msgs:
            return errors
        try:
            self._broker.push_many(msgs)
        except BrokerError as exc:  # the broker is unreachable: every push failed (or is unknown)
            for i in good:
                errors[i] = exc
            return errors
        except TaskError:  # all or none: find the one refused (a duplicate, an unknown type)
            for i in good:
                try:
                    self.push(tasks[i])
                except Exception as exc:
                    errors[i] = exc
            return errors
        for i in good:
            self._pushed(tasks[i])
        return errors

    def known(self, task_id: str) -> bool:
        """Whether the broker has a record of ``task_id`` (any status).

        Raises DatabaseBusy when the broker cannot look in its task table (see above).
        """
        return self._broker.get_task(task_id) is not None

    def _pushed(self, task: dict[str, Any]) -> None:
        self.lag.observe(self._clock() - float(task["scheduled_at"]))
        if self._on_pushed is not None:
            self._on_pushed(task["schedule_id"], task["task_id"])


class InstanceTracker:
    """``count(schedule_id)``: runs of the schedule still scheduled, queued, running or retrying.

    ``recent_ids(schedule_id)`` loads the task ids of a schedule's latest fires the first time
    the schedule is asked about (after a restart). A broker that cannot be asked counts 0: the
    push will fail anyway and be retried.
    """

    def __init__(
        self, broker: Broker, *, recent_ids: Callable[[str], list[str]] | None = None
    ) -> None:
        self._broker = broker
        self._recent_ids = recent_ids
        self._live: dict[str, list[str]] = {}

    def count(self, schedule_id: str) -> int:
        ids = self._live.get(schedule_id)
        if ids is None:
            ids = self._recent_ids(schedule_id) if self._recent_ids is not None else []
        try:
            live = [tid for tid in ids if self._active(tid)]
        except BrokerError as exc:
            _log.debug("cannot count the live runs of schedule {}: {}", schedule_id, exc)
            return 0
        self._live[schedule_id] = live
        return len(live)

    def record(self, schedule_id: str, task_id: str) -> None:
        """A run was pushed (only schedules already asked about are tracked)."""
        live = self._live.get(schedule_id)
        if live is not None and task_id not in live:
            live.append(task_id)

    def forget(self, schedule_id: str) -> None:
        self._live.pop(schedule_id, None)

    def _active(self, task_id: str) -> bool:
        try:
            rec = self._broker.get_task(task_id)
        except DatabaseBusy:  # not in the broker's memory, so finished: not a live run
            return False
        return rec is not None and rec.get("status") in ACTIVE_STATUSES
