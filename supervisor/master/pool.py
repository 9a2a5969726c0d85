"""Supervising the workers: fork, reap, deadlines, liveness, cancels, scaling, replacement.

A mixin of :class:`supervisor.master.arbiter.Master`, kept apart so that each file reads as one
role: this
one is about worker processes and their slots; the master owns the loop, signals and shutdown.
Every step takes ``now`` (monotonic) and can be called on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil

from supervisor import osutil
from supervisor.broker.base import (
    REASON_CANCELLED,
    REASON_SHUTDOWN,
    REASON_TIMEOUT,
    REASON_WORKER_LOST,
)
from supervisor.client.proxy import BrokerClient
from supervisor.config import Settings
from supervisor.errors import BrokerError, ExitCode
from supervisor.master import scoreboard as sb
from supervisor.master.runfiles import RunFiles
from supervisor.master.signals import SignalQueue
from supervisor.policy import RestartBreaker, SlotBackoff
from supervisor.registry import TaskOptions, TaskRegistry
from supervisor.worker.loop import Worker

HEALTHY_AFTER_S = 5.0  # a slot whose worker lived this long (or ran a task) resets its backoff
RUNNING, DRAINING, STOPPING, STOPPED = "running", "draining", "stopping", "stopped"


@dataclass
class WorkerHandle:
    slot: int
    pid: int
    started_at: float
    kill_reason: str | None = None  # why the master killed it: timeout, hung, shutdown
    retiring: bool = False  # asked to finish its task and exit (TTOU, HUP, drain)

    @property
    def consumer(self) -> str:
        return f"worker:{self.slot}:{self.pid}"


@dataclass
class SlotState:
    backoff: SlotBackoff
    spawn_after: float = 0.0


@dataclass
class MasterStats:
    restarts: Counter[str] = field(default_factory=Counter)
    loop_lag_s: float = 0.0


class WorkerPool:
    """The worker-facing half of the master (see the module docstring)."""

    settings: Settings
    registry: TaskRegistry
    options: dict[str, TaskOptions]
    scoreboard: sb.Scoreboard
    signals: SignalQueue
    run_files: RunFiles
    client: BrokerClient
    log: Any
    state: str
    workers: dict[int, WorkerHandle]
    slots: dict[int, SlotState]
    desired: int
    breaker: RestartBreaker
    stats: MasterStats
    replace_pids: set[int]
    surge_pid: int | None
    broker_pid: int
    _last_memory_check: float
    pending_releases: list[tuple[str, str, str, int]]

    def halt(self, code: ExitCode) -> None:
        raise NotImplementedError

    # -- children ----------------------------------------------------------------------------
    def spawn_worker(self, slot: int, now: float) -> int | None:
        """Fork a worker into ``slot``; None if fork failed (the slot then backs off)."""
        s = self.settings
        worker = Worker(
            slot=slot,
            registry=self.registry,
            options=self.options,
            scoreboard=self.scoreboard,
            address=self.run_files.address,
            authkey=self.run_files.authkey,
            master_pid=os.getpid(),
            max_tasks=s.max_tasks_per_child,
            max_tasks_jitter=s.max_tasks_per_child_jitter,
            max_memory_bytes=s.max_memory_per_child * 1024 * 1024,
            max_payload_bytes=s.max_payload_bytes,
            max_result_bytes=s.max_result_bytes,
            heartbeat_timeout_s=s.heartbeat_timeout,
            close_fds=self.signals.fds(),
        )
        self.scoreboard.reset(slot, 0, now)
        with self.signals.blocked():
            try:
                pid = os.fork()
            except OSError as exc:  # EAGAIN at a pid limit, ENOMEM: try again later, not die
                state = self.slots.setdefault(
                    slot, SlotState(SlotBackoff(cap_s=s.restart_backoff_cap))
                )
                delay = state.backoff.crashed()
                state.spawn_after = now + delay
                self.log.bind(worker=slot).error(
                    "cannot fork a worker ({}); trying again in {:.1f} s", exc, delay
                )
                return None
            if pid == 0:
                worker.run()  # never returns
        self.scoreboard.reset(slot, pid, now)
        self.workers[pid] = WorkerHandle(slot, pid, now)
        self.log.bind(worker=slot).debug("forked worker pid {}", pid)
        return pid

    def _signal_worker(self, w: WorkerHandle, signum: int, group: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(w.pid, signum)
            else:
                os.kill(w.pid, signum)
        if group:  # the worker may not have called setpgid yet
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(w.pid, signum)

    def kill_worker(self, w: WorkerHandle, reason: str) -> None:
        if w.kill_reason is None:
            w.kill_reason = reason
        self._signal_worker(w, signal.SIGKILL, group=True)

    def kill_all(self, reason: str) -> None:
        for w in list(self.workers.values()):
            self.kill_worker(w, reason)

    def on_worker_exit(self, w: WorkerHandle, status: int, now: float) -> None:
        view = self.scoreboard.read(w.slot)
        self.scoreboard.clear(w.slot)
        self.replace_pids.discard(w.pid)
        if self.surge_pid == w.pid:
            self.surge_pid = None
        how = osutil.describe_status(status)
        log = self.log.bind(worker=w.slot, pid=w.pid)
        slot = self.slots.setdefault(
            w.slot, SlotState(SlotBackoff(cap_s=self.settings.restart_backoff_cap))
        )
        if view.tasks_done > 0 or now - w.started_at >= HEALTHY_AFTER_S:
            slot.backoff.healthy()
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if w.kill_reason is not None:
            reason = w.kill_reason
            broker_reason = {
                "timeout": REASON_TIMEOUT,
                "shutdown": REASON_SHUTDOWN,
                "cancelled": REASON_CANCELLED,
            }.get(reason, REASON_WORKER_LOST)
            error = {
                "timeout": f"hard timeout exceeded; worker killed ({how})",
                "hung": f"worker hung; killed ({how})",
            }.get(reason, f"worker killed ({how})")
            log.warning("worker {} killed: {}", w.pid, reason) if reason != "shutdown" else None
        elif clean:
            reason = sb.EXIT_REASONS.get(view.exit_reason) or "exit"
            broker_reason, error = REASON_WORKER_LOST, f"worker exited ({how}) holding the task"
            log.debug("worker {} exited: {}", w.pid, reason)
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == ExitCode.WORKER_BOOT:
            log.critical("worker {} failed to boot; stopping (not respawning in a loop)", w.pid)
            self.halt(ExitCode.WORKER_BOOT)
            return
        else:
            reason = "crash"
            broker_reason, error = REASON_WORKER_LOST, f"worker lost ({how})"
            delay = slot.backoff.crashed()
            slot.spawn_after = now + delay
            log.error(
                "worker {} died ({}) while {}{}; respawning in {:.2f} s",
                w.pid,
                how,
                view.state_name,
                f" running task {view.task_id}" if view.task_id else "",
                delay,
            )
            if self.breaker.record(now) and self.state == RUNNING:
                log.critical(
                    "{} worker crashes within {:g} s: crash-loop breaker tripped; stopping",
                    self.breaker.recent,
                    self.breaker.window_s,
                )
                self.halt(ExitCode.CRASH_LOOP)
        self.stats.restarts[reason] += 1
        self.pending_releases.append(
            (w.consumer, broker_reason, error, osutil.exit_code_of(status))
        )
        self.release_pending()

    def release_pending(self) -> None:
        """Tell the broker about workers that are gone, so their tasks go through the retry
        policy. A call that fails is kept and tried again on the next tick: a worker's task
        has no lease, so nothing else would ever give it back."""
        while self.pending_releases:
            consumer, reason, error, exit_status = self.pending_releases[0]
            try:
                task_id = self.client.release_consumer(
                    consumer, reason, error=error, exit_status=exit_status
                )
            except BrokerError as exc:
                self.log.error("could not release the task of {} (will retry): {}", consumer, exc)
                return
            self.pending_releases.pop(0)
            if task_id:
                self.log.bind(task_id=task_id).warning(
                    "task released from {}: {}", consumer, reason
                )

    def enforce_deadlines(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.kill_reason is not None:
                continue
            view = self.scoreboard.read(w.slot)
            if view.state == sb.BUSY and 0 < view.deadline <= now:
                self.log.bind(worker=w.slot, pid=w.pid, task_id=view.task_id).warning(
                    "task {} of type {} passed its hard timeout; killing worker {} and its group",
                    view.task_id,
                    view.task_type,
                    w.pid,
                )
                self.kill_worker(w, "timeout")

    def enforce_cancels(self, now: float) -> None:
        """Tell workers whose task was cancelled; kill them once the cancel grace passed."""
        if not self.broker_pid or self.state == STOPPED:
            return
        try:
            pending = self.client.pending_cancels()
        except BrokerError as exc:
            self.log.error("could not read cancel requests: {}", exc)
            return
        if not pending:
            return
        by_consumer = {w.consumer: w for w in self.workers.values()}
        wall = time.time()
        for consumer, task_id, requested_at in pending:
            w = by_consumer.get(consumer)
            if w is None or w.kill_reason is not None:
                continue
            view = self.scoreboard.read(w.slot)
            if view.task_id != sb.clip_id(task_id):  # the scoreboard keeps 100 bytes of it
                continue
            log = self.log.bind(worker=w.slot, pid=w.pid, task_id=task_id)
            if not view.cancel_request:
                log.info("task {} cancelled: asking worker {} to stop it", task_id, w.pid)
                self.scoreboard.request_cancel(w.slot)
            if wall - requested_at >= self.settings.cancel_grace:
                log.warning(
                    "task {} ignored its cancel for {:g} s: killing worker {}",
                    task_id,
                    self.settings.cancel_grace,
                    w.pid,
                )
                self.kill_worker(w, "cancelled")

    def check_liveness(self, now: float) -> None:
        limit = self.settings.heartbeat_timeout
        check_memory = (
            bool(self.settings.max_memory_per_child) and now - self._last_memory_check >= 1.0
        )
        if check_memory:
            self._last_memory_check = now
        for w in list(self.workers.values()):
            if w.kill_reason is not None:
                continue
            view = self.scoreboard.read(w.slot)
            if view.state in (sb.IDLE, sb.BOOTING) and now - view.heartbeat > limit:
                self.log.bind(worker=w.slot, pid=w.pid).error(
                    "worker {} silent for {:.1f} s while {}: hung; killing it",
                    w.pid,
                    now - view.heartbeat,
                    view.state_name,
                )
                self.kill_worker(w, "hung")
            elif check_memory and view.state == sb.BUSY and not view.recycle_request:
                try:
                    rss = psutil.Process(w.pid).memory_info().rss
                except psutil.Error:
                    continue
                if rss > self.settings.max_memory_per_child * 1024 * 1024:
                    self.log.bind(worker=w.slot, pid=w.pid).info(
                        "worker {} uses {} MiB: recycled after its task", w.pid, rss >> 20
                    )
                    self.scoreboard.request_recycle(w.slot)

    def manage_workers(self, now: float) -> None:
        if self.state != RUNNING:
            return
        self._rolling_replace(now)
        active = [w for w in self.workers.values() if not w.retiring and w.kill_reason is None]
        wanted = self.desired + (1 if self.surge_pid in self.workers else 0)
        if len(active) < wanted:
            used = {w.slot for w in self.workers.values()}
            free = (i for i in range(self.scoreboard.slots) if i not in used)
            for slot in free:
                if len(active) >= wanted:
                    break
                st = self.slots.setdefault(
                    slot, SlotState(SlotBackoff(cap_s=self.settings.restart_backoff_cap))
                )
                if st.spawn_after > now:
                    continue
                pid = self.spawn_worker(slot, now)
                if pid is not None:
                    active.append(self.workers[pid])
        elif len(active) > wanted:

            def idle_first(w: WorkerHandle) -> tuple[bool, int]:
                return (self.scoreboard.read(w.slot).state == sb.BUSY, -w.slot)

            for w in sorted(active, key=idle_first)[: len(active) - wanted]:
                self.retire(w)

    def _rolling_replace(self, now: float) -> None:
        self.replace_pids &= set(self.workers)
        if not self.replace_pids:
            return
        if self.surge_pid is None:
            used = {w.slot for w in self.workers.values()}
            slot = next((i for i in range(self.scoreboard.slots) if i not in used), None)
            if slot is None:
                self.log.error("no free worker slot for a rolling replacement; skipped")
                self.replace_pids.clear()
                return
            state = self.slots.get(slot)
            if state is None or state.spawn_after <= now:
                self.surge_pid = self.spawn_worker(slot, now)
            return
        surge = self.workers.get(self.surge_pid)
        if surge is not None and self.scoreboard.read(surge.slot).state in (sb.IDLE, sb.BUSY):
            old = self.workers[min(self.replace_pids)]
            self.replace_pids.discard(old.pid)
            self.surge_pid = None
            self.retire(old)

    def retire(self, w: WorkerHandle) -> None:
        w.retiring = True
        self._signal_worker(w, signal.SIGTERM)

    def status_snapshot(self, now: float) -> dict[str, Any]:
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.slot):
            v = self.scoreboard.read(w.slot)
            workers.append(
                {
                    "slot": w.slot,
                    "pid": w.pid,
                    "state": "retiring" if w.retiring and v.state != sb.BUSY else v.state_name,
                    "task_id": v.task_id or None,
                    "task_type": v.task_type or None,
                    "running_s": round(now - v.task_started, 3) if v.state == sb.BUSY else None,
                    "tasks_done": v.tasks_done,
                    "uptime_s": round(now - w.started_at, 3),
                }
            )
        return {
            "pid": os.getpid(),
            "state": self.state,
            "desired_workers": self.desired,
            "workers": workers,
            "restarts": dict(self.stats.restarts),
            "loop_lag_s": round(self.stats.loop_lag_s, 4),
            "scheduler": bool(self.settings.scheduler),
            "max_memory_per_child_bytes": self.settings.max_memory_per_child * 1024 * 1024,
        }
