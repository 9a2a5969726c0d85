"""The worker: a forked child that runs one task at a time.

Pre-fork and post-fork work apart: the constructor only stores what it is given; the child does
all of its process setup in :meth:`Worker.init_process` (process group, death signal, signal
handlers, random seed, its own broker connection). Each loop turn reports the last task and takes
the next in one broker call, and stamps a heartbeat in the scoreboard.

Timeouts: the soft timeout is a ``SIGALRM`` that raises :class:`SoftTimeLimitExceeded` inside the
handler, so it can clean up; the hard timeout is the master's job (it kills our process group),
because nothing in this process can interrupt C code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from loguru import logger

from supervisor import logs, osutil, payload
from supervisor.broker.base import Broker, Report
from supervisor.client import seed as compat
from supervisor.client.queue import Queue
from supervisor.errors import (
    BrokerError,
    Cancelled,
    ExitCode,
    PayloadError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
)
from supervisor.master import scoreboard as sb
from supervisor.policy import compute_backoff, recycle_after
from supervisor.registry import TaskOptions, TaskRegistry
from supervisor.worker.context import TaskContext, _cancel_probe, _current, cancel_requested

POLL_S = 1.0  # longest wait in the broker: bounds heartbeat gaps and shutdown reaction
_RESET_SIGNALS = (
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
    signal.SIGQUIT,
    signal.SIGPIPE,
)


class Worker:
    def __init__(
        self,
        *,
        slot: int,
        registry: TaskRegistry,
        options: dict[str, TaskOptions],
        scoreboard: sb.Scoreboard,
        connect: Callable[[], Broker],
        master_pid: int,
        max_tasks: int = 0,
        max_tasks_jitter: int = 0,
        max_memory_bytes: int = 0,
        max_payload_bytes: int | None = None,
        max_result_bytes: int = 1 << 20,
        heartbeat_timeout_s: float = 30.0,
        log_successes: bool = False,
        close_fds: tuple[int, ...] = (),
        queues: tuple[str, ...] | None = None,
    ) -> None:
        self.slot = slot
        self.queues = queues  # the named queues it takes tasks from (None: every queue)
        self.registry = registry
        self.options = options
        self.scoreboard = scoreboard
        self.connect = connect  # called after the fork: the child's own broker client
        self.master_pid = master_pid
        self.max_tasks_conf = (max_tasks, max_tasks_jitter)
        self.max_memory_bytes = max_memory_bytes
        self.max_payload_bytes = max_payload_bytes
        self.max_result_bytes = max_result_bytes
        self.success_level = "INFO" if log_successes else "DEBUG"
        # Wait in the broker at most a third of the heartbeat timeout, so an idle worker is
        # never mistaken for a hung one.
        self.poll_s = min(POLL_S, heartbeat_timeout_s / 3)
        self.close_fds = close_fds
        self.stop = False
        self._broker_failures = 0
        self.tasks_done = 0
        self._in_handler = False
        self._soft_s: float | None = None

    # -- child setup -------------------------------------------------------------------------
    def init_process(self) -> None:
        self.pid = os.getpid()
        os.setpgid(0, 0)  # the master kills our whole group on a hard timeout
        osutil.die_with_parent()
        signal.set_wakeup_fd(-1)
        for fd in self.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C belongs to the master
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR2, self._on_usr2)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        random.seed()
        self.max_tasks = recycle_after(*self.max_tasks_conf)
        self.log = logger.bind(component="worker", worker=self.slot, pid=self.pid)
        self.consumer = f"worker:{self.slot}:{self.pid}"
        self.client = self.connect()
        self.client.ping()
        compat.set_default_queue(Queue(self.client, max_payload_bytes=self.max_payload_bytes))
        _cancel_probe[:] = [lambda: self.scoreboard.field(self.slot, "cancel_request") == 1]
        for hook in self.registry.on_worker_start:
            hook(self.slot)
        if self.max_memory_bytes:
            import psutil

            self._proc = psutil.Process()

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop = True  # finish the current task, then go

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._in_handler:
            raise SoftTimeLimitExceeded(f"soft timeout of {self._soft_s:g} s exceeded")

    def _on_usr2(self, signum: int, frame: Any) -> None:
        stack = "".join(traceback.format_stack(frame))
        logs.emit_raw(
            "INFO",
            f"stack of worker {self.slot} (pid {self.pid}):\n{stack}",
            component="worker",
            worker=self.slot,
            pid=self.pid,
        )

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> NoReturn:
        """Child entry point: never returns."""
        try:
            self.init_process()
        except BaseException as exc:
            logger.bind(component="worker", worker=self.slot).opt(exception=exc).critical(
                "worker failed to boot: {}", exc
            )
            os._exit(ExitCode.WORKER_BOOT)
        self.scoreboard.heartbeat(self.slot, time.monotonic(), sb.IDLE)
        self.log.debug("worker ready")
        code = 0
        try:
            reason = self.loop()
            self.scoreboard.exiting(self.slot, reason)
            self.log.info("worker exiting ({})", sb.EXIT_REASONS[reason] or "stop")
        except BaseException as exc:
            self.log.opt(exception=exc).error("worker loop failed: {}", exc)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def loop(self) -> int:
        report: Report | None = None
        while True:
            if os.getppid() != self.master_pid:
                reason = sb.EXIT_PARENT_GONE
                break
            if self.stop:
                reason = sb.EXIT_SHUTDOWN
                break
            self.scoreboard.heartbeat(self.slot, time.monotonic())
            try:
                msg = self.client.exchange(self.consumer, report, self.poll_s, self.queues)
            except BrokerError as exc:
                # The broker is unreachable (Redis down or cut off; the embedded broker gone,
                # and then the master stops us). The report is kept and sent again once it
                # answers: a result is never dropped (a report whose lease was recovered
                # meanwhile is refused there, so the task is still recorded once).
                self._broker_down(exc, kept=report is not None)
                continue
            if self._broker_failures:
                self.log.info("the broker answers again; report sent")
                self._broker_failures = 0
            report = None
            if msg is None:
                continue
            report = self.execute(msg)
            self.tasks_done += 1
            self.scoreboard.end_task(self.slot, time.monotonic(), self.tasks_done)
            recycle = self.recycle_reason()
            if recycle:
                reason = recycle
                break
        if report is not None:
            self.client.report(self.consumer, report)
        return reason

    def _broker_down(self, exc: BaseException, *, kept: bool) -> None:
        """Back off after a failed broker call (0.1 s doubling to 5 s), heartbeating."""
        self._broker_failures += 1
        delay = compute_backoff(self._broker_failures, base_s=0.1, cap_s=5.0, jitter=False)
        if self._broker_failures == 1 or self._broker_failures % 30 == 0:
            self.log.warning(
                "broker unreachable ({}){}; trying again in {:.1f} s",
                exc,
                ", the last task's report is kept" if kept else "",
                delay,
            )
        deadline = time.monotonic() + delay
        while not self.stop and time.monotonic() < deadline:
            self.scoreboard.heartbeat(self.slot, time.monotonic())
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def recycle_reason(self) -> int:
        if self.max_tasks and self.tasks_done >= self.max_tasks:
            return sb.EXIT_RECYCLE_TASKS
        if self.scoreboard.field(self.slot, "recycle_request"):
            return sb.EXIT_RECYCLE_MEMORY
        if self.max_memory_bytes and self._proc.memory_info().rss > self.max_memory_bytes:
            return sb.EXIT_RECYCLE_MEMORY
        return sb.NO_REASON

    # -- one task ---------------------------------------------------------------------------
    # The worker says nothing above DEBUG about a failed attempt: the broker's line says what
    # happens next (retry or dead) and the task record keeps the traceback.
    def execute(self, msg: dict[str, Any]) -> Report:
        task_id, task_type = msg["task_id"], msg["type"]
        log = self.log.bind(task_id=task_id, type=task_type)
        opts = self.options.get(task_type)
        handler = self.registry.handler(task_type)
        now = time.monotonic()
        timeout = (opts.timeout_s if opts else None) or 300.0
        self.scoreboard.begin_task(self.slot, task_id, task_type, now, now + timeout)
        if handler is None or opts is None:
            known = ", ".join(self.registry.names()) or "(none)"
            error = f"task type {task_type!r} is not registered; known: {known}"
            log.debug("task invalid: {}", error)
            return (task_id, "invalid", {"error": error})
        try:
            params = payload.loads(msg["params"], what=f"params of task {task_id}")
        except PayloadError as exc:
            log.debug("task invalid: {}", exc)
            return (task_id, "invalid", {"error": str(exc)})
        log.debug("task started (attempt {})", msg["attempt"])
        token = _current.set(
            TaskContext(
                task_id,
                task_type,
                msg["attempt"],
                msg["priority"],
                msg.get("scheduled_at"),
                self.slot,
            )
        )
        self._soft_s = opts.soft_timeout_s
        try:
            self._in_handler = True
            try:
                if self._soft_s:
                    signal.setitimer(signal.ITIMER_REAL, self._soft_s)
                result = handler(params)
            finally:
                self._in_handler = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:
            return self.failure_report(task_id, exc, log)
        finally:
            _current.reset(token)
        report = self.result_report(task_id, task_type, result, log)
        if report[1] == "succeeded":
            log.log(
                self.success_level,
                "task {} ({}) succeeded in {:.3f} s",
                task_id,
                task_type,
                time.monotonic() - now,
            )
        return report

    def failure_report(self, task_id: str, exc: BaseException, log: Any) -> Report:
        """The report for a handler that raised ``exc``."""
        tb = "".join(traceback.format_exception(exc))
        if isinstance(exc, Cancelled) or cancel_requested():
            log.debug("task cancelled: {}", exc)
            return (
                task_id,
                "cancelled",
                {"error": f"cancelled: {type(exc).__name__}: {exc}", "traceback": tb},
            )
        if isinstance(exc, Reject):
            log.debug("task rejected (dead, no retry): {}", exc)
            return (task_id, "invalid", {"error": f"rejected: {exc}", "traceback": tb})
        if isinstance(exc, Retry):
            log.debug("task asked for a retry: {}", exc)
            return (task_id, "retry", {"error": str(exc), "delay": exc.delay})
        if isinstance(exc, SoftTimeLimitExceeded):
            log.debug("task timed out: {}", exc)
            return (task_id, "failed", {"reason": "timeout", "error": str(exc), "traceback": tb})
        log.debug("task failed: {}: {}", type(exc).__name__, exc)
        return (
            task_id,
            "failed",
            {"reason": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": tb},
        )

    def result_report(self, task_id: str, task_type: str, result: Any, log: Any) -> Report:
        """Succeeded with a JSON-able result. A result that is not JSON-able, or over
        ``max_result_bytes`` as JSON, is an ``invalid`` attempt: dead at once, not retried (the
        handler would return it again), with an error that says why."""
        if result is None or isinstance(result, bool | int | float):
            return (task_id, "succeeded", result)
        try:
            size = len(json.dumps(result))
        except (TypeError, ValueError) as exc:
            error = f"result of task type {task_type!r} is not JSON-able: {exc}"
            log.debug("{}", error)
            return (task_id, "invalid", {"error": error})
        if size > self.max_result_bytes:
            error = (
                f"result of task type {task_type!r} is {size} bytes as JSON; the limit is "
                f"{self.max_result_bytes} (max_result_bytes)"
            )
            log.debug("{}", error)
            return (task_id, "invalid", {"error": error})
        return (task_id, "succeeded", result)
