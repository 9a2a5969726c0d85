"""After the claim's commit: push each claimed due time, then record the outcome on its fire row.

The claim (:mod:`supervisor.scheduling.claim`) hands over committed due times; this module turns
each into a task message (deterministic id ``sched-<schedule>-<due ms>``), pushes it through
the caller's ``fire`` callback (or ``fire_many``, one round trip for a batch), and marks the
fire rows ``pushed``, ``failed`` (retryable: see :mod:`supervisor.scheduling.recover`) or
``dropped`` (the broker refused the task itself). A push that raises is logged and counted,
never raised: one broker failure must not stop the other schedules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from supervisor.errors import TaskError
from supervisor.scheduling.models import schedule_fire, writer
from supervisor.scheduling.rows import fire_task_id

FireCallback = Callable[[dict[str, Any]], object]
# Pushes several messages; returns, in order, None for each pushed one or the exception.
FireMany = Callable[[list[dict[str, Any]]], list[BaseException | None]]
_log = logger.bind(component="scheduler")


@dataclass(frozen=True)
class FireOutcome:
    """One due time handed to the ``fire`` callback: pushed, or not with ``error``.

    ``retryable`` is False when the broker refused the task itself (a
    :class:`~supervisor.errors.TaskError`: unknown type, payload too large): pushing it again
    would fail the same way, so its fire row is marked ``dropped`` instead of ``failed``.
    """

    schedule_id: str
    name: str
    due_at: float
    task_id: str
    pushed: bool
    error: str | None = None
    retryable: bool = True

    @property
    def status(self) -> str:
        """The fire row's status after this outcome."""
        return "pushed" if self.pushed else "failed" if self.retryable else "dropped"


@dataclass(frozen=True)
class Claimed:
    """A schedule's due times committed by one claim, ready to push."""

    schedule_id: str
    name: str
    task: dict[str, Any]  # type, params, priority
    due: tuple[float, ...]


def fire_message(sid: str, task: dict[str, Any], due_at: float) -> dict[str, Any]:
    """The task dict handed to the push callbacks for one due time."""
    return {
        **task,
        "params": dict(task["params"]),
        "task_id": fire_task_id(sid, due_at),
        "scheduled_at": due_at,
        "schedule_id": sid,
    }


def push_all(
    claims: Sequence[Claimed],
    *,
    fire: FireCallback,
    fire_many: FireMany | None,
    counters: Counter[str],
) -> list[FireOutcome]:
    """Push every due time of ``claims`` (through ``fire_many`` when given); never raises."""
    if fire_many is None:
        return [
            push_one(c.schedule_id, c.name, c.task, d, fire=fire, counters=counters)
            for c in claims
            for d in c.due
        ]
    pending = [(c, d, fire_message(c.schedule_id, c.task, d)) for c in claims for d in c.due]
    if not pending:
        return []
    try:
        errors = fire_many([m for _, _, m in pending])
    except Exception as exc:  # the pusher should report per message; be safe if it did not
        errors = [exc] * len(pending)
    return [
        _outcome(c.schedule_id, c.name, d, m["task_id"], err, counters=counters)
        for (c, d, m), err in zip(pending, errors, strict=True)
    ]


def push_one(
    sid: str,
    name: str,
    task: dict[str, Any],
    due_at: float,
    *,
    fire: FireCallback,
    counters: Counter[str],
) -> FireOutcome:
    """Push one due time through ``fire``; a failure is logged, counted and returned."""
    message = fire_message(sid, task, due_at)
    try:
        fire(message)
    except Exception as exc:  # the broker's failure must not stop the other schedules
        return _outcome(sid, name, due_at, message["task_id"], exc, counters=counters)
    return FireOutcome(sid, name, due_at, message["task_id"], True)


def _outcome(
    sid: str,
    name: str,
    due_at: float,
    task_id: str,
    exc: BaseException | None,
    *,
    counters: Counter[str],
) -> FireOutcome:
    if exc is None:
        return FireOutcome(sid, name, due_at, task_id, True)
    counters["push_failed"] += 1
    log = _log.bind(schedule_id=sid, task_id=task_id)
    if isinstance(exc, TaskError):  # refused by the broker: the same push would fail again
        log.error(
            "the broker refused {} of schedule {} ({!r}); not retried: {}", task_id, sid, name, exc
        )
        return FireOutcome(
            sid, name, due_at, task_id, False, f"{type(exc).__name__}: {exc}", retryable=False
        )
    log.opt(exception=exc).error(
        "pushing {} of schedule {} ({!r}) failed; kept for a retry", task_id, sid, name
    )
    return FireOutcome(sid, name, due_at, task_id, False, f"{type(exc).__name__}: {exc}")


def mark(engine: Engine, outcomes: Sequence[FireOutcome]) -> None:
    """Record the push outcomes on their fire rows (``pushed``, ``failed`` or ``dropped``)."""
    if not outcomes:
        return
    stmt = (
        sa.update(schedule_fire)
        .where(
            schedule_fire.c.schedule_id == sa.bindparam("sid"),
            schedule_fire.c.due_at == sa.bindparam("due"),
        )
        .values(status=sa.bindparam("new_status"), error=sa.bindparam("err"))
    )
    try:
        with writer(engine).begin() as conn:
            conn.execute(
                stmt,
                [
                    {"sid": o.schedule_id, "due": o.due_at, "err": o.error, "new_status": o.status}
                    for o in outcomes
                ],
            )
    except OperationalError as exc:
        _log.warning(
            "could not mark {} fire(s) as pushed ({}); they stay 'claimed'", len(outcomes), exc
        )
