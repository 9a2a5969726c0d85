"""The master: forks and supervises the broker and the workers (gunicorn's arbiter, for tasks).

The loop is single-threaded and short: wait for a signal or a timer, handle the recorded signals,
reap children, enforce hard deadlines and liveness, reconcile the worker count, tick the broker.
Signal handlers only record (see :mod:`supervisor.master.signals`). Nothing here starts a thread, so
forking workers from this process is safe; the broker's threads live in its own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor import logs, osutil
from supervisor.broker.base import (
    REASON_SHUTDOWN,
)
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.server import start_broker_process
from supervisor.client import seed as compat
from supervisor.client.discovery import format_address
from supervisor.client.proxy import BrokerClient
from supervisor.client.queue import Queue
from supervisor.config import Settings
from supervisor.errors import BrokerError, ExitCode, SupervisorError
from supervisor.master import scoreboard as sb
from supervisor.master.pool import (
    DRAINING,
    RUNNING,
    STOPPED,
    STOPPING,
    MasterStats,
    SlotState,
    WorkerHandle,
    WorkerPool,
)
from supervisor.master.runfiles import RunFiles
from supervisor.master.scheduler_handle import SchedulerChild
from supervisor.master.signals import SignalQueue
from supervisor.policy import RestartBreaker
from supervisor.registry import TaskOptions, TaskRegistry

TICK_S = 0.5  # longest sleep of the loop: a hard deadline is enforced within about this much


def make_broker(s: Settings, options: dict[str, TaskOptions], default: TaskOptions) -> MemoryBroker:
    """The broker for the settings (runs in the broker process, after the fork)."""
    common: dict[str, Any] = dict(
        task_types=options,
        default_options=default,
        max_payload_bytes=s.max_payload_bytes,
        finished_records=s.finished_records,
    )
    if s.durability == "none":
        return MemoryBroker(**common)
    from supervisor.broker.embedded.durable import DurableBroker
    from supervisor.broker.embedded.journal import open_journal

    return DurableBroker(
        journal=open_journal(s.database, run_dir=s.run_dir, fold_process=True),
        result_ttl_s=s.result_ttl,
        failure_ttl_s=s.failure_ttl,
        **common,
    )


def resolve_options(registry: TaskRegistry, settings: Settings) -> dict[str, TaskOptions]:
    return {
        name: opts.resolved(
            timeout_s=settings.default_timeout,
            soft_timeout_s=settings.default_soft_timeout,
            max_retries=settings.max_retries,
            backoff_base_s=settings.backoff_base,
            backoff_cap_s=settings.backoff_cap,
        )
        for name, opts in registry.all_options().items()
    }


class Master(WorkerPool):
    def __init__(
        self,
        *,
        settings: Settings,
        registry: TaskRegistry,
        reload_settings: Callable[[], Settings] | None = None,
        declared_schedules: Callable[[Settings], list[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.reload_settings = reload_settings
        self.declared_schedules = declared_schedules
        self.scheduler_process: SchedulerChild | None = None
        self.clock = clock
        self.log = logger.bind(component="master")
        self.state = RUNNING
        self.exit_code = ExitCode.OK
        self.workers: dict[int, WorkerHandle] = {}
        self.slots: dict[int, SlotState] = {}
        self.desired = settings.workers
        self.breaker = RestartBreaker(settings.crash_limit, settings.crash_window)
        self.stats = MasterStats()
        self.replace_pids: set[int] = set()
        self.surge_pid: int | None = None
        self.drain_deadline = 0.0
        self.broker_pid = 0
        self.last_tick = 0.0
        self._last_maintain = 0.0
        self._last_memory_check = 0.0
        self._published_pids: frozenset[int] = frozenset()
        self.pending_releases: list[tuple[str, str, str, int]] = []
        self.options = resolve_options(registry, settings)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.run_files = RunFiles.prepare(s.run_dir, s.address, s.authkey)
        self.scoreboard = sb.Scoreboard(max(256, self.desired * 4))
        self.scoreboard.reset(self.scoreboard.master_slot, os.getpid(), self.clock())
        self.signals = SignalQueue()
        self.signals.install()
        default = TaskOptions(
            timeout_s=s.default_timeout,
            soft_timeout_s=s.default_soft_timeout,
            max_retries=s.max_retries,
            backoff_base_s=s.backoff_base,
            backoff_cap_s=s.backoff_cap,
        )
        with self.signals.blocked():
            self.broker_pid, address = start_broker_process(
                address=self.run_files.address,
                authkey=self.run_files.authkey,
                make_broker=lambda: make_broker(s, self.options, default),
                on_serve=self.http_hook(),
            )
        self.run_files.publish(address)
        self.client = BrokerClient(self.run_files.address, self.run_files.authkey, timeout_s=10.0)
        self.queue = Queue(self.client, max_payload_bytes=s.max_payload_bytes)
        compat.set_default_queue(self.queue)  # the seed's get_queue() works in the master too
        self.log.info(
            "master started: pid {}, broker pid {} at {}, {} worker(s), task types: {}",
            os.getpid(),
            self.broker_pid,
            format_address(self.run_files.address),
            self.desired,
            ", ".join(self.registry.names()) or "(none)",
        )
        for hook in self.registry.on_start:
            try:
                hook(self.queue)
            except Exception as exc:
                self.log.opt(exception=exc).error(
                    "on_master_start hook {} failed: {}", getattr(hook, "__name__", hook), exc
                )
        if s.scheduler:
            self.scheduler_process = SchedulerChild(self.make_scheduler)
            self.scheduler_process.start(self.clock())
        self.manage_workers(self.clock())

    def make_scheduler(self) -> Any:
        """A SchedulerProcess for the current settings (built in the master, forked later)."""
        from supervisor.scheduling.process import SchedulerProcess

        s = self.settings
        declared = None
        if self.declared_schedules is not None:
            try:
                declared = self.declared_schedules(s)
            except SupervisorError as exc:  # only after a HUP: the start checked them
                self.log.error("declared schedules not reloaded: {}", exc)
        return SchedulerProcess(
            database_url=s.database,
            address=self.run_files.address,
            authkey=self.run_files.authkey,
            task_types=self.registry.names(),
            config_schedules=declared,
            close_fds=self.signals.fds(),
        )

    def http_hook(self) -> Callable[[MemoryBroker], None] | None:
        """The HTTP endpoints start in the broker process: this one never runs a thread."""
        s = self.settings
        if not s.metrics:
            return None
        from supervisor.web.server import make_on_serve

        return make_on_serve(
            host=s.metrics_host,
            port=s.metrics_port,
            scoreboard=self.scoreboard,
            run_dir=s.run_dir,
            graceful_timeout_s=s.graceful_timeout,
            api_token=s.api_token,
            schedules_database=s.database if s.scheduler else None,
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Start, loop until stopped, clean up; return the exit code."""
        try:
            self.start()
        except SupervisorError as exc:
            self.log.critical("cannot start: {}", exc)
            self.exit_code = ExitCode.USAGE if "already running" in str(exc) else ExitCode.ERROR
            self.cleanup()
            return int(self.exit_code)
        try:
            while self.state != STOPPED:
                self.sleep()
                now = self.clock()
                self.stats.loop_lag_s = (
                    max(0.0, now - self.last_tick - TICK_S) if self.last_tick else 0.0
                )
                self.last_tick = now
                self.scoreboard.heartbeat(self.scoreboard.master_slot, now, sb.BUSY)
                self.handle_signals(now)
                self.reap_workers(now)
                self.enforce_deadlines(now)
                self.enforce_cancels(now)
                self.check_liveness(now)
                self.manage_workers(now)
                self.manage_scheduler(now)
                self.advance_shutdown(now)
                self.tick_broker(now)
        except Exception as exc:
            self.log.opt(exception=exc).critical("master loop failed: {}", exc)
            self.exit_code = ExitCode.ERROR
            self.kill_all(REASON_SHUTDOWN)
            self.reap_blocking(5.0)
        self.cleanup()
        return int(self.exit_code)

    def sleep(self) -> None:
        now = self.clock()
        timeout = TICK_S
        for w in self.workers.values():
            view = self.scoreboard.read(w.slot)
            if view.state == sb.BUSY and view.deadline > 0:
                timeout = min(timeout, view.deadline - now)
        for st in self.slots.values():
            if st.spawn_after > now:
                timeout = min(timeout, st.spawn_after - now)
        if self.state == DRAINING:
            timeout = min(timeout, self.drain_deadline - now)
        if self.scheduler_process is not None:
            wake = self.scheduler_process.next_wake(now)
            timeout = timeout if wake is None else min(timeout, wake)
        self.signals.wait(max(0.0, timeout))

    # -- signals -----------------------------------------------------------------------------
    def handle_signals(self, now: float) -> None:
        for signum in self.signals.drain():
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.state == RUNNING:
                    self.log.info(
                        "{}: graceful shutdown (up to {:g} s)", name, self.settings.graceful_timeout
                    )
                    self.begin_drain(now)
                elif self.state == DRAINING:
                    self.log.warning("{} again: fast shutdown", name)
                    self.begin_fast()
            elif signum == signal.SIGQUIT:
                self.log.warning("SIGQUIT: fast shutdown")
                self.begin_fast()
            elif signum == signal.SIGHUP and self.state == RUNNING:
                self.reload()
            elif signum == signal.SIGTTIN and self.state == RUNNING:
                self.desired += 1
                self.log.info("SIGTTIN: {} worker(s) wanted", self.desired)
            elif signum == signal.SIGTTOU and self.state == RUNNING:
                self.desired = max(1, self.desired - 1)
                self.log.info("SIGTTOU: {} worker(s) wanted", self.desired)
            elif signum == signal.SIGUSR1:
                logs.reopen()
                self.log.info("SIGUSR1: log files reopened")
            elif signum == signal.SIGUSR2:
                self.dump_stacks()

    def dump_stacks(self) -> None:
        frame = sys._current_frames().get(__import__("threading").get_ident())
        stack = "".join(traceback.format_stack(frame)) if frame else "(unavailable)"
        self.log.info("stack of master (pid {}):\n{}", os.getpid(), stack)
        for w in list(self.workers.values()):
            self._signal_worker(w, signal.SIGUSR2)

    def manage_scheduler(self, now: float) -> None:
        if self.state == RUNNING and self.scheduler_process is not None:
            self.scheduler_process.tick(now)

    def reload(self) -> None:
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except SupervisorError as exc:
            self.log.error("SIGHUP: configuration not reloaded: {}", exc)
            return
        self.settings = new
        self.desired = new.workers
        self.breaker = RestartBreaker(new.crash_limit, new.crash_window)
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
        self.replace_pids = {pid for pid, w in self.workers.items() if not w.retiring}
        self.log.info(
            "SIGHUP: configuration reloaded; replacing {} worker(s) one by one",
            len(self.replace_pids),
        )

    def reap_workers(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.broker_pid:
                self.on_broker_exit(status)
                continue
            if self.scheduler_process is not None and pid == self.scheduler_process.pid:
                self.scheduler_process.on_exit(status, now)
                continue
            w = self.workers.pop(pid, None)
            if w is None:
                self.log.debug("reaped orphan pid {} ({})", pid, osutil.describe_status(status))
                continue
            self.on_worker_exit(w, status, now)

    def on_broker_exit(self, status: int) -> None:
        self.broker_pid = 0
        if self.state == STOPPED:
            return
        self.log.critical(
            "the broker process died ({}); its queue is gone; stopping",
            osutil.describe_status(status),
        )
        self.exit_code = ExitCode.BROKER_LOST
        self.kill_all(REASON_SHUTDOWN)
        self.state = STOPPING

    def halt(self, code: ExitCode) -> None:
        """Stop at once with ``code``: kill the workers and requeue their tasks."""
        self.exit_code = code
        self.begin_fast()

    # -- shutdown ----------------------------------------------------------------------------
    def begin_drain(self, now: float) -> None:
        self.state = DRAINING
        if self.scheduler_process is not None:
            self.scheduler_process.stop()  # no new fires while we drain
        self.drain_deadline = now + self.settings.graceful_timeout
        self._set_dispatching(False)
        for w in list(self.workers.values()):
            self.retire(w)

    def begin_fast(self) -> None:
        self.state = STOPPING
        if self.scheduler_process is not None:
            self.scheduler_process.stop(kill=True)
        self._set_dispatching(False)
        self.kill_all(REASON_SHUTDOWN)

    def _set_dispatching(self, on: bool) -> None:
        try:
            self.client.set_dispatching(on)
        except BrokerError as exc:
            self.log.error("could not stop dispatching: {}", exc)

    def advance_shutdown(self, now: float) -> None:
        if self.state == DRAINING and now >= self.drain_deadline:
            # The deadline holds for every child: a scheduler stuck in a database call too.
            if self.workers:
                self.log.warning(
                    "graceful timeout passed; killing {} worker(s), their tasks go back to the "
                    "queue",
                    len(self.workers),
                )
            self.state = STOPPING
            self.kill_all(REASON_SHUTDOWN)
        scheduler_alive = self.scheduler_process is not None and self.scheduler_process.pid
        if self.state in (DRAINING, STOPPING) and not self.workers and not scheduler_alive:
            self.state = STOPPED
        elif self.state == STOPPING and not self.workers and scheduler_alive:
            self.scheduler_process.stop(kill=True)  # type: ignore[union-attr]

    def reap_blocking(self, timeout_s: float) -> None:
        deadline = self.clock() + timeout_s
        while self.workers and self.clock() < deadline:
            self.reap_workers(self.clock())
            if self.workers:
                self.signals.wait(0.05)

    def tick_broker(self, now: float) -> None:
        """Broker housekeeping once a second; the status snapshot also whenever workers changed."""
        if self.state == STOPPED or not self.broker_pid:
            return
        if self.pending_releases:
            self.release_pending()
        pids = frozenset(self.workers)
        due = now - self._last_maintain >= 1.0
        if not due and pids == self._published_pids:
            return
        try:
            if due:
                self._last_maintain = now
                self.client.maintain()
            self.client.publish_status(self.status_snapshot(now))
            self._published_pids = pids
        except BrokerError as exc:
            self.log.error("broker tick failed: {}", exc)

    def cleanup(self) -> None:
        if getattr(self, "broker_pid", 0):
            with contextlib.suppress(BrokerError, AttributeError):
                stats = self.client.stats()
                left = stats["queued"] + stats["scheduled"] + stats["retrying"]
                if left and self.settings.durability == "none":
                    self.log.warning(
                        "{} task(s) still queued or delayed are dropped with the in-memory broker",
                        left,
                    )
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.broker_pid, signal.SIGTERM)
            deadline = self.clock() + 5.0
            while self.clock() < deadline:
                pid, _ = os.waitpid(self.broker_pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.01)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.broker_pid, signal.SIGKILL)
                os.waitpid(self.broker_pid, 0)
            self.broker_pid = 0
        if hasattr(self, "run_files"):
            self.run_files.remove()
        if hasattr(self, "signals"):
            self.signals.uninstall()
        self.log.info("master stopped (exit code {} {})", int(self.exit_code), self.exit_code.name)
