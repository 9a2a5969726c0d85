"""Between ``scheduler_task`` rows and :class:`ScheduleSpec` / the seed's task dicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.spec import SPEC_FIELDS, ScheduleSpec

# Keys of the dicts get_task / list_tasks return: the seed's columns first, then ours.
SEED_KEYS = (
    "task_id",
    "name",
    "task_type",
    "params",
    "schedule_type",
    "interval_seconds",
    "cron_expression",
    "execute_at",
    "last_run_at",
    "next_run_at",
    "run_count",
    "max_runs",
    "enabled",
    "created_at",
    "updated_at",
    "description",
)
EXTRA_KEYS = (
    "priority",
    "timezone",
    "start_at",
    "end_at",
    "misfire_grace_s",
    "misfire_policy",
    "misfire_max_catchup",
    "max_instances",
    "overlap",
    "skipped_count",
    "source",
    "disabled_reason",
)


def encode_params(params: Mapping[str, Any]) -> str:
    """JSON text of ``params`` (non-ASCII kept readable in the database)."""
    return json.dumps(dict(params), ensure_ascii=False, allow_nan=False)


def decode_params(text: str | None, schedule_id: str) -> dict[str, Any]:
    """The params dict stored as ``text``; ScheduleError when it is not a JSON object."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ScheduleError(
            f"params of schedule {schedule_id} are not valid JSON ({exc}): {text[:80]!r}",
            field="params",
        ) from exc
    if not isinstance(value, dict):
        raise ScheduleError(
            f"params of schedule {schedule_id} must be a JSON object, got {type(value).__name__}",
            field="params",
        )
    return value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def spec_from_row(row: Mapping[Any, Any], *, params: dict[str, Any] | None = None) -> ScheduleSpec:
    """The spec stored in ``row``; params decoded unless given (raises ScheduleError)."""
    interval = row["interval_seconds"]
    return ScheduleSpec(
        name=row["name"],
        task_type=row["task_type"],
        schedule_type=row["schedule_type"],
        interval_seconds=None if interval is None else float(interval),
        cron_expression=row["cron_expression"],
        execute_at=_float(row["execute_at"]),
        start_at=_float(row["start_at"]),
        end_at=_float(row["end_at"]),
        timezone=row["timezone"],
        params=decode_params(row["params"], row["task_id"]) if params is None else params,
        priority=row["priority"],
        max_runs=row["max_runs"],
        misfire_grace_s=float(row["misfire_grace_s"]),
        misfire_policy=row["misfire_policy"],
        misfire_max_catchup=row["misfire_max_catchup"],
        max_instances=row["max_instances"],
        overlap=row["overlap"],
        description=row["description"] or "",
        enabled=bool(row["enabled"]),
    )


def spec_columns(spec: ScheduleSpec) -> dict[str, Any]:
    """Column values for the declared part of a schedule."""
    values = {name: getattr(spec, name) for name in SPEC_FIELDS}
    values["params"] = encode_params(spec.params)
    return values


def same_declaration(a: ScheduleSpec, b: ScheduleSpec) -> bool:
    """Whether two specs declare the same schedule, ignoring ``enabled`` (run state)."""
    return all(getattr(a, f) == getattr(b, f) for f in SPEC_FIELDS if f != "enabled")


def task_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The public dict of a row: the seed keys and ours, params decoded.

    Corrupt params JSON does not raise: ``params`` is None and ``error`` says why.
    """
    out = {key: row[key] for key in (*SEED_KEYS, *EXTRA_KEYS)}
    out["enabled"] = bool(out["enabled"])
    try:
        out["params"] = decode_params(row["params"], row["task_id"])
    except ScheduleError as exc:
        out["params"], out["error"] = None, str(exc)
    return out


def fire_task_id(schedule_id: str, due_at: float) -> str:
    """The task id pushed for one due time: the same for every attempt to push it."""
    return f"sched-{schedule_id}-{round(due_at * 1000)}"
