"""Whether a :class:`~supervisor.scheduling.spec.ScheduleSpec` can be stored: :func:`validate`.

The boundary check of every way a schedule comes in (the Python API, the CLI, a config file):
it collects every problem, each naming the field, the bad value and what was expected, and
refuses a schedule that would never fire (asking :mod:`supervisor.scheduling.policy`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from supervisor.scheduling.cron import croniter_form
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.policy import first_fire
from supervisor.scheduling.spec import (
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SCHEDULE_TYPES,
    TIMING_FIELDS,
    ScheduleSpec,
)

_Bad = Callable[[str, str], None]  # records (field, message)
# The form of the ids the store gives schedules (str(uuid.uuid4())), any case.
ID_SHAPE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", re.IGNORECASE)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(
    spec: ScheduleSpec,
    *,
    now: float,
    known_task_types: Collection[str] | None = None,
    check_past: bool = True,
    new_name: bool = False,
) -> None:
    """Raise ScheduleError unless ``spec`` can be stored and fired.

    Every problem is collected; the message joins them, each naming the field, the bad value
    and what was expected. ``known_task_types`` (when given) must contain ``task_type``.
    ``check_past=False`` accepts an ``execute_at`` in the past (an unchanged schedule reloaded
    from a config file). Also refuses a schedule that would never fire. ``new_name=True`` (a
    schedule being added or renamed) also refuses a name shaped like a schedule id (a UUID),
    which a lookup by id or name would resolve to another schedule.
    """
    problems: list[tuple[str, str]] = []

    def bad(name: str, message: str) -> None:
        problems.append((name, message))

    for name in ("name", "task_type"):
        value = getattr(spec, name)
        if not isinstance(value, str) or not value.strip() or len(value) > 255:
            bad(name, f"{name} must be a non-empty string of at most 255 characters, got {value!r}")
    if new_name and isinstance(spec.name, str) and ID_SHAPE.fullmatch(spec.name.strip()):
        bad(
            "name",
            f"name {spec.name!r} looks like a schedule id; choose a name that is not a UUID",
        )
    if (
        known_task_types is not None
        and isinstance(spec.task_type, str)
        and spec.task_type not in known_task_types
    ):
        known = ", ".join(sorted(known_task_types)) or "(none registered)"
        bad("task_type", f"task type {spec.task_type!r} is not registered; known: {known}")
    if spec.schedule_type not in SCHEDULE_TYPES:
        bad(
            "schedule_type",
            f"schedule_type must be one of {', '.join(SCHEDULE_TYPES)}, got {spec.schedule_type!r}",
        )
    else:
        _check_timing(spec, now, check_past, bad)
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        bad(
            "timezone",
            f"timezone {spec.timezone!r} is not a known IANA timezone "
            f"(e.g. 'UTC', 'Europe/Berlin')",
        )
    _check_options(spec, bad)
    if not problems:
        _check_fires(spec, now, bad)
    if problems:
        raise ScheduleError(
            "; ".join(m for _, m in problems),
            field=problems[0][0],
            problems=tuple(m for _, m in problems),
        )


def _check_timing(spec: ScheduleSpec, now: float, check_past: bool, bad: _Bad) -> None:
    wanted = TIMING_FIELDS[spec.schedule_type]
    for kind, name in TIMING_FIELDS.items():
        value = getattr(spec, name)
        if name == wanted and value is None:
            bad(name, f"{name} is required for schedule_type {kind!r}")
        elif name != wanted and value is not None:
            bad(
                name,
                f"{name} is only used with schedule_type {kind!r}, "
                f"not {spec.schedule_type!r}; got {value!r}",
            )
    if (
        spec.interval_seconds is not None
        and spec.schedule_type == "interval"
        and (not _is_number(spec.interval_seconds) or spec.interval_seconds <= 0)
    ):
        bad(
            "interval_seconds",
            f"interval_seconds must be a positive number of seconds, got {spec.interval_seconds!r}",
        )
    if spec.cron_expression is not None and spec.schedule_type == "cron":
        try:
            if not isinstance(spec.cron_expression, str):  # croniter_form caches: hashable only
                raise ScheduleError(
                    f"cron_expression must be a string, got {spec.cron_expression!r}"
                )
            croniter_form(spec.cron_expression)
        except ScheduleError as exc:
            bad("cron_expression", str(exc))
    if spec.execute_at is not None and spec.schedule_type == "once":
        if not _is_number(spec.execute_at):
            bad("execute_at", f"execute_at must be epoch seconds, got {spec.execute_at!r}")
        elif check_past and spec.execute_at < now:
            bad(
                "execute_at",
                f"execute_at {spec.execute_at!r} is in the past "
                f"({now - spec.execute_at:.0f} s ago); expected a time >= now",
            )
    for name in ("start_at", "end_at"):
        value = getattr(spec, name)
        if value is None:
            continue
        if spec.schedule_type == "once":
            bad(name, f"{name} is not used with schedule_type 'once'; got {value!r}")
        elif not _is_number(value):
            bad(name, f"{name} must be epoch seconds, got {value!r}")
    if _is_number(spec.start_at) and _is_number(spec.end_at) and spec.end_at < spec.start_at:  # type: ignore[operator]
        bad("end_at", f"end_at {spec.end_at!r} is before start_at {spec.start_at!r}")


def _check_options(spec: ScheduleSpec, bad: _Bad) -> None:
    if not _is_int(spec.priority) or not PRIORITY_MIN <= spec.priority <= PRIORITY_MAX:
        bad(
            "priority",
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, "
            f"got {spec.priority!r}",
        )
    if not _is_int(spec.max_runs) or spec.max_runs < 0:
        bad("max_runs", f"max_runs must be an integer >= 0 (0 = unlimited), got {spec.max_runs!r}")
    if not _is_number(spec.misfire_grace_s) or spec.misfire_grace_s < 0:
        bad(
            "misfire_grace_s",
            f"misfire_grace_s must be a number of seconds >= 0, got {spec.misfire_grace_s!r}",
        )
    if spec.misfire_policy not in MISFIRE_POLICIES:
        bad(
            "misfire_policy",
            f"misfire_policy must be one of {', '.join(MISFIRE_POLICIES)}, "
            f"got {spec.misfire_policy!r}",
        )
    if not _is_int(spec.misfire_max_catchup) or spec.misfire_max_catchup < 1:
        bad(
            "misfire_max_catchup",
            f"misfire_max_catchup must be an integer >= 1, got {spec.misfire_max_catchup!r}",
        )
    if not _is_int(spec.max_instances) or spec.max_instances < 1:
        bad("max_instances", f"max_instances must be an integer >= 1, got {spec.max_instances!r}")
    if spec.overlap not in OVERLAP_POLICIES:
        bad(
            "overlap", f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, got {spec.overlap!r}"
        )
    if not isinstance(spec.description, str):
        bad("description", f"description must be a string, got {spec.description!r}")
    if not isinstance(spec.enabled, bool):
        bad("enabled", f"enabled must be true or false, got {spec.enabled!r}")
    if not isinstance(spec.params, dict):
        bad("params", f"params must be a dict (JSON object), got {type(spec.params).__name__}")
        return
    try:
        json.dumps(spec.params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad("params", f"params must be JSON-serializable: {exc}")


def _check_fires(spec: ScheduleSpec, now: float, bad: _Bad) -> None:
    if spec.schedule_type == "once" or first_fire(spec, now) is not None:
        return
    if spec.schedule_type == "cron" and spec.end_at is None:
        bad(
            "cron_expression",
            f"cron_expression {spec.cron_expression!r} never matches a date (e.g. February 30th)",
        )
    else:
        bad("end_at", f"end_at {spec.end_at!r} leaves no fire time at or after now ({now!r})")
