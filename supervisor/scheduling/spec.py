"""What a schedule is: :class:`ScheduleSpec`, its field names and the allowed option values.

The data model only: when a spec fires is :mod:`supervisor.scheduling.policy`; whether it can be
stored (the boundary check, which asks the policy for a first fire time) is
:mod:`supervisor.scheduling.validation`.

A spec is the declared part of a schedule (what a user writes in ``add_scheduler_task`` or in a
``[[schedules]]`` table); run state (``next_run_at``, ``run_count``, ...) lives in the store.
All times are epoch seconds (``float``); durations carry an ``_s`` suffix or say ``seconds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from supervisor.scheduling.errors import ScheduleError

SCHEDULE_TYPES = ("interval", "cron", "once")
MISFIRE_POLICIES = ("skip", "once", "all")
OVERLAP_POLICIES = ("skip", "queue")
PRIORITY_MIN, PRIORITY_MAX = 0, 10
# Generous on purpose: a due time that is up to an hour late (master restarting, a long tick)
# still counts. APScheduler's default of 1 s silently drops runs whenever the scheduler is a
# little busy, which is the failure users least expect from a scheduler.
DEFAULT_MISFIRE_GRACE_S = 3600.0
DEFAULT_MAX_CATCHUP = 10
# Which timing field each schedule type requires; the others must stay unset.
TIMING_FIELDS = {"interval": "interval_seconds", "cron": "cron_expression", "once": "execute_at"}


@dataclass(frozen=True)
class ScheduleSpec:
    """The declared part of a schedule. Build it freely; validate it before storing it
    (:func:`supervisor.scheduling.validation.validate`).

    * ``interval``: every ``interval_seconds``, anchored at ``start_at`` (or at creation +
      one interval), so fire times never drift with the master's lateness.
    * ``cron``: ``cron_expression`` (5 fields, or 6 with a leading seconds field) read in
      ``timezone``; see :mod:`supervisor.scheduling.cron` for the DST rules.
    * ``once``: at ``execute_at``.

    ``start_at``/``end_at`` bound interval and cron fire times (inclusive). ``max_runs`` 0 means
    unlimited. Misfires (due times found in the past) follow ``misfire_policy`` -- see
    :func:`supervisor.scheduling.policy.due_fires`. ``max_instances`` limits runs of this
    schedule still queued or running; past it a fire is skipped (``overlap="skip"``) or pushed
    anyway to wait in the queue (``overlap="queue"``). ``params`` is JSON data; treat it as
    read-only.
    """

    name: str
    task_type: str
    schedule_type: str
    interval_seconds: float | None = None
    cron_expression: str | None = None
    execute_at: float | None = None
    start_at: float | None = None
    end_at: float | None = None
    timezone: str = "UTC"
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    max_runs: int = 0
    misfire_grace_s: float = DEFAULT_MISFIRE_GRACE_S
    misfire_policy: str = "once"
    misfire_max_catchup: int = DEFAULT_MAX_CATCHUP
    max_instances: int = 1
    overlap: str = "skip"
    description: str = ""
    enabled: bool = True

    def zone(self) -> ZoneInfo:
        """The schedule's timezone (assumes a validated spec)."""
        return ZoneInfo(self.timezone)


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleSpec))


def check_field_names(names: Collection[str]) -> None:
    """Raise ScheduleError naming any of ``names`` that is not a ScheduleSpec field."""
    unknown = sorted(set(names) - set(SPEC_FIELDS))
    if unknown:
        raise ScheduleError(
            f"unknown schedule field(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SPEC_FIELDS)}",
            field=unknown[0],
        )


def make_spec(**values: Any) -> ScheduleSpec:
    """Build a spec from keyword values, naming any unknown field (typos fail loudly)."""
    check_field_names(values)
    if values.get("params") is None:
        values["params"] = {}
    return ScheduleSpec(**values)
