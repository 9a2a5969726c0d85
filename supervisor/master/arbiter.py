"""The master: starts a broker backend, supervises the workers (gunicorn's arbiter, for tasks).

The loop is single-threaded and short: wait for a signal or a timer, handle the recorded signals,
reap children, enforce hard deadlines and liveness, reconcile the worker count, tick the broker.
Signal handlers only record (see :mod:`supervisor.master.signals`); :attr:`Master.signal_handlers`
maps each signal to the method that acts on it in the loop. Nothing here starts a thread, so
forking workers from this process is safe; the broker's threads live in its own process.

Composed of parts handed in or built once at start: the broker backend
(:mod:`supervisor.broker.backend`), the :class:`~supervisor.master.pool.WorkerPool`, the
:class:`~supervisor.master.watchdog.Watchdog` and the scheduler child's handle.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor import logs
from supervisor.broker.backend import BrokerBackend, backend_from_settings
from supervisor.broker.base import REASON_SHUTDOWN, Broker
from supervisor.client import seed as compat
from supervisor.client.queue import Queue
from supervisor.config import Settings
from supervisor.errors import BrokerError, BrokerUnreachable, ExitCode, SupervisorError
from supervisor.master import scoreboard as sb
from supervisor.master.children import (
    build_scheduler,
    build_worker,
    default_options,
    resolve_options,
    run_start_hooks,
)
from supervisor.master.ingest_handle import IngestChildren, build_ingest, ingest_specs
from supervisor.master.pool import Fork, Kill, MasterStats, WorkerPool
from supervisor.master.runfiles import RunFiles
from supervisor.master.scheduler_handle import SchedulerChild
from supervisor.master.shutdown import DRAINING, RUNNING, STOPPED, STOPPING, Shutdown
from supervisor.master.signals import SignalQueue, current_stack
from supervisor.master.status import StatusPublisher
from supervisor.master.watchdog import Watchdog
from supervisor.osutil import describe_status
from supervisor.registry import TaskRegistry
from supervisor.worker.loop import Worker

__all__ = ["DRAINING", "RUNNING", "STOPPED", "STOPPING", "Master", "resolve_options"]
TICK_S = 0.5  # longest sleep of the loop: a hard deadline is enforced within about this much


class Master:
    """``Master(settings=..., registry=...)``; ``backend`` defaults to the embedded broker built
    from the settings. ``fork`` and ``kill`` (see :mod:`supervisor.master.pool`) and ``clock``
    (monotonic seconds) are for tests."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: TaskRegistry,
        backend: BrokerBackend | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        declared_schedules: Callable[[Settings], list[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fork: Fork | None = None,
        kill: Kill = os.kill,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend if backend is not None else backend_from_settings(settings)
        self.reload_settings = reload_settings
        self.declared_schedules = declared_schedules
        self.scheduler_process: SchedulerChild | None = None
        self.clock = clock
        self._fork = fork
        self._kill = kill
        self.log = logger.bind(component="master")
        self.shutdown = Shutdown()
        self.exit_code = ExitCode.OK
        self.stats = MasterStats()
        self.last_tick = 0.0
        self.options = resolve_options(registry, settings)
        # One child per --ingest URL; a bad URL or queue is a ConfigError before anything forks.
        specs = ingest_specs(settings, registry.names())
        self.ingest = IngestChildren(specs, self.make_ingest, kill=kill)
        self.signal_handlers: dict[int, Callable[[str, float], None]] = {
            signal.SIGTERM: self.on_stop,
            signal.SIGINT: self.on_stop,
            signal.SIGQUIT: self.on_quit,
            signal.SIGHUP: self.on_hup,
            signal.SIGTTIN: lambda name, now: self.scale(name, +1),
            signal.SIGTTOU: lambda name, now: self.scale(name, -1),
            signal.SIGUSR1: self.on_usr1,
            signal.SIGUSR2: self.on_usr2,  # a stack dump
        }

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.run_files = RunFiles.prepare(s.run_dir, s.address, s.authkey)
        scoreboard = sb.Scoreboard(max(256, s.workers * 4))
        scoreboard.reset(scoreboard.master_slot, os.getpid(), self.clock())
        signals = SignalQueue()
        signals.install()
        self.signals = signals
        broker = self.backend.start(
            run_files=self.run_files,
            scoreboard=scoreboard,
            task_types=self.options,
            default_options=default_options(s),
            fork_guard=signals.blocked,
        )
        self.assemble(broker=broker, scoreboard=scoreboard, signals=signals)
        self.queue = Queue(broker, max_payload_bytes=s.max_payload_bytes)
        compat.set_default_queue(self.queue)  # the seed's get_queue() works in the master too
        self.log.info(
            "master started: pid {}, {}, {} worker(s) (slots 0..{}), task types: {}",
            os.getpid(),
            self.backend.describe(),
            self.pool.desired,
            self.pool.desired - 1,
            ", ".join(self.registry.names()) or "(none)",
        )
        run_start_hooks(self.registry, self.queue)
        if s.scheduler:
            self.scheduler_process = SchedulerChild(self.make_scheduler)
            self.scheduler_process.start(self.clock())
        self.ingest.start(self.clock())
        self.manage_workers(self.clock())

    def assemble(self, *, broker: Broker, scoreboard: sb.Scoreboard, signals: SignalQueue) -> None:
        """Build the pool and the watchdog around a started broker (tests call it with fakes)."""
        self.client = broker
        self.scoreboard = scoreboard
        self.signals = signals
        self.pool = WorkerPool(
            settings=self.settings,
            broker=broker,
            scoreboard=scoreboard,
            make_worker=self.make_worker,
            fork=self._fork or signals.fork,
            kill=self._kill,
            clock=self.clock,
            halt=self.halt,
            stats=self.stats,
        )
        self.watchdog = Watchdog(pool=self.pool, lost_consumers=self.backend.lost_consumers)
        self.publisher = StatusPublisher(
            broker=broker,
            backend=self.backend,
            pool=self.pool,
            state=lambda: self.state,
            settings=lambda: self.settings,
        )
        self.shutdown.attach(
            pool=self.pool, broker=broker, scheduler=lambda: self.scheduler_process
        )

    def make_worker(self, slot: int) -> Worker:
        """The worker for ``slot`` (built in the master, run in the child after the fork)."""
        return build_worker(
            slot,
            settings=self.settings,
            registry=self.registry,
            options=self.options,
            scoreboard=self.scoreboard,
            connect=self.backend.connector(),
            master_pid=os.getpid(),
            close_fds=self.signals.fds(),
        )

    def make_scheduler(self) -> Any:
        """A SchedulerProcess for the current settings (built in the master, forked later)."""
        declared = None
        if self.declared_schedules is not None:
            try:
                declared = self.declared_schedules(self.settings)
            except SupervisorError as exc:  # only after a HUP: the start checked them
                self.log.error("declared schedules not reloaded: {}", exc)
        return build_scheduler(
            settings=self.settings,
            registry=self.registry,
            connect=self.backend.connector(),
            declared=declared,
            close_fds=self.signals.fds(),
        )

    def make_ingest(self, spec: Any) -> Any:
        """The IngestProcess of one ``--ingest`` URL (built in the master, forked later)."""
        return build_ingest(
            spec, settings=self.settings, backend=self.backend, close_fds=self.signals.fds()
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Start, loop until stopped, clean up; return the exit code."""
        try:
            self.start()
        except SupervisorError as exc:
            self.log.critical("cannot start: {}", exc)
            if isinstance(exc, BrokerUnreachable):
                self.exit_code = ExitCode.BROKER_UNREACHABLE
            else:
                self.exit_code = ExitCode.USAGE if "already running" in str(exc) else ExitCode.ERROR
            self.cleanup()
            return int(self.exit_code)
        try:
            while self.state != STOPPED:
                self.sleep()
                self.step(self.clock())
        except Exception as exc:
            self.log.opt(exception=exc).critical("master loop failed: {}", exc)
            self.exit_code = ExitCode.ERROR
            self.pool.kill_all(REASON_SHUTDOWN)
            self.reap_blocking(5.0)
        self.cleanup()
        return int(self.exit_code)

    def step(self, now: float) -> None:
        """One turn of the loop, every step named."""
        self.stats.loop_lag_s = max(0.0, now - self.last_tick - TICK_S) if self.last_tick else 0.0
        self.last_tick = now
        self.scoreboard.heartbeat(self.scoreboard.master_slot, now, sb.BUSY)
        self.handle_signals(now)
        self.reap_children(now)
        self.enforce_deadlines(now)
        self.enforce_cancels(now)
        self.watchdog.enforce_leases(now)
        self.check_liveness(now)
        self.manage_workers(now)
        self.manage_scheduler(now)
        self.manage_ingest(now)
        self.advance_shutdown(now)
        self.tick_broker(now)

    def sleep(self) -> None:
        now = self.clock()
        timeouts = [TICK_S, self.pool.next_wake(now), self.ingest.next_wake(now)]
        if self.state == DRAINING:
            timeouts.append(self.shutdown.drain_deadline - now)
        if self.scheduler_process is not None:
            timeouts.append(self.scheduler_process.next_wake(now))
        self.signals.wait(max(0.0, min(t for t in timeouts if t is not None)))

    # -- the steps ---------------------------------------------------------------------------
    def reap_children(self, now: float) -> None:
        """Reap every child that exited: the broker's, the scheduler, a worker, an orphan."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.on_child_exit(pid, status, now)

    def on_child_exit(self, pid: int, status: int, now: float) -> None:
        if self.backend.owns(pid):
            self.on_broker_exit(pid, status)
        elif self.scheduler_process is not None and pid == self.scheduler_process.pid:
            self.scheduler_process.on_exit(status, now)
        elif self.ingest.owns(pid):
            self.ingest.on_exit(pid, status, now)
        elif not self.pool.on_exit(pid, status, now):
            self.log.debug("reaped orphan pid {} ({})", pid, describe_status(status))

    def on_broker_exit(self, pid: int, status: int) -> None:
        what = self.backend.on_child_exit(pid, status)
        if self.state == STOPPED:
            return
        self.log.critical("{}; stopping", what)
        self.exit_code = ExitCode.BROKER_LOST
        self.pool.kill_all(REASON_SHUTDOWN)
        self.state = STOPPING

    def enforce_deadlines(self, now: float) -> None:
        self.watchdog.enforce_deadlines(now)

    def enforce_cancels(self, now: float) -> None:
        if self.backend.running and self.state != STOPPED:
            self.watchdog.enforce_cancels(now)

    def check_liveness(self, now: float) -> None:
        self.watchdog.check_liveness(now)

    def manage_workers(self, now: float) -> None:
        if self.state == RUNNING:
            self.pool.manage(now)

    def manage_scheduler(self, now: float) -> None:
        if self.state == RUNNING and self.scheduler_process is not None:
            self.scheduler_process.tick(now)

    def manage_ingest(self, now: float) -> None:
        """Respawn dead ingest children while running; in any other state, stop them."""
        if self.state == RUNNING:
            self.ingest.tick(now)
        else:
            self.ingest.stop()

    def tick_broker(self, now: float) -> None:
        if self.state != STOPPED and self.backend.running:
            self.publisher.tick(now)

    def status_snapshot(self, now: float) -> dict[str, Any]:
        return self.publisher.snapshot(now)

    # -- signals -----------------------------------------------------------------------------
    def handle_signals(self, now: float) -> None:
        """Act on each recorded signal with its handler in :attr:`signal_handlers`."""
        for signum in self.signals.drain():
            handler = self.signal_handlers.get(signum)
            if handler is not None:
                handler(signal.Signals(signum).name, now)

    def on_hup(self, name: str, now: float) -> None:
        if self.state == RUNNING:
            self.reload()  # the workers are then replaced one by one

    def scale(self, name: str, delta: int) -> None:
        """TTIN/TTOU: one worker more or fewer (never below one); ignored unless running."""
        if self.state != RUNNING:
            self.log.debug("{} ignored while {}", name, self.state)
            return
        self.pool.desired = max(1, self.pool.desired + delta)
        self.log.info("{}: {} worker(s) wanted", name, self.pool.desired)

    def on_usr1(self, name: str, now: float) -> None:
        logs.reopen()
        self.log.info("{}: log files reopened", name)

    def on_usr2(self, name: str, now: float) -> None:
        """USR2: the stack of the master and of every worker, to the log."""
        self.log.info("stack of master (pid {}):\n{}", os.getpid(), current_stack())
        for w in list(self.pool.workers.values()):
            self.pool.signal_worker(w, signal.SIGUSR2)

    def reload(self) -> None:
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except SupervisorError as exc:
            self.log.error("SIGHUP: configuration not reloaded: {}", exc)
            return
        self.settings = new
        self.pool.configure(new)
        self.options = resolve_options(self.registry, new)
        logs.setup_logging(new.log_format, new.log_level, new.log_file)
        try:
            self.client.configure(
                self.options,
                max_payload_bytes=new.max_payload_bytes,
                finished_records=new.finished_records,
            )
        except BrokerError as exc:
            self.log.error("SIGHUP: broker not reconfigured: {}", exc)
        if self.scheduler_process is not None:
            self.scheduler_process.restart()  # the new one upserts the reloaded schedules
        try:
            self.ingest.reconfigure(ingest_specs(new, self.registry.names()), self.clock())
        except SupervisorError as exc:
            self.log.error("SIGHUP: ingest not reloaded: {}", exc)
        n = self.pool.begin_replace()
        self.log.info("SIGHUP: configuration reloaded; replacing {} worker(s) one by one", n)

    # -- shutdown (the state machine is :class:`~supervisor.master.shutdown.Shutdown`) -------
    @property
    def state(self) -> str:
        return self.shutdown.state

    @state.setter
    def state(self, value: str) -> None:
        self.shutdown.state = value

    def on_stop(self, name: str, now: float) -> None:
        """TERM/INT: a graceful shutdown; the second one: a fast shutdown."""
        if self.state == RUNNING:
            timeout_s = self.settings.graceful_timeout
            self.log.info("{}: graceful shutdown (up to {:g} s)", name, timeout_s)
            self.ingest.stop()  # first: no new task comes in while the workers drain
            self.shutdown.begin_drain(now, timeout_s)
        elif self.state == DRAINING:
            self.log.warning("{} again: fast shutdown", name)
            self.shutdown.begin_fast()

    def on_quit(self, name: str, now: float) -> None:
        self.log.warning("{}: fast shutdown", name)
        self.shutdown.begin_fast()

    def halt(self, code: ExitCode, why: str) -> None:
        """Stop at once with ``code``: kill the workers and requeue their tasks. A crash loop
        found during a shutdown (its kills) does not count."""
        if code == ExitCode.CRASH_LOOP and self.state != RUNNING:
            return
        self.log.critical("{}; stopping", why)
        self.exit_code = code
        self.shutdown.begin_fast()

    def advance_shutdown(self, now: float) -> None:
        self.shutdown.advance(now)

    # -- the end -----------------------------------------------------------------------------
    def reap_blocking(self, timeout_s: float) -> None:
        deadline = self.clock() + timeout_s
        while self.pool.workers and self.clock() < deadline:
            self.reap_children(self.clock())
            if self.pool.workers:
                self.signals.wait(0.05)

    def cleanup(self) -> None:
        self.ingest.wait_stopped()  # before the broker stops: a child may be mid-push
        self.backend.stop()
        if hasattr(self, "run_files"):
            self.run_files.remove()
        if hasattr(self, "signals"):
            self.signals.uninstall()
        self.log.info("master stopped (exit code {} {})", int(self.exit_code), self.exit_code.name)
