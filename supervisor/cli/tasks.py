"""``supervisor tasks``: list, show, cancel, retry, purge and count task records."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from typing import Any

from supervisor.broker import base
from supervisor.cli.output import to_json
from supervisor.errors import SupervisorError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(SupervisorError):
    pass


def parse_duration(text: str, what: str) -> float:
    """'90', '90s', '15m', '12h', '7d', '2w' -> seconds; a negative one is refused."""
    m = re.fullmatch(r"\s*(-?)\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise UsageError(f"{what}: expected a duration like 90s, 15m, 12h or 7d, got {text!r}")
    if m.group(1):
        raise UsageError(f"{what}: must be positive, got {text!r}")
    return float(m.group(2)) * _UNITS[m.group(3) or "s"]


def parse_since(text: str, now: float) -> float:
    """A duration ago ('2h'), epoch seconds or an ISO time -> epoch seconds: the forms of
    ``/api/tasks?since=`` (one parser for both, :mod:`supervisor.web.since`)."""
    from supervisor.web.since import SinceError
    from supervisor.web.since import parse_since as shared

    try:
        return shared(text.strip(), now=now, name="--since")
    except SinceError as exc:
        raise UsageError(str(exc)) from None


def add_parser(sub: Any, client_flags: Any) -> None:
    tasks = sub.add_parser("tasks", help="inspect, cancel and replay tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    tlist = tsub.add_parser("list", help="task records, newest first")
    tlist.add_argument("--status", choices=base.ACTIVE_STATUSES + base.FINAL_STATUSES)
    tlist.add_argument("--type", dest="task_type", help="only this task type")
    tlist.add_argument("--since", help="pushed within this duration (2h) or after an ISO time")
    tlist.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    tlist.add_argument("--json", action="store_true", help="print JSON")
    parsers = [tlist]
    for name, text in (
        ("show", "one task's record (JSON)"),
        ("cancel", "cancel a queued, delayed or running task"),
        ("retry", "queue a dead or cancelled task again"),
    ):
        p = tsub.add_parser(name, help=text)
        p.add_argument("task_id")
        parsers.append(p)
    purge = tsub.add_parser("purge", help="delete finished records older than a duration")
    purge.add_argument("--status", required=True, choices=base.FINAL_STATUSES)
    purge.add_argument("--older-than", required=True, help="a duration: 90s, 15m, 12h, 7d")
    stats = tsub.add_parser("stats", help="counts by status")
    stats.add_argument("--json", action="store_true", help="print JSON")
    for p in (*parsers, purge, stats):
        client_flags(p)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before any connection is made (a UsageError naming the flag)."""
    if args.tasks_command == "list":
        if args.since:
            parse_since(args.since, time.time())
        if args.limit < 1:
            raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
    elif args.tasks_command == "purge":
        parse_duration(args.older_than, "--older-than")
    elif args.tasks_command in ("show", "cancel", "retry") and not args.task_id.strip():
        raise UsageError(f"TASK_ID: must not be empty, got {args.task_id!r}")


def run(args: argparse.Namespace, q: Any) -> int:
    """Run one ``tasks`` action against the queue ``q``; return the exit code. A broker that
    cannot answer (``DatabaseBusy`` when the task table is locked) raises: the caller prints
    one line and exits 1, never an empty answer that looks right."""
    check_args(args)
    action = args.tasks_command
    if action == "list":
        since = parse_since(args.since, time.time()) if args.since else None
        rows = q.list_tasks(status=args.status, type=args.task_type, since=since, limit=args.limit)
        if args.json:
            print(to_json(rows))
            return 0
        print(f"{'TASK ID':<36}  {'TYPE':<16} {'STATUS':<10} {'ATT':>3}  {'PUSHED':<19}  ERROR")
        for r in rows:
            error = (r.get("error") or "").splitlines()[0][:60] if r.get("error") else ""
            print(
                f"{r['task_id']:<36}  {r['type'][:16]:<16} {r['status']:<10} "
                f"{r['attempts']:>3}  {_when(r['pushed_at']):<19}  {error}"
            )
        return 0
    if action == "show":
        rec = q.get_task(args.task_id)
        if rec is None:
            print(f"task {args.task_id!r} is unknown", file=sys.stderr)
            return 1
        print(to_json(rec, sort_keys=True))
        return 0
    if action == "cancel":
        outcome = q.cancel_task(args.task_id)
        print(f"{args.task_id}: {outcome}")
        return 0 if outcome in ("cancelled", "cancelling") else 1
    if action == "retry":
        if not q.retry_task(args.task_id):
            print(f"task {args.task_id!r} is not dead or cancelled (or unknown)", file=sys.stderr)
            return 1
        print(args.task_id)
        return 0
    if action == "purge":
        n = q.purge(args.status, parse_duration(args.older_than, "--older-than"))
        print(f"purged {n} {args.status} task record(s)")
        return 0
    counts = q.get_queue_stats()
    if args.json:
        print(to_json(counts, sort_keys=True))
    else:
        for status in (*base.ACTIVE_STATUSES, *base.FINAL_STATUSES):
            print(f"{status:<10} {counts.get(status, 0):>8}")
    return 0
