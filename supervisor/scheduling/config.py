"""Schedules declared in the config file (``[[schedules]]``) or in the task app (``SCHEDULES``).

In the TOML file that ``supervisor run --config FILE`` reads::

    [[schedules]]
    name = "nightly-report"
    task_type = "report"
    schedule_type = "cron"
    cron_expression = "0 2 * * *"
    timezone = "Europe/Berlin"
    params = { format = "pdf" }

    [[schedules]]
    name = "sync"
    task_type = "sync"
    schedule_type = "interval"
    interval_seconds = 60
    misfire_policy = "skip"

Keys are the :class:`~supervisor.scheduling.spec.ScheduleSpec` fields. Times (``execute_at``,
``start_at``, ``end_at``) are epoch seconds, a TOML date-time, or an ISO 8601 string; one
without an offset is read in the schedule's ``timezone``. In the app module::

    SCHEDULES = [dict(name="sync", task_type="sync", schedule_type="interval",
                      interval_seconds=60)]

(or a ``schedules`` attribute on the registry object). Both lists are upserted by name when the
scheduler starts; a name may be declared only once across the two.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Collection, Mapping
from datetime import date, datetime
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from supervisor.errors import ConfigError
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.spec import SPEC_FIELDS, ScheduleSpec, make_spec
from supervisor.scheduling.validation import validate

TIME_FIELDS = ("execute_at", "start_at", "end_at")


def to_epoch(value: Any, timezone: str = "UTC", *, what: str = "time") -> float:
    """Epoch seconds from a number, a ``datetime`` or an ISO 8601 string.

    A naive date-time is read in ``timezone``. Raises ScheduleError naming ``what``.
    """
    if isinstance(value, bool):
        raise ScheduleError(
            f"{what} must be epoch seconds or an ISO 8601 date-time, got {value!r}", field=what
        )
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScheduleError(
                f"{what} must be epoch seconds or an ISO 8601 date-time "
                f"(e.g. 2030-01-31T09:00:00+01:00), got {value!r}",
                field=what,
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            try:
                value = value.replace(tzinfo=ZoneInfo(timezone))
            except (ZoneInfoNotFoundError, ValueError):
                raise ScheduleError(
                    f"timezone {timezone!r} is not a known IANA timezone", field="timezone"
                ) from None
        return value.timestamp()
    if isinstance(value, date):
        raise ScheduleError(
            f"{what} needs a time of day, got the date {value.isoformat()}", field=what
        )
    raise ScheduleError(
        f"{what} must be epoch seconds or an ISO 8601 date-time, "
        f"got {type(value).__name__} {value!r}",
        field=what,
    )


def spec_from_mapping(entry: Mapping[str, Any]) -> ScheduleSpec:
    """A spec from one declared table (unknown keys and bad times raise ScheduleError)."""
    values = dict(entry)
    timezone = values.get("timezone", "UTC")
    for name in TIME_FIELDS:
        if values.get(name) is not None:
            values[name] = to_epoch(
                values[name], timezone if isinstance(timezone, str) else "UTC", what=name
            )
    return make_spec(**values)


def parse_schedules(
    entries: Any,
    *,
    where: str,
    known_task_types: Collection[str] | None = None,
    now: float | None = None,
) -> list[ScheduleSpec]:
    """Validate a list of declared schedules; ConfigError names the schedule and the field.

    ``execute_at`` in the past is accepted here (an unchanged ``once`` schedule that already
    fired); the store refuses a *new* one in the past when it upserts.
    """
    if not isinstance(entries, list):
        raise ConfigError(
            f"{where}: expected a list of tables ([[schedules]]), got {type(entries).__name__}"
        )
    now = time.time() if now is None else now
    specs: list[ScheduleSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(entries):
        label = f"{where}[{i}]"
        entry = (
            {f: getattr(item, f) for f in SPEC_FIELDS} if isinstance(item, ScheduleSpec) else item
        )
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{label}: expected a table of schedule fields, got {type(entry).__name__}"
            )
        name = entry.get("name")
        if isinstance(name, str) and name:
            label = f"{label} ({name!r})"
        try:
            spec = spec_from_mapping(entry)
            validate(spec, now=now, known_task_types=known_task_types, check_past=False)
        except ScheduleError as exc:
            field = f" field {exc.field!r}" if exc.field else ""
            raise ConfigError(f"schedule {label}{field}: {exc}") from None
        except TypeError as exc:  # a required field (name, task_type, schedule_type) missing
            raise ConfigError(
                f"schedule {label}: {exc}; required: name, task_type, schedule_type"
            ) from None
        if spec.name in seen:
            raise ConfigError(
                f"schedule {label}: the name {spec.name!r} is already used by "
                f"{where}[{seen[spec.name]}]; schedule names must be unique"
            )
        seen[spec.name] = i
        specs.append(spec)
    return specs


def schedules_from_config(
    doc: Mapping[str, Any],
    *,
    known_task_types: Collection[str] | None = None,
    now: float | None = None,
) -> list[ScheduleSpec]:
    """The ``[[schedules]]`` of a parsed TOML config document ([] when there are none)."""
    if "schedules" not in doc:
        return []
    return parse_schedules(
        doc["schedules"], where="schedules", known_task_types=known_task_types, now=now
    )


def schedules_from_app(
    app: str | ModuleType | object,
    *,
    known_task_types: Collection[str] | None = None,
    now: float | None = None,
) -> list[ScheduleSpec]:
    """The schedules an app declares: a module's ``SCHEDULES`` or an object's ``schedules``.

    ``app`` is the ``--app`` value (``module`` or ``module:attr``; the module is imported, and
    already is when the registry was loaded), a module, or a registry object. [] when the app
    declares none.
    """
    holders: list[object] = []
    if isinstance(app, str):
        module_name, _, attr = app.partition(":")
        module = importlib.import_module(module_name)
        holders = [module] + ([getattr(module, attr)] if attr and hasattr(module, attr) else [])
    else:
        holders = [app]
    for holder in holders:
        for attr_name in ("SCHEDULES", "schedules"):
            entries = getattr(holder, attr_name, None)
            if entries is not None and not callable(entries):
                where = f"{getattr(holder, '__name__', type(holder).__name__)}.{attr_name}"
                return parse_schedules(
                    list(entries) if isinstance(entries, tuple) else entries,
                    where=where,
                    known_task_types=known_task_types,
                    now=now,
                )
    return []


def merge_declared(*lists: list[ScheduleSpec]) -> list[ScheduleSpec]:
    """Config-file and app schedules together; a name declared in both is a ConfigError."""
    out: list[ScheduleSpec] = []
    names: set[str] = set()
    for specs in lists:
        for spec in specs:
            if spec.name in names:
                raise ConfigError(
                    f"schedule {spec.name!r} is declared both in the config file "
                    "and in the app; schedule names must be unique"
                )
            names.add(spec.name)
            out.append(spec)
    return out
