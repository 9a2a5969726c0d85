"""``supervisor schedules add|list|show|pause|resume|delete|next``: schedules in the database.

Works without a running master: it opens the database (``--database`` or
``SUPERVISOR_DATABASE``, default ``sqlite:///supervisor.db``); a running scheduler sees the
change within a second. A schedule is named by its id, its name (names are unique), or a
unique id prefix of at least 4 characters; an id wins over a name. Bad input raises a
SupervisorError naming the field (the main CLI prints it, exit code 2) -- a name already taken
is bad input --; an unknown schedule or an unreachable database prints one line and returns 1.
``--json`` output is strict JSON (no NaN or Infinity) and calls a schedule's id ``id``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from supervisor.errors import SupervisorError
from supervisor.scheduling.client import Scheduler, default_database_url
from supervisor.scheduling.config import to_epoch
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.process import mask_url
from supervisor.scheduling.spec import MISFIRE_POLICIES, OVERLAP_POLICIES

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class NotFound(SupervisorError):
    """No schedule matches the id or name given."""


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``schedules`` on the main parser's subparsers; dispatch with :func:`run`."""
    p = subparsers.add_parser("schedules", help="add, list and control schedules")
    sub = p.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a schedule; prints its id")
    add.add_argument("name")
    add.add_argument("--type", dest="task_type", required=True, help="task type to push")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", help="interval: seconds, or 30s / 5m / 2h / 1d")
    when.add_argument("--cron", help="cron: 5 fields, or 6 with a leading seconds field")
    when.add_argument("--at", help="once: ISO 8601 time, epoch seconds, or +DURATION from now")
    add.add_argument("--params", default="{}", help="task params as a JSON object")
    add.add_argument("--priority", type=int, default=5, help="0-10, higher runs first")
    add.add_argument("--max-runs", type=int, default=0, help="stop after N runs (0: never)")
    add.add_argument("--timezone", default="UTC", help="IANA timezone of cron and times")
    add.add_argument("--start", help="first possible fire time (interval: the anchor)")
    add.add_argument("--end", help="last possible fire time")
    add.add_argument("--misfire-policy", choices=MISFIRE_POLICIES, default="once")
    add.add_argument("--misfire-grace", type=float, default=None, help="seconds (default 3600)")
    add.add_argument("--max-catchup", type=int, default=None, help="cap of catch-up runs")
    add.add_argument("--max-instances", type=int, default=1, help="live runs at most")
    add.add_argument("--overlap", choices=OVERLAP_POLICIES, default="skip")
    add.add_argument("--description", default="")
    add.add_argument("--paused", action="store_true", help="add it paused")
    lst = sub.add_parser("list", help="list schedules")
    lst.add_argument("--enabled", action="store_true", help="only enabled ones")
    actions = {
        name: sub.add_parser(name, help=text)
        for name, text in (
            ("show", "show one schedule"),
            ("pause", "stop firing a schedule"),
            ("resume", "fire a paused schedule again"),
            ("delete", "delete a schedule"),
            ("next", "preview the next fire times"),
        )
    }
    for action in actions.values():
        action.add_argument("schedule", help="id, unique id prefix, or unique name")
    actions["next"].add_argument("-n", type=int, default=10, help="how many (default 10)")
    for action in (add, lst, *actions.values()):
        action.add_argument(
            "--database",
            default=None,
            help="SQLAlchemy URL (env SUPERVISOR_DATABASE, default sqlite:///supervisor.db)",
        )
        action.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Run one ``schedules`` action; returns the exit code."""
    url = args.database or default_database_url()
    logger.disable("supervisor.scheduling")  # a command prints its result, not the store's log
    try:
        return _run(args, url)
    finally:
        logger.enable("supervisor.scheduling")


def _run(args: argparse.Namespace, url: str) -> int:
    try:
        scheduler = Scheduler.from_url(url)
    except SQLAlchemyError as exc:
        print(
            f"supervisor: cannot open the scheduler database {mask_url(url)}: {_first_line(exc)}",
            file=sys.stderr,
        )
        return 1
    try:
        return _ACTIONS[args.schedules_command](scheduler, args)
    except NotFound as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"supervisor: scheduler database {mask_url(url)}: {_first_line(exc)}", file=sys.stderr
        )
        return 1
    finally:
        scheduler.close()


# -- actions -------------------------------------------------------------------------------------
def _add(s: Scheduler, args: argparse.Namespace) -> int:
    tz = args.timezone
    fields: dict[str, Any] = {
        "priority": args.priority,
        "max_runs": args.max_runs,
        "timezone": tz,
        "misfire_policy": args.misfire_policy,
        "max_instances": args.max_instances,
        "overlap": args.overlap,
        "description": args.description,
        "enabled": not args.paused,
        "params": _json_object(args.params, "--params"),
    }
    if args.every is not None:
        kind, fields["interval_seconds"] = "interval", parse_interval(args.every)
    elif args.cron is not None:
        kind, fields["cron_expression"] = "cron", args.cron
    else:
        kind, fields["execute_at"] = "once", parse_time(args.at, tz, "--at")
    for flag, key in (("start", "start_at"), ("end", "end_at")):
        if getattr(args, flag) is not None:
            fields[key] = parse_time(getattr(args, flag), tz, f"--{flag}")
    if args.misfire_grace is not None:
        fields["misfire_grace_s"] = args.misfire_grace
    if args.max_catchup is not None:
        fields["misfire_max_catchup"] = args.max_catchup
    task_id = s.add_scheduler_task(
        name=args.name, task_type=args.task_type, schedule_type=kind, **fields
    )
    if args.json:
        _print_json(public(s.get_task(task_id)))
    else:
        print(task_id)
    return 0


def _list(s: Scheduler, args: argparse.Namespace) -> int:
    tasks = s.list_tasks(enabled_only=args.enabled)
    if args.json:
        _print_json([public(t) for t in tasks])
        return 0
    rows = [
        (
            t["task_id"],
            t["name"],
            t["task_type"],
            describe(t),
            fmt_time(t["next_run_at"], t["timezone"]) if t["enabled"] else "-",
            str(t["run_count"]),
            state(t),
        )
        for t in tasks
    ]
    _print_table(("ID", "NAME", "TYPE", "SCHEDULE", "NEXT RUN", "RUNS", "STATE"), rows)
    return 0


def _show(s: Scheduler, args: argparse.Namespace) -> int:
    task = public(s.get_task(resolve(s, args.schedule)))
    assert task is not None
    if args.json:
        _print_json(task)
        return 0
    for key, value in task.items():
        shown = value
        if key.endswith("_at") and isinstance(value, int | float):
            shown = f"{fmt_time(value, task['timezone'])}  ({value})"
        elif key == "params":
            shown = json.dumps(value, ensure_ascii=False)
        print(f"{key:>20}: {'-' if shown is None else shown}")
    return 0


def _control(s: Scheduler, args: argparse.Namespace) -> int:
    task_id = resolve(s, args.schedule)
    action = args.schedules_command
    done = {"pause": s.pause_task, "resume": s.resume_task, "delete": s.delete_task}[action](
        task_id
    )
    if not done:  # only resume refuses an existing schedule
        print(
            f"supervisor: schedule {task_id} cannot be resumed: it will never fire again "
            "(max_runs reached, a done 'once', or end_at passed)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        _print_json({"id": task_id, "action": action, "ok": True})
    else:
        print(f"{action}d {task_id}" if action != "resume" else f"resumed {task_id}")
    return 0


def _next(s: Scheduler, args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ScheduleError(f"-n must be at least 1, got {args.n}", field="n")
    task_id = resolve(s, args.schedule)
    task = s.get_task(task_id)
    assert task is not None
    times = s.preview(task_id, args.n)
    tz = task["timezone"]
    if args.json:
        _print_json(
            [
                {"at": t, "local": fmt_time(t, tz, iso=True), "utc": fmt_time(t, "UTC", iso=True)}
                for t in times
            ]
        )
        return 0
    if not task["enabled"]:
        print(f"(schedule is {state(task)}; these are the times it would fire)")
    for i, t in enumerate(times, 1):
        print(f"{i:>3}  {fmt_time(t, tz)}   {fmt_time(t, 'UTC', iso=True)}")
    if not times:
        print("(no fire time left)")
    return 0


_ACTIONS = {
    "add": _add,
    "list": _list,
    "show": _show,
    "pause": _control,
    "resume": _control,
    "delete": _control,
    "next": _next,
}


# -- helpers -------------------------------------------------------------------------------------
def resolve(s: Scheduler, ref: str) -> str:
    """The id of the schedule ``ref`` names: an id, a name, or a unique id prefix (>= 4 chars).

    An id wins over a name, a name over a prefix; an ambiguous prefix is a ScheduleError.
    """
    found = s.get_task(ref)  # by id, else by name
    if found is not None:
        return str(found["task_id"])
    matches = [t for t in s.list_tasks() if len(ref) >= 4 and t["task_id"].startswith(ref)]
    if len(matches) == 1:
        return str(matches[0]["task_id"])
    if len(matches) > 1:
        ids = ", ".join(t["task_id"] for t in matches)
        raise ScheduleError(
            f"{ref!r} matches {len(matches)} schedules ({ids}); give the id", field="schedule"
        )
    raise NotFound(f"no schedule with id or name {ref!r}")


def public(task: dict[str, Any] | None) -> dict[str, Any] | None:
    """A schedule dict as the CLI prints it in JSON: its id under ``id`` (not ``task_id``)."""
    if task is None:
        return None
    out = {"id": task["task_id"]}
    out.update((k, v) for k, v in task.items() if k != "task_id")
    return out


def parse_interval(text: str) -> float:
    """The ``--every`` value in seconds; ScheduleError unless it is a positive duration."""
    seconds = parse_duration(text, "--every")
    if not seconds > 0:
        raise ScheduleError(f"--every: must be positive, got {text!r}", field="interval_seconds")
    return seconds


def parse_duration(text: str, what: str) -> float:
    """Seconds from ``90``, ``1.5``, ``30s``, ``5m``, ``2h`` or ``1d``."""
    m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text or "")
    if m is None:
        raise ScheduleError(
            f"{what}: expected seconds or a duration like 30s, 5m, 2h, 1d; got {text!r}",
            field="interval_seconds",
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time(text: str, timezone: str, what: str) -> float:
    """Epoch seconds from an ISO 8601 time (naive: in ``timezone``), epoch seconds, or +DURATION."""
    text = text.strip()
    if text.startswith("+"):
        return time.time() + parse_duration(text[1:], what)
    try:
        number: Any = float(text)
    except ValueError:
        number = text
    try:
        return to_epoch(number, timezone, what=what)
    except ScheduleError as exc:
        raise ScheduleError(f"{exc} (or +DURATION from now, e.g. +30s)", field=exc.field) from None


def describe(task: dict[str, Any]) -> str:
    """``every 10s`` / ``cron '0 2 * * *' Europe/Berlin`` / ``once 2030-01-01 09:00:00 UTC``."""
    kind, tz = task["schedule_type"], task["timezone"]
    if kind == "interval":
        return f"every {task['interval_seconds']:g}s"
    if kind == "cron":
        return f"cron '{task['cron_expression']}'" + ("" if tz == "UTC" else f" {tz}")
    return f"once {fmt_time(task['execute_at'], tz)}" if task["execute_at"] else "once"


def state(task: dict[str, Any]) -> str:
    if task["enabled"]:
        return "enabled"
    return task.get("disabled_reason") or "paused"


def fmt_time(epoch: float | None, timezone: str, *, iso: bool = False) -> str:
    """A readable local time with its zone abbreviation (the DST state shows), or ISO 8601."""
    if epoch is None:
        return "-"
    local = datetime.fromtimestamp(epoch, ZoneInfo(timezone) if timezone != "UTC" else UTC)
    if iso:
        text = local.isoformat(timespec="milliseconds" if epoch % 1 else "seconds")
        return text.replace("+00:00", "Z") if timezone == "UTC" else text
    return local.strftime("%Y-%m-%d %H:%M:%S %Z (%z)")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(
            f"{what}: not valid JSON ({exc.msg} at column {exc.colno}): {text!r}", field="params"
        ) from None
    if not isinstance(value, dict):
        raise ScheduleError(
            f"{what}: expected a JSON object, got {type(value).__name__}", field="params"
        )
    return value


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (a row edited by hand) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    """Print strict JSON (RFC 8259: no NaN/Infinity), keys sorted, non-ASCII kept."""
    text = json.dumps(
        _finite(value), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str
    )
    print(text)


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
