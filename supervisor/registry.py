"""Task types and their handlers, with per-type options.

A handler is ``handler(params: dict) -> result`` (the seed's calling convention). Options left
unset fall back to the settings' defaults when the master resolves them.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from supervisor.errors import AppImportError, TaskError

Handler = Callable[[dict[str, Any]], Any]
F = TypeVar("F", bound=Callable[..., Any])

PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 10, 5


DEFAULT_QUEUE = "default"
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def queue_name(value: Any) -> str:
    """A named queue: 1-100 letters, digits or ``_.:-`` (it is part of a Redis key)."""
    if not isinstance(value, str) or not QUEUE_NAME.fullmatch(value):
        raise ValueError(f"a queue name must be 1-100 letters, digits or '_.:-', got {value!r}")
    return value


@dataclass(frozen=True)
class TaskOptions:
    """Per-type policy. ``None`` means "use the settings' default" until resolved."""

    timeout_s: float | None = None
    soft_timeout_s: float | None = None
    max_retries: int | None = None
    backoff_base_s: float | None = None
    backoff_cap_s: float | None = None
    priority: int = PRIORITY_DEFAULT
    queue: str = DEFAULT_QUEUE

    def validate(self, name: str) -> None:
        for fld in ("timeout_s", "soft_timeout_s", "backoff_base_s", "backoff_cap_s"):
            value = getattr(self, fld)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):  # "not > 0" also refuses NaN
                raise TaskError(
                    f"task type {name!r}: {fld} must be a positive number, got {value!r}"
                )
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise TaskError(
                f"task type {name!r}: max_retries must be an integer >= 0, got {self.max_retries!r}"
            )
        check_priority(self.priority, what=f"task type {name!r}: priority")
        try:
            queue_name(self.queue)
        except ValueError as exc:
            raise TaskError(f"task type {name!r}: {exc}") from None

    def resolved(
        self,
        *,
        timeout_s: float,
        soft_timeout_s: float | None,
        max_retries: int,
        backoff_base_s: float,
        backoff_cap_s: float,
    ) -> TaskOptions:
        return dataclasses.replace(
            self,
            timeout_s=_unset_to(self.timeout_s, timeout_s),
            soft_timeout_s=_unset_to(self.soft_timeout_s, soft_timeout_s),
            max_retries=_unset_to(self.max_retries, max_retries),
            backoff_base_s=_unset_to(self.backoff_base_s, backoff_base_s),
            backoff_cap_s=_unset_to(self.backoff_cap_s, backoff_cap_s),
        )


def _unset_to(value: Any, default: Any) -> Any:
    return default if value is None else value


def check_priority(value: Any, *, what: str = "priority") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(
            f"{what} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value!r}"
        )
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise TaskError(f"{what} must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value}")
    return value


class TaskRegistry:
    """Maps task type names to handlers and options.

    >>> app = TaskRegistry()
    >>> @app.task("resize", timeout_s=30, max_retries=5)
    ... def resize(params): ...
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._options: dict[str, TaskOptions] = {}
        self.on_start: list[Callable[[Any], None]] = []
        self.on_worker_start: list[Callable[[int], None]] = []

    def register(self, name: str, handler: Handler, **options: Any) -> Handler:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise TaskError(f"task type name must be a non-empty string, got {name!r}")
        if not callable(handler):
            raise TaskError(f"handler of task type {name!r} is not callable: {handler!r}")
        known = [f.name for f in dataclasses.fields(TaskOptions)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TaskError(
                f"task type {name!r}: unknown option(s) {unknown}; known: {', '.join(known)}"
            )
        opts = TaskOptions(**options)
        opts.validate(name)
        self._handlers[name] = handler
        self._options[name] = opts
        return handler

    def task(self, name: str | F | None = None, **options: Any) -> Any:
        """Decorator form of :meth:`register`; the name defaults to the function's name.

        ``@app.task("name", **options)``, ``@app.task()`` and a bare ``@app.task`` all work.
        """
        if callable(name) and not options:  # bare @app.task: we were handed the function
            self.register(name.__name__, name)
            return name

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn, **options)  # type: ignore[arg-type]
            return fn

        return decorate

    def on_master_start(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """Run ``fn(queue)`` in the master once the broker is up (e.g. to seed tasks)."""
        self.on_start.append(fn)
        return fn

    def worker_init(self, fn: Callable[[int], None]) -> Callable[[int], None]:
        """Run ``fn(slot)`` in each worker after fork, before its first task (open per-process
        connections here). If it raises, the worker failed to boot: the master stops with exit
        code 3 instead of respawning it in a loop."""
        self.on_worker_start.append(fn)
        return fn

    @classmethod
    def from_mapping(cls, handlers: Mapping[str, Handler]) -> TaskRegistry:
        """The seed's ``TASK_HANDLERS = {"type": handler}`` style."""
        reg = cls()
        for name, handler in handlers.items():
            reg.register(name, handler)
        return reg

    def handler(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def options(self, name: str) -> TaskOptions | None:
        return self._options.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def all_options(self) -> dict[str, TaskOptions]:
        return dict(self._options)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


_APP_ATTRS = ("app", "registry", "TASK_HANDLERS")


def load_app(spec: str) -> TaskRegistry:
    """Import ``module`` or ``module:attr`` and return its registry.

    Without ``:attr`` the module's ``app``, ``registry`` or ``TASK_HANDLERS`` is used. A dict of
    handlers is accepted (seed style). Any failure is an :class:`AppImportError` whose message
    says what was tried, with the import's own traceback.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AppImportError("no task app given: pass --app MODULE[:ATTR]")
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the working directory's modules load
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = "".join(traceback.format_exception(exc))
        raise AppImportError(
            f"cannot import task app module {module_name!r}: {type(exc).__name__}: {exc}\n{tb}"
        ) from None
    candidates = [attr] if attr else [a for a in _APP_ATTRS if hasattr(module, a)]
    if not candidates:
        raise AppImportError(
            f"module {module_name!r} has none of {', '.join(_APP_ATTRS)}; "
            f"name the registry with --app {module_name}:ATTR"
        )
    try:
        obj = getattr(module, candidates[0])
    except AttributeError:
        raise AppImportError(f"module {module_name!r} has no attribute {candidates[0]!r}") from None
    if isinstance(obj, TaskRegistry):
        return obj
    if isinstance(obj, Mapping):
        try:
            return TaskRegistry.from_mapping(obj)
        except TaskError as exc:
            raise AppImportError(f"{spec}: {exc}") from None
    raise AppImportError(
        f"{module_name}:{candidates[0]} is a {type(obj).__name__}, "
        "expected a TaskRegistry or a dict of handlers"
    )
