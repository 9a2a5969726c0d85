"""The ``supervisor`` command: run a master, or talk to a running one.

Every setting of :mod:`supervisor.config` is a flag of ``supervisor run``. Client commands find
the master through ``--run-dir``/``--address``/``--authkey`` (or their env variables). Bad input
is reported as one line naming the bad value, with exit code 2; a master that cannot be reached,
exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from supervisor import __version__
from supervisor.cli import tasks as cli_tasks
from supervisor.cli.output import to_json
from supervisor.cli.parser import ArgumentParser, positive_seconds
from supervisor.config import FIELDS, Settings, load_settings
from supervisor.config_values import MAX_SECONDS, REDIS_URL_FORM, mask_redis_url, redis_url_problem
from supervisor.errors import BrokerError, DatabaseBusy, ExitCode, SupervisorError


def _settings_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (also SUPERVISOR_<NAME> env and the config file)")
    for f in FIELDS:
        if f.kind is bool:
            g.add_argument(
                f.flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f.help,
            )
            continue
        if f.kind is tuple:  # repeatable; each value may hold a comma-separated list too
            g.add_argument(
                f.flag,
                dest=f.name,
                default=None,
                action="append",
                metavar=f.name.upper(),
                help=f.help,
            )
            continue
        # Parsed as text: the config layer converts it and names the field in its error.
        g.add_argument(
            f.flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f.help
            + ("" if f.default is None or callable(f.default) else f" (default: {f.default})"),
        )


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="run folder of the master (env SUPERVISOR_RUN_DIR)")
    p.add_argument("--address", help="broker address (env SUPERVISOR_ADDRESS)")
    p.add_argument("--authkey", help="broker auth key (env SUPERVISOR_AUTHKEY)")
    p.add_argument(
        "--broker",
        help="a Redis broker's URL, redis://… or rediss:// (env SUPERVISOR_BROKER): no run "
        "folder needed",
    )
    p.add_argument(
        "--key-prefix", help="the cluster's Redis key prefix (env SUPERVISOR_KEY_PREFIX)"
    )
    p.add_argument(
        "--timeout", type=positive_seconds, default=10.0, help="seconds to wait for an answer"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="supervisor",
        description="A multiprocess worker supervisor: queue, store, scheduler and forked workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the master (broker + workers) in the foreground")
    run.add_argument("--config", help="TOML config file (env SUPERVISOR_CONFIG)")
    _settings_flags(run)

    push = sub.add_parser("push", help="queue a task")
    push.add_argument("type", help="task type")
    push.add_argument("--params", default="{}", help="task params as a JSON object")
    push.add_argument("--priority", type=str, default=None, help="0-10, higher runs first")
    push.add_argument("--delay", type=str, default=None, help="seconds to wait before it runs")
    push.add_argument("--task-id", default=None, help="an id of your own (default: a UUID)")
    push.add_argument(
        "--queue", default=None, help="a named queue (default: the one its type is registered in)"
    )
    _client_flags(push)

    status = sub.add_parser("status", help="show the master, its workers and the queue")
    status.add_argument("--json", action="store_true", help="print JSON")
    _client_flags(status)

    store = sub.add_parser("store", help="read and write the public key/value store")
    ssub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    sget = ssub.add_parser("get", help="print a value (JSON)")
    sget.add_argument("key")
    sset = ssub.add_parser("set", help="set a value")
    sset.add_argument("key")
    sset.add_argument("value")
    sset.add_argument("--ttl", type=str, default=None, help="seconds until it expires")
    sset.add_argument("--json", action="store_true", help="parse VALUE as JSON (default: text)")
    sdel = ssub.add_parser("delete", help="delete a key")
    sdel.add_argument("key")
    ssub.add_parser("list", help="list live keys")
    for p in (sget, sset, sdel, *ssub.choices.values()):
        if not any(a.dest == "run_dir" for a in p._actions):
            _client_flags(p)

    cli_tasks.add_parser(sub, _client_flags)
    from supervisor.cli import schedules as schedules_cli
    from supervisor.cli.health import add_health_parser

    schedules_cli.add_subparser(sub)
    add_health_parser(sub)
    return parser


UsageError = cli_tasks.UsageError


def _number(text: str | None, what: str, *, integer: bool = False) -> Any:
    if text is None:
        return None
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{what}: expected {kind}, got {text!r}") from None


def _connect(args: argparse.Namespace) -> Any:
    from supervisor.client.discovery import parse_address
    from supervisor.client.seed import connect

    if args.address is not None:
        try:
            parse_address(args.address)
        except BrokerError as exc:  # a typo, not a master that is down: usage, exit code 2
            raise UsageError(f"--address: {exc}; expected a socket path or HOST:PORT") from None
    if args.broker is not None and (problem := redis_url_problem(args.broker)):
        raise UsageError(
            f"--broker: {problem} in {mask_redis_url(args.broker)!r}; expected {REDIS_URL_FORM}"
        )
    return connect(
        args.address,
        args.authkey,
        args.run_dir,
        broker=args.broker,
        key_prefix=args.key_prefix,
        timeout_s=args.timeout,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from supervisor import logs
    from supervisor.errors import AppImportError
    from supervisor.master.arbiter import Master
    from supervisor.registry import load_app

    cli = {f.name: getattr(args, f.name) for f in FIELDS}

    def reload() -> Settings:
        return load_settings(cli=cli, config_file=args.config)

    settings = reload()
    if not settings.app:
        raise UsageError("no task app given: pass --app MODULE[:ATTR] (try --app supervisor.demo)")
    from supervisor.cli.preflight import preflight

    preflight(settings)  # before anything forks: a setting that cannot work is exit code 2
    logs.setup_logging(settings.log_format, settings.log_level, settings.log_file)
    from loguru import logger

    log = logger.bind(component="master")
    try:
        registry = load_app(settings.app)
    except AppImportError as exc:
        log.critical("{}", exc)
        return int(ExitCode.APP_IMPORT)
    log.debug("settings: {}", settings.public_dict())

    def declared(s: Settings) -> list[Any]:
        """Schedules from the config file's [[schedules]] and the app's SCHEDULES."""
        from supervisor.config import read_config_file
        from supervisor.scheduling.config import (
            merge_declared,
            schedules_from_app,
            schedules_from_config,
        )

        names = registry.names()
        doc = read_config_file(s.config_file) if s.config_file else {}
        return merge_declared(
            schedules_from_config(doc, known_task_types=names),
            schedules_from_app(s.app or "", known_task_types=names),
        )

    if settings.scheduler:
        declared(settings)  # a bad schedule is a usage error now, not a surprise later
    return Master(
        settings=settings, registry=registry, reload_settings=reload, declared_schedules=declared
    ).run()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (use null, or a number)")


def parse_params(text: str) -> dict[str, Any]:
    """``--params``: a JSON object; NaN and Infinity are refused (they are not JSON)."""
    try:
        params = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--params: not valid JSON ({exc.msg} at column {exc.colno}): {text!r}"
        ) from None
    except ValueError as exc:
        raise UsageError(f"--params: {exc}: {text!r}") from None
    if not isinstance(params, dict):
        raise UsageError(f"--params: expected a JSON object, got {type(params).__name__}")
    return params


def check_push_args(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """(priority, delay) of ``push``, refused with the flag's name when out of range."""
    priority = _number(args.priority, "--priority", integer=True)  # its range: the queue's
    delay = _number(args.delay, "--delay")
    if delay is not None and not (math.isfinite(delay) and 0 <= delay <= MAX_SECONDS):
        raise UsageError(
            f"--delay: delay must be a number of seconds >= 0 and <= {MAX_SECONDS:.0f} "
            f"(10 years), got {args.delay!r}"
        )
    if args.task_id is not None and not args.task_id.strip():
        raise UsageError(f"--task-id: must not be empty, got {args.task_id!r}")
    return priority, delay


def cmd_push(args: argparse.Namespace) -> int:
    params = parse_params(args.params)
    priority, delay = check_push_args(args)
    task: dict[str, Any] = {"type": args.type, "params": params}
    if args.task_id is not None:
        task["task_id"] = args.task_id
    if args.queue is not None:
        task["queue"] = args.queue
    task_id = _connect(args).push_task(task, priority=priority, delay=delay)
    print(task_id)
    return 0


def _fmt_age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def cmd_status(args: argparse.Namespace) -> int:
    status = _connect(args).broker.get_status()
    if args.json:
        counters = status["stats"].get("counters", {})
        status["stats"]["counters"] = {":".join(k): v for k, v in sorted(counters.items())}
        print(to_json(status, sort_keys=True, default=str))
        return 0
    master, stats = status.get("master") or {}, status["stats"]
    nodes = status.get("nodes")  # on Redis: every node that published its status
    if master or nodes is None:
        print(
            f"master pid {master.get('pid', '?')}  state {master.get('state', '?')}  "
            f"workers {len(master.get('workers', []))}/{master.get('desired_workers', '?')}"
        )
    elif nodes:  # a client of a cluster of several nodes
        print(f"cluster of {len(nodes)} node(s)")
    else:
        print("no node has published its status (none runs, or they use another --key-prefix)")
    if nodes and (len(nodes) > 1 or not master):
        schedulers = status.get("schedulers") or {}
        for name, node in sorted(nodes.items()):
            own = schedulers.get(name)
            fired = (own.get("counters") or {}).get("fired", 0) if own else None
            print(
                f"node {name}: master pid {node.get('pid', '?')}  state {node.get('state', '?')}"
                f"  workers {len(node.get('workers', []))}/{node.get('desired_workers', '?')}"
                + (f"  scheduler {own.get('state', '?')}, fired {fired}" if own else "")
            )
    print(
        f"queue: {stats['queued']} ready, {stats['scheduled']} scheduled, "
        f"{stats['retrying']} retrying, {stats['running']} running; "
        f"store: {stats['store_keys']} keys"
    )
    sched = status.get("scheduler")
    if sched:
        counters = sched.get("counters") or {}
        node = f" of node {sched['node']}" if sched.get("node") else ""  # on Redis: whose
        print(
            f"scheduler{node} pid {sched.get('pid', '?')}  state {sched.get('state', '?')}  "
            f"{sched.get('schedules_enabled', '?')} enabled schedule(s); "
            f"fired {counters.get('fired', 0)}, misfired {counters.get('misfired', 0)}"
        )
    print(f"{'SLOT':>4}  {'PID':>7}  {'STATE':<9} {'TASKS':>6}  {'FOR':>8}  TASK")
    for w in master.get("workers", []):
        task = f"{w['task_id']} ({w['task_type']})" if w.get("task_id") else "-"
        print(
            f"{w['slot']:>4}  {w['pid']:>7}  {w['state']:<9} {w['tasks_done']:>6}  "
            f"{_fmt_age(w.get('running_s')):>8}  {task}"
        )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    q = _connect(args)
    action = args.store_command
    if action == "get":
        found = q.get_public(args.key)
        if found is None:
            print(f"key {args.key!r} is not set (or expired)", file=sys.stderr)
            return 1
        print(to_json(found, indent=None))
    elif action == "set":
        value: Any = args.value
        if args.json:
            try:
                value = json.loads(args.value)
            except json.JSONDecodeError as exc:
                raise UsageError(f"VALUE: not valid JSON ({exc.msg}): {args.value!r}") from None
        q.set_public(args.key, value, ttl=_number(args.ttl, "--ttl"))
    elif action == "delete":
        if not q.delete_public(args.key):
            print(f"key {args.key!r} was not set", file=sys.stderr)
            return 1
    else:
        for key in q.list_keys():
            print(key)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    cli_tasks.check_args(args)
    return cli_tasks.run(args, _connect(args))


def cmd_health(args: argparse.Namespace) -> int:
    from supervisor.cli.health import cmd_health as run_health

    return run_health(args)


def cmd_schedules(args: argparse.Namespace) -> int:
    from supervisor.cli import schedules as schedules_cli

    return schedules_cli.run(args)


COMMANDS = {
    "run": cmd_run,
    "push": cmd_push,
    "status": cmd_status,
    "store": cmd_store,
    "tasks": cmd_tasks,
    "schedules": cmd_schedules,
    "health": cmd_health,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DatabaseBusy as exc:  # retryable, and never an answer that looks right
        print(f"supervisor: {' '.join(str(exc).split())}", file=sys.stderr)
        return int(ExitCode.ERROR)
    except BrokerError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return int(ExitCode.ERROR)
    except SupervisorError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
