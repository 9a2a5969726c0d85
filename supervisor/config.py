"""One validated settings object.

Precedence, lowest first: defaults < config file (TOML, table ``[supervisor]``) < ``SUPERVISOR_*``
environment variables < command-line flags. Each field is declared once in ``FIELDS`` with its type,
default, environment name, flag and help; the CLI, the README's table and the validation are all
derived from that list. Errors name the field, the bad value, what was expected and where the value
came from.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config_values import (
    REDIS_URL_FORM,
    convert,
    mask_redis_url,
    node_name_problem,
    redis_url_problem,
)
from supervisor.errors import ConfigError


@dataclass(frozen=True)
class Field:
    name: str
    kind: type
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None  # None: no limit, but a float (seconds) is capped at 10 years
    nullable: bool = False

    @property
    def env(self) -> str:
        return "SUPERVISOR_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _cpu_count() -> int:
    return os.cpu_count() or 1


def default_run_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"supervisor-{os.getuid()}")


FIELDS: tuple[Field, ...] = (
    Field("app", str, None, "task app to load: 'module' or 'module:attr'", nullable=True),
    Field("workers", int, _cpu_count, "number of worker processes (default: CPU count)", minimum=1),
    Field("run_dir", str, default_run_dir, "folder for the socket, auth key and pid file"),
    Field(
        "address",
        str,
        None,
        "broker address: a Unix socket path (default: RUN_DIR/broker.sock) or HOST:PORT",
        nullable=True,
    ),
    Field(
        "authkey",
        str,
        None,
        "broker auth key (default: random, written to RUN_DIR/authkey, mode 0600)",
        secret=True,
        nullable=True,
    ),
    Field(
        "graceful_timeout", float, 25.0, "seconds running tasks get to finish on TERM", minimum=0
    ),
    Field(
        "default_timeout",
        float,
        300.0,
        "hard timeout of a task type that sets none (s)",
        minimum=0.01,
    ),
    Field(
        "default_soft_timeout",
        float,
        None,
        "soft timeout of a task type that sets none (s)",
        minimum=0.01,
        nullable=True,
    ),
    Field("max_retries", int, 3, "retries of a task type that sets none", minimum=0),
    Field("backoff_base", float, 1.0, "first retry delay before jitter (s)", minimum=0),
    Field("backoff_cap", float, 300.0, "largest retry delay (s)", minimum=0),
    Field(
        "max_tasks_per_child",
        int,
        0,
        "recycle a worker after this many tasks (0: never)",
        minimum=0,
    ),
    Field("max_tasks_per_child_jitter", int, 0, "random extra tasks before recycling", minimum=0),
    Field(
        "max_memory_per_child",
        int,
        0,
        "recycle a worker whose RSS passes this many MiB (0: off)",
        minimum=0,
    ),
    Field(
        "cancel_grace",
        float,
        10.0,
        "seconds a cancelled running task gets to stop before its worker is killed",
        minimum=0,
    ),
    Field(
        "heartbeat_timeout", float, 30.0, "an idle worker silent this long is hung (s)", minimum=0.5
    ),
    Field(
        "crash_limit",
        int,
        30,
        "more crashes than this within crash_window stop the master (0: off)",
        minimum=0,
    ),
    Field("crash_window", float, 60.0, "window of the crash-loop breaker (s)", minimum=0.1),
    Field("restart_backoff_cap", float, 10.0, "largest per-slot respawn delay (s)", minimum=0),
    Field(
        "max_payload_bytes", int, 1048576, "largest pickled task params or store value", minimum=1
    ),
    Field(
        "max_result_bytes",
        int,
        1048576,
        "largest task result kept (as JSON); a larger one fails the task",
        minimum=1,
    ),
    Field("finished_records", int, 10000, "finished task records kept in memory", minimum=0),
    Field(
        "log_format",
        str,
        "auto",
        "log format: text, json, or auto (text on a terminal)",
        choices=("auto", "text", "json"),
    ),
    Field(
        "log_level",
        str,
        "INFO",
        "minimum log level",
        choices=("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"),
    ),
    Field("log_file", str, None, "also log to this file (reopened on USR1)", nullable=True),
    Field(
        "database",
        str,
        "sqlite:///supervisor.db",
        "SQLAlchemy URL of the schedules database (SQLite file in the working directory)",
    ),
    Field(
        "durability",
        str,
        "journal",
        "journal: every task is in the journal (folded into the database each second) "
        "before push returns, and survives a crash; none: in memory only",
        choices=("journal", "none"),
    ),
    Field(
        "result_ttl", float, 7 * 86400.0, "how long succeeded task records are kept (s)", minimum=1
    ),
    Field(
        "failure_ttl",
        float,
        30 * 86400.0,
        "how long dead and cancelled task records are kept (s)",
        minimum=1,
    ),
    Field("scheduler", bool, True, "run the scheduler (--no-scheduler: workers only)"),
    Field("metrics", bool, True, "serve /metrics, /livez and /readyz over HTTP"),
    Field("metrics_host", str, "127.0.0.1", "address the HTTP endpoints listen on"),
    Field(
        "api_token",
        str,
        None,
        "bearer token for the JSON API's write calls (none: write calls refused)",
        secret=True,
        nullable=True,
    ),
    Field(
        "metrics_port",
        int,
        9810,
        "port of the HTTP endpoints (0: any free port, see RUN_DIR/http_address)",
        minimum=0,
        maximum=65535,
    ),
    Field("log_successes", bool, False, "log each succeeded task at INFO with its duration"),
    Field(
        "broker",
        str,
        None,
        "Redis broker URL, redis://[user:pass@]host:port/db or rediss:// (none: the embedded "
        "broker of this machine)",
        secret=True,
        nullable=True,
    ),
    Field(
        "node_name",
        str,
        None,
        "this node's name in logs, metrics and records, without '/', '|' or control "
        "characters (default: host name and pid)",
        nullable=True,
    ),
    Field("key_prefix", str, "sv", "prefix of every Redis key: clusters can share one Redis"),
    Field(
        "lease",
        float,
        30.0,
        "lease of a task running on Redis: renewed every third of it by its node's master; "
        "another node recovers the task once it expires (s)",
        minimum=1.0,
    ),
    Field(
        "redis_keep_finished",
        float,
        3600.0,
        "on Redis, how long a finished task's record stays there once the history writer has "
        "copied it to the database, which answers for it after (s)",
        minimum=0.0,
    ),
    Field(
        "queues",
        tuple,
        (),
        "named queues this node's workers take tasks from, comma-separated or repeated, "
        "priority global across them (default: every queue)",
    ),
    Field(
        "ingest",
        tuple,
        (),
        "a RabbitMQ queue whose messages become tasks of this node's broker, "
        "amqp://user:pass@host:port/[vhost/]QUEUE[?prefetch=N] (repeatable)",
        secret=True,
    ),
)

FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :func:`load_settings`, or ``Settings.defaults()``."""

    app: str | None
    workers: int
    run_dir: str
    address: str | None
    authkey: str | None
    graceful_timeout: float
    default_timeout: float
    default_soft_timeout: float | None
    max_retries: int
    backoff_base: float
    backoff_cap: float
    max_tasks_per_child: int
    max_tasks_per_child_jitter: int
    max_memory_per_child: int
    cancel_grace: float
    heartbeat_timeout: float
    crash_limit: int
    crash_window: float
    restart_backoff_cap: float
    max_payload_bytes: int
    max_result_bytes: int
    finished_records: int
    log_format: str
    log_level: str
    log_file: str | None
    database: str
    durability: str
    result_ttl: float
    failure_ttl: float
    scheduler: bool
    metrics: bool
    metrics_host: str
    api_token: str | None
    metrics_port: int
    log_successes: bool
    broker: str | None
    node_name: str | None
    key_prefix: str
    lease: float
    redis_keep_finished: float
    queues: tuple[str, ...]
    ingest: tuple[str, ...]
    config_file: str | None = None
    # Where each value came from ("flag --workers", "env SUPERVISOR_WORKERS", "config file x",
    # "default"): what an error found after loading (a pre-flight check) names.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        return load_settings(cli=overrides, env={}, config_file=None)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """Every setting, with secrets masked: safe to log or show."""
        out = dataclasses.asdict(self)
        out.pop("sources", None)
        for f in FIELDS:
            if f.secret and out.get(f.name) is not None:
                out[f.name] = "***"
        return out


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole TOML document; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror}") from None


def load_settings(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    extra_check: Callable[[Settings], None] | None = None,
) -> Settings:
    """Merge defaults < config file < env < cli and validate every field.

    ``cli`` holds only the flags the user gave (None means "not given"). ``env`` defaults to
    ``os.environ``. The config file is ``config_file``, else ``SUPERVISOR_CONFIG`` from env.
    """
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = os.environ if env is None else env
    config_file = config_file or env.get("SUPERVISOR_CONFIG") or None
    file_values: dict[str, Any] = {}
    if config_file:
        doc = read_config_file(config_file)
        section = doc.get("supervisor", {})
        if not isinstance(section, dict):
            raise ConfigError(f"config file {config_file!r}: [supervisor] must be a table")
        stray = sorted(k for k in doc if k in FIELDS_BY_NAME)
        if stray:  # silently ignoring them would run with the defaults instead
            raise ConfigError(
                f"config file {config_file!r}: setting(s) {', '.join(stray)} are outside the "
                "[supervisor] table; put them under [supervisor]"
            )
        unknown = sorted(set(section) - set(FIELDS_BY_NAME))
        if unknown:
            raise ConfigError(
                f"config file {config_file!r}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(FIELDS_BY_NAME)}"
            )
        file_values = section
    unknown_cli = sorted(set(cli) - set(FIELDS_BY_NAME))
    if unknown_cli:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown_cli)}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in FIELDS:
        if f.name in cli:
            raw, sources[f.name] = cli[f.name], f"flag {f.flag}"
        elif f.env in env:
            raw, sources[f.name] = env[f.env], f"env {f.env}"
        elif f.name in file_values:
            raw, sources[f.name] = file_values[f.name], f"config file {config_file}"
        else:
            values[f.name] = f.default() if callable(f.default) else f.default
            sources[f.name] = "default"
            continue
        values[f.name] = convert(f, raw, sources[f.name])
    settings = Settings(**values, config_file=config_file, sources=sources)
    if settings.backoff_cap < settings.backoff_base:
        raise ConfigError(
            f"backoff_cap: expected a value >= backoff_base ({settings.backoff_base:g}), "
            f"got {settings.backoff_cap:g} (from {sources['backoff_cap']})"
        )
    if settings.broker is not None and (problem := redis_url_problem(settings.broker)):
        raise ConfigError(
            f"broker: {problem} in {mask_redis_url(settings.broker)!r}; expected {REDIS_URL_FORM} "
            f"(from {sources['broker']})"
        )
    if settings.node_name is not None and (problem := node_name_problem(settings.node_name)):
        raise ConfigError(
            f"node_name: {problem} ('/' separates a node from its workers in Redis), "
            f"got {settings.node_name!r} (from {sources['node_name']})"
        )
    if not settings.key_prefix or any(c in settings.key_prefix for c in "{}"):
        raise ConfigError(
            f"key_prefix: expected a non-empty prefix without braces, got {settings.key_prefix!r}"
            f" (from {sources['key_prefix']})"
        )
    if extra_check is not None:
        extra_check(settings)
    return settings
