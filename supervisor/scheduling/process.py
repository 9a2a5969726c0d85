"""The scheduler process: a child of the master that fires due schedules into the broker.

Why a process of its own: a locked or slow database must never delay the master's hard-timeout
enforcement, and the master stays free of database connections and threads (it forks workers).
The master forks it after the broker is up, supervises it like any child, and stops it with
SIGTERM before the broker.

Pre-fork and post-fork work apart: :class:`SchedulerProcess` only stores its arguments;
:meth:`~SchedulerProcess.start` forks (signals blocked around the fork), and the child sets
itself up in :meth:`~SchedulerProcess.init_process` -- its own process group, death with the
master, signal handlers that only record, a self-pipe to wake its sleep -- then creates the
database engine and the broker connection (never inherited) and loops: step, then sleep in
``select`` until the step's wake time, a signal, or a poke from a process that changed a
schedule (:mod:`supervisor.scheduling.wake`). A schedule due at T is pushed within milliseconds
of T: the sleep ends at T itself, not at the next poll.

Exit codes: 0 after SIGTERM/SIGQUIT; 2 (``ExitCode.USAGE``) when it can never work -- a bad
database URL, a missing driver, a database of a newer release --, so the master should not
respawn it in a loop; 1 for an unexpected error (respawn with backoff).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any, NoReturn

from loguru import logger
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from supervisor import logs, osutil
from supervisor.broker.base import Broker
from supervisor.client.proxy import BrokerClient
from supervisor.db import make_engine
from supervisor.errors import ConfigError, ExitCode
from supervisor.master.signals import fork_blocked
from supervisor.scheduling import wake
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.service import SchedulerOptions, SchedulerService
from supervisor.scheduling.spec import ScheduleSpec
from supervisor.scheduling.store import ScheduleStore

_IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2)


def mask_url(url: str) -> str:
    """``url`` with its password hidden, for logs and the status document."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(invalid URL)"


class SchedulerProcess:
    """The scheduler child. Construct in the master (touches nothing), then :meth:`start`.

    * ``database_url``: SQLAlchemy URL of the schedules database.
    * ``connect``: makes the child's broker client after the fork (the master's backend's
      connector: the embedded broker's proxy, or Redis); else ``address``, ``authkey``: where
      the embedded broker listens (as given to ``BrokerClient``).
    * ``task_types``: the app's registered task type names (validated at add time; recorded in
      the database for the CLI), or None to accept any.
    * ``config_schedules``: the full list of config/app-declared schedules (from
      :func:`supervisor.scheduling.config.schedules_from_config` and ``schedules_from_app``),
      upserted by name at start; None leaves config schedules alone.
    * ``close_fds``: descriptors the child must close (the master's signal pipe).
    """

    def __init__(
        self,
        *,
        database_url: str,
        address: Any = None,
        authkey: bytes = b"",
        connect: Callable[[], Broker] | None = None,
        task_types: Collection[str] | None = None,
        config_schedules: Sequence[ScheduleSpec] | None = None,
        close_fds: Sequence[int] = (),
        options: SchedulerOptions | None = None,
    ) -> None:
        self.database_url = database_url
        self.address = address
        self.authkey = authkey
        self.connect = connect
        self.task_types = None if task_types is None else sorted(task_types)
        self.config_schedules = None if config_schedules is None else list(config_schedules)
        self.close_fds = tuple(close_fds)
        self.options = options or SchedulerOptions()
        self.pid = 0
        self.stop = False
        self._reopen_logs = False
        self._parent: int | None = None  # set by start(): the master's pid
        self.listener: wake.Listener | None = None
        self._listen_tried = False

    # -- in the master -------------------------------------------------------------------------
    def start(self) -> int:
        """Fork the scheduler process; return its pid (in the master)."""
        self._parent = os.getpid()
        self.pid = fork_blocked(self.run)  # run() never returns
        return self.pid

    # -- in the child --------------------------------------------------------------------------
    def run(self) -> NoReturn:
        """Child entry point: set up, loop until SIGTERM, exit with a named code."""
        code = int(ExitCode.ERROR)
        try:
            self.init_process()
            code = self.serve()
        except BaseException as exc:
            logger.bind(component="scheduler").opt(exception=exc).critical(
                "scheduler process failed: {}", exc
            )
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def init_process(self) -> None:
        """Process setup after fork: group, death signal, signals, the wake-up pipe."""
        os.setpgid(0, 0)  # a ^C or a signal to the master's group is the master's to relay
        osutil.die_with_parent()
        if self._parent is not None and os.getppid() != self._parent:
            # The master died before the death signal was set: nobody to fire for.
            os._exit(0)
        signal.set_wakeup_fd(-1)
        for fd in self.close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        for sig in _IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGQUIT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop = True  # the loop finishes its step (claim, push, mark) and exits

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self._reopen_logs = True

    def serve(self) -> int:
        """Create the engine and the broker client, then step and sleep until stopped."""
        log = logger.bind(component="scheduler", pid=os.getpid())
        label = mask_url(self.database_url)
        try:
            engine = make_engine(self.database_url)
        except (ConfigError, ArgumentError, NoSuchModuleError, ImportError) as exc:
            log.critical("scheduler database URL {} cannot be used: {}", label, exc)
            return int(ExitCode.USAGE)
        client = (
            self.connect()
            if self.connect is not None
            else BrokerClient(self.address, self.authkey, timeout_s=10.0)
        )
        service = SchedulerService(
            store=ScheduleStore(engine, known_task_types=self.task_types),
            broker=client,
            task_types=self.task_types,
            config_schedules=self.config_schedules,
            database_label=label,
            options=self.options,
        )
        log.info("scheduler started: pid {}, database {}", os.getpid(), label)
        # Listen before the database is prepared: a change made once the app's task types are
        # recorded (what a client waits for) always pokes us. SQLite's listener needs no
        # database; PostgreSQL's is tried again once the database is ready if it failed here.
        self.listener = wake.listen(engine)
        self._listen_tried = self.listener is not None or engine.dialect.name == "sqlite"
        try:
            while not self.stop:
                if self._reopen_logs:
                    self._reopen_logs = False
                    logs.reopen()
                wake_at = service.step(service.clock())
                if self.listener is None and service.ready and not self._listen_tried:
                    self._listen_tried = True
                    self.listener = wake.listen(engine)
                self.sleep_until(wake_at, service.clock)
        except ScheduleError as exc:  # a database written by a newer release
            log.critical("scheduler cannot use {}: {}", label, exc)
            return int(ExitCode.USAGE)
        finally:
            service.state = "stopping"
            service.publish(service.clock())
            if self.listener is not None:
                self.listener.close()
            close = getattr(client, "close", None)  # a connection of ours: not in the contract
            if close is not None:
                close()
            engine.dispose()
        log.info("scheduler stopped")
        return int(ExitCode.OK)

    def sleep_until(self, wake_at: float, clock: Any) -> None:
        """Sleep until the epoch time ``wake_at``, a signal, or a schedule change."""
        timeout = wake_at - clock()
        if timeout <= 0 or self.stop:
            return
        fds: list[Any] = [self._wake_r]
        if self.listener is not None:
            fds.append(self.listener)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        except (OSError, ValueError):  # the listener's connection broke: poll from now on
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            return
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if self.listener is not None and self.listener in ready and not self.listener.drain():
            self.listener.close()
            self.listener = None


def run_scheduler(
    *,
    database_url: str,
    address: Any,
    authkey: bytes,
    task_types: Collection[str] | None = None,
    config_schedules: Sequence[ScheduleSpec] | None = None,
    close_fds: Sequence[int] = (),
    options: SchedulerOptions | None = None,
) -> NoReturn:
    """Run the scheduler in this (already forked) process; never returns."""
    SchedulerProcess(
        database_url=database_url,
        address=address,
        authkey=authkey,
        task_types=task_types,
        config_schedules=config_schedules,
        close_fds=close_fds,
        options=options,
    ).run()
