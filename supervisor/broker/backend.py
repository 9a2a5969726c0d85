"""What the master needs from a broker: a backend it starts, watches and stops.

The master never builds a broker itself. It is handed a :class:`BrokerBackend`, starts it, and
from then on speaks to the typed client it returned (a :class:`~supervisor.broker.base.Broker`).
The embedded backend (:mod:`supervisor.broker.embedded.backend`) forks the broker process and
hosts the HTTP endpoints there; a Redis backend has no process of ours (``pid`` is None) and only
connects. Either way the master runs no thread: whatever needs one lives in another process.

Lifecycle, as the master calls it::

    broker = backend.start(run_files=..., scoreboard=..., task_types=..., default_options=...)
    ...                                   # every loop turn:
    backend.owns(pid)                     # a reaped child: is it the broker's?
    backend.on_child_exit(pid, status)    # it was: what is lost (the master stops)
    backend.tick(now, consumers)          # housekeeping of the backend (lease renewal, ...)
    ...
    backend.stop()                        # once, at the end, whatever happened before
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from supervisor.broker.base import Broker

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.master.runfiles import RunFiles
    from supervisor.master.scoreboard import Scoreboard


Connector = Callable[[], Broker]
"""Makes a new client of the broker; a forked child (worker) calls it after the fork."""


class BrokerBackend(abc.ABC):
    """A broker as the master sees it: started once, watched, stopped once."""

    name: str = "?"

    @abc.abstractmethod
    def start(
        self,
        *,
        run_files: RunFiles,
        scoreboard: Scoreboard,
        task_types: dict[str, Any],
        default_options: Any,
        fork_guard: Callable[[], AbstractContextManager[None]],
    ) -> Broker:
        """Make the broker ready and return the master's client of it.

        Called once, in the master, before any worker is forked; it may fork a process of its
        own (the embedded broker; inside ``fork_guard()``, which blocks the master's signals)
        but must leave no thread in the master. It publishes where
        clients find the broker in ``run_files``. ``task_types`` (``{name: TaskOptions}``) and
        ``default_options`` configure the broker. Raises :class:`~supervisor.errors.BrokerError`
        (or another ``SupervisorError``) with a message naming what failed."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The pid of the broker process this backend forked, or None if it has none (Redis)
        or it is gone."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """True while the broker can be called: started, not stopped, its process alive."""

    def owns(self, pid: int) -> bool:
        """True when ``pid`` (a reaped child of the master) is this backend's process."""
        return self.pid is not None and pid == self.pid

    def on_child_exit(self, pid: int, status: int) -> str:
        """The backend's process ``pid`` exited with the wait ``status``: forget it and return
        what that means for the user, for the master's log line (it then stops)."""
        raise NotImplementedError(f"the {self.name} backend has no process of its own")

    @abc.abstractmethod
    def connector(self) -> Connector:
        """A function a forked child (a worker) calls after the fork to get its own client."""

    def history_connector(self) -> Connector:
        """:meth:`connector` for a child that must also see finished tasks (an ingest asks
        whether a redelivered message's task exists): the same unless the broker keeps only
        live state and the history elsewhere."""
        return self.connector()

    def tick(self, now: float, consumers: Iterable[str]) -> None:
        """Housekeeping on the master's loop (``now`` monotonic; ``consumers``: the names of
        the live workers), e.g. renewing their leases. Must not block for long."""
        return None

    def lost_consumers(self, held: dict[str, str]) -> list[str]:
        """The consumers of ``held`` (consumer -> id of the task it runs) whose task was taken
        from them (its lease ran out and another node recovered it): the master kills them,
        their report would be refused anyway. Each is named once. None for a backend without
        leases."""
        return []

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the broker (if it is ours) and wait for it; safe to call more than once and
        after a failed :meth:`start`."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A few words for the master's start line, e.g. ``broker pid 42 at /run/broker.sock``.
        Nothing secret (no auth key, no password in a URL)."""


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def http_hook(settings: Settings, scoreboard: Scoreboard) -> Callable[[Any], None] | None:
    """The ``on_serve`` hook that starts the HTTP endpoints in the process that serves the
    broker (the embedded broker's, or a Redis node's), or None with ``--no-metrics``."""
    if not settings.metrics:
        return None
    from supervisor.web.server import make_on_serve

    return make_on_serve(
        host=settings.metrics_host,
        port=settings.metrics_port,
        scoreboard=scoreboard,
        run_dir=settings.run_dir,
        graceful_timeout_s=settings.graceful_timeout,
        api_token=settings.api_token,
        schedules_database=settings.database if settings.scheduler else None,
    )


def backend_from_settings(settings: Settings) -> BrokerBackend:
    """The backend the settings ask for: Redis when the ``broker`` setting is a Redis URL,
    else the embedded broker (also while the settings have no ``broker`` field)."""
    url = getattr(settings, "broker", None)
    if isinstance(url, str) and url.startswith(REDIS_SCHEMES):
        from supervisor.broker.redis.backend import RedisBackend

        return RedisBackend(settings)
    from supervisor.broker.embedded.backend import EmbeddedBackend

    return EmbeddedBackend(settings)
