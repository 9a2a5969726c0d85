"""The worker pool: stable slots 0..N-1, fork, kill, reap, release, scaling, rolling replace.

An object of its own, handed everything it acts through as keyword arguments (``fork``,
``kill``, ``clock``, the scoreboard, the broker), so that each step is tested with fakes. The
master owns the loop, the signals and the shutdown; :mod:`supervisor.master.watchdog` decides
which workers must die. Every step takes ``now`` (monotonic) and can be called on its own.

Slots. The pool wants ``desired`` workers in slots ``0..desired-1``. A worker holds its slot until
it is reaped, and its replacement is forked into that same slot, so slot numbers in the log and
in ``status`` stay within ``0..N-1``. SIGTTIN adds slot N; SIGTTOU retires the highest. A rolling
replace (SIGHUP) uses one surge slot, the first free one at or above N, for its duration, so
that capacity never drops below N; the log says so when it forks it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from loguru import logger

from supervisor.broker.base import REASON_SHUTDOWN, Broker
from supervisor.config import Settings
from supervisor.errors import BrokerError, ExitCode
from supervisor.master import scoreboard as sb
from supervisor.master.exits import KILL_SHUTDOWN, classify_exit
from supervisor.osutil import exit_code_of
from supervisor.policy import RestartBreaker, SlotBackoff

HEALTHY_AFTER_S = 5.0  # a slot whose worker lived this long (or ran a task) resets its backoff

Fork = Callable[[Callable[[], object]], int]
"""``fork(child) -> pid``: fork, run ``child()`` in the child (it never returns there), return
the child's pid in the parent. Raises OSError when the fork fails."""
Kill = Callable[[int, int], None]
"""``kill(pid, signum)`` as :func:`os.kill`: a negative pid is a process group."""
WorkerFactory = Callable[[int], Any]
"""``make_worker(slot)``: a pre-fork object whose ``run()`` the child calls (never returns)."""
Halt = Callable[[ExitCode, str], None]
"""``halt(code, why)``: the pool asks the master to stop with ``code`` (it may decline)."""


@dataclass
class WorkerHandle:
    slot: int
    pid: int
    started_at: float
    kill_reason: str | None = None  # why the master killed it: timeout, hung, shutdown
    retiring: bool = False  # asked to finish its task and exit (TTOU, HUP, drain)
    retire_why: str = ""

    @property
    def consumer(self) -> str:
        return f"worker:{self.slot}:{self.pid}"


@dataclass
class SlotState:
    backoff: SlotBackoff
    spawn_after: float = 0.0
    last_pid: int = 0  # the worker the next one in this slot replaces (0: none)
    last_why: str = ""  # why that one went, for the "replaced" line


@dataclass
class MasterStats:
    restarts: Counter[str] = field(default_factory=Counter)
    loop_lag_s: float = 0.0


def parse_consumer(consumer: str) -> tuple[str, str]:
    """(slot, pid) of a worker's consumer name ``worker:<slot>:<pid>``."""
    _, slot, pid = [*consumer.split(":"), "?", "?"][:3]
    return slot, pid


class WorkerPool:
    """The master's workers, one per slot (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: Broker,
        scoreboard: sb.Scoreboard,
        make_worker: WorkerFactory,
        fork: Fork,
        kill: Kill = os.kill,
        clock: Callable[[], float] = time.monotonic,
        halt: Halt | None = None,
        stats: MasterStats | None = None,
    ) -> None:
        self.broker = broker
        self.scoreboard = scoreboard
        self.make_worker = make_worker
        self.fork = fork
        self.kill = kill
        self.clock = clock
        self.halt = halt or (lambda code, why: None)
        self.stats = stats or MasterStats()
        self.log = logger.bind(component="master")
        self.workers: dict[int, WorkerHandle] = {}
        self.slots: dict[int, SlotState] = {}
        self.replace_pids: set[int] = set()
        self.surge_pid: int | None = None
        self.filled = False  # True once manage() ran: later starts are logged at INFO
        self.pending_releases: list[tuple[str, str, str, int]] = []
        self._task_types: dict[str, str] = {}  # consumer -> type of the task it held
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take (re)loaded settings: the wanted count and the crash-loop breaker."""
        self.settings = settings
        self.desired = settings.workers
        self.breaker = RestartBreaker(settings.crash_limit, settings.crash_window)

    def slot_state(self, slot: int) -> SlotState:
        return self.slots.setdefault(
            slot, SlotState(SlotBackoff(cap_s=self.settings.restart_backoff_cap))
        )

    # -- children ----------------------------------------------------------------------------
    def spawn(self, slot: int, now: float, *, surge: bool = False) -> int | None:
        """Fork a worker into ``slot``; None if fork failed (the slot then backs off)."""
        worker = self.make_worker(slot)
        state = self.slot_state(slot)
        self.scoreboard.reset(slot, 0, now)
        log = self.log.bind(worker=slot)

        def child() -> NoReturn:
            worker.run()
            os._exit(1)  # run() never returns; if it did, the child must not go on as a master

        try:
            pid = self.fork(child)
        except OSError as exc:  # EAGAIN at a pid limit, ENOMEM: try again later, not die
            delay = state.backoff.crashed()
            state.spawn_after = now + delay
            log.error("cannot fork worker {} ({}); trying again in {:.1f} s", slot, exc, delay)
            return None
        self.scoreboard.reset(slot, pid, now)
        self.workers[pid] = WorkerHandle(slot, pid, now)
        log = log.bind(pid=pid)
        if surge:
            log.info(
                "worker {} started: pid {} (a surge slot above 0..{} while the workers are "
                "replaced one by one)",
                slot,
                pid,
                self.desired - 1,
            )
        elif state.last_pid:
            log.info(
                "worker {} replaced: new pid {} (was {}, {})",
                slot,
                pid,
                state.last_pid,
                state.last_why,
            )
        else:  # the first fill at start is said by the start line; a TTIN's new slot is news
            log.log("INFO" if self.filled else "DEBUG", "worker {} started: pid {}", slot, pid)
        state.last_pid, state.last_why = 0, ""
        return pid

    def signal_worker(self, w: WorkerHandle, signum: int, *, group: bool = False) -> None:
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.kill(-w.pid, signum)
        # and the worker itself: it may not have called setpgid yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.kill(w.pid, signum)

    def kill_worker(self, w: WorkerHandle, reason: str) -> None:
        """SIGKILL the worker's process group; ``reason`` (the first one given) says why."""
        if w.kill_reason is None:
            w.kill_reason = reason
        self.signal_worker(w, signal.SIGKILL, group=True)

    def kill_all(self, reason: str) -> None:
        for w in list(self.workers.values()):
            self.kill_worker(w, reason)

    def retire(self, w: WorkerHandle, why: str = "asked to stop") -> None:
        """Ask ``w`` to finish its task and exit (SIGTERM)."""
        if not w.retiring:
            w.retiring, w.retire_why = True, why
        self.signal_worker(w, signal.SIGTERM)

    # -- exits -------------------------------------------------------------------------------
    def on_exit(self, pid: int, status: int, now: float) -> bool:
        """A reaped child: False if it is not one of our workers, else handle its exit."""
        w = self.workers.pop(pid, None)
        if w is None:
            return False
        view = self.scoreboard.read(w.slot)
        self.scoreboard.clear(w.slot)
        self.replace_pids.discard(w.pid)
        if self.surge_pid == w.pid:
            self.surge_pid = None
        state = self.slot_state(w.slot)
        if view.tasks_done > 0 or now - w.started_at >= HEALTHY_AFTER_S:
            state.backoff.healthy()
        ex = classify_exit(status, kill_reason=w.kill_reason, exit_reason=view.exit_reason)
        log = self.log.bind(worker=w.slot, pid=w.pid)
        why = ex.why
        if ex.kind == "boot_failed":
            log.critical("worker {} (pid {}) failed to boot ({})", w.slot, w.pid, ex.how)
            self.halt(ExitCode.WORKER_BOOT, "a worker could not boot; not respawning it in a loop")
            return True
        if ex.kind == "crash":
            delay = state.backoff.crashed()
            state.spawn_after = now + delay
            running = (
                f"running task {view.task_id} ({view.task_type})"
                if view.task_id
                else view.state_name
            )
            log.bind(respawn_in_s=round(delay, 3)).warning(
                "worker {} (pid {}) died ({}) while {}", w.slot, w.pid, ex.how, running
            )
            if self.breaker.record(now):
                self.halt(
                    ExitCode.CRASH_LOOP,
                    f"{self.breaker.recent} worker crashes within {self.breaker.window_s:g} s: "
                    "crash-loop breaker tripped",
                )
        else:
            if ex.kind == "clean" and w.retiring:
                why = w.retire_why
            log.debug("worker {} (pid {}) exited ({}): {}", w.slot, w.pid, ex.how, why)
        self.stats.restarts[ex.restart_reason] += 1
        if w.slot < self.desired and w.kill_reason != KILL_SHUTDOWN:
            state.last_pid, state.last_why = w.pid, why  # its replacement will say so
        else:
            state.last_pid, state.last_why = 0, ""
        self.pending_releases.append((w.consumer, ex.broker_reason, ex.error, exit_code_of(status)))
        self._task_types[w.consumer] = view.task_type
        self.release_pending()
        return True

    def release_pending(self) -> None:
        """Tell the broker about workers that are gone, so their tasks go through the retry
        policy. A call that fails is kept and tried again on the next tick: a worker's task
        has no lease, so nothing else would ever give it back."""
        while self.pending_releases:
            consumer, reason, error, exit_status = self.pending_releases[0]
            try:
                task_id = self.broker.release_consumer(
                    consumer, reason, error=error, exit_status=exit_status
                )
            except BrokerError as exc:
                self.log.error("could not release the task of {} (will retry): {}", consumer, exc)
                return
            self.pending_releases.pop(0)
            if not task_id:
                self._task_types.pop(consumer, None)
            else:
                self._say_released(task_id, consumer, reason)

    def _say_released(self, task_id: str, consumer: str, reason: str) -> None:
        """The worker's line was said when it was killed or reaped, and the broker says what a
        failed attempt leads to (retry or dead); only a shutdown requeue is said here."""
        slot, pid = parse_consumer(consumer)
        task_type = self._task_types.pop(consumer, "") or "?"
        log = self.log.bind(task_id=task_id, worker=slot)
        if reason == REASON_SHUTDOWN:
            log.info(
                "task {} ({}) requeued after shutdown: worker {} (pid {}) was stopped before it "
                "finished",
                task_id,
                task_type,
                slot,
                pid,
            )
        else:
            log.debug(
                "task {} ({}) released from worker {} (pid {}): {}",
                task_id,
                task_type,
                slot,
                pid,
                reason,
            )

    # -- scaling -----------------------------------------------------------------------------
    def held_slots(self) -> set[int]:
        return {w.slot for w in self.workers.values()}

    def manage(self, now: float) -> None:
        """Fill every free slot below ``desired`` (once its backoff passed); retire the workers
        above it, except the surge worker of a rolling replace."""
        self._rolling_replace(now)
        held = self.held_slots()
        for slot in range(self.desired):
            if slot not in held and self.slot_state(slot).spawn_after <= now:
                self.spawn(slot, now)
        self.filled = True
        for w in list(self.workers.values()):
            if (
                w.slot >= self.desired
                and w.pid != self.surge_pid
                and not w.retiring
                and w.kill_reason is None
            ):
                self.log.bind(worker=w.slot, pid=w.pid).debug(
                    "worker {} (pid {}) retired: {} worker(s) wanted", w.slot, w.pid, self.desired
                )
                self.retire(w, "scaled down")

    def begin_replace(self) -> int:
        """Start a rolling replace of every worker (HUP); return how many will be replaced."""
        self.replace_pids = {pid for pid, w in self.workers.items() if not w.retiring}
        return len(self.replace_pids)

    def _ready(self, w: WorkerHandle | None) -> bool:
        if w is None or w.retiring or w.kill_reason is not None:
            return False
        return self.scoreboard.read(w.slot).state in (sb.IDLE, sb.BUSY)

    def _all_slots_ready(self) -> bool:
        by_slot = {w.slot: w for w in self.workers.values()}
        return all(self._ready(by_slot.get(slot)) for slot in range(self.desired))

    def _rolling_replace(self, now: float) -> None:
        """One old worker at a time: a surge worker first, then retire the lowest old slot once
        every slot holds a ready worker; the surge goes when no old worker is left."""
        self.replace_pids &= {pid for pid, w in self.workers.items() if not w.retiring}
        surge = self.workers.get(self.surge_pid) if self.surge_pid is not None else None
        if surge is not None and surge.slot < self.desired:  # TTIN made it a slot of the pool
            self.surge_pid, surge = None, None
        if not self.replace_pids:
            if surge is not None and self._all_slots_ready():
                self.surge_pid = None
                self.retire(surge, "the rolling replace is done")
            return
        if surge is None:
            held = self.held_slots()
            slot = next(i for i in range(self.desired, self.scoreboard.slots + 1) if i not in held)
            if slot >= self.scoreboard.slots:
                self.log.error("no free worker slot for a rolling replacement; skipped")
                self.replace_pids.clear()
            elif self.slot_state(slot).spawn_after <= now:
                self.surge_pid = self.spawn(slot, now, surge=True)
            return
        if not self._ready(surge) or not self._all_slots_ready():
            return
        old = min((self.workers[pid] for pid in self.replace_pids), key=lambda w: w.slot)
        self.replace_pids.discard(old.pid)
        self.retire(old, "replaced to load the reloaded configuration")

    # -- views -------------------------------------------------------------------------------
    def next_wake(self, now: float) -> float | None:
        """Seconds until the earliest hard deadline or due respawn (None: nothing due)."""
        times = [
            v.deadline
            for v in (self.scoreboard.read(w.slot) for w in self.workers.values())
            if v.state == sb.BUSY and v.deadline > 0
        ]
        times += [st.spawn_after for st in self.slots.values() if st.spawn_after > now]
        return max(0.0, min(times) - now) if times else None

    @staticmethod
    def _state_name(w: WorkerHandle, v: sb.SlotView) -> str:
        if w.kill_reason is not None:
            return "killed"  # not reaped yet: its replacement comes once it is
        return "retiring" if w.retiring and v.state != sb.BUSY else v.state_name

    def generation(self) -> frozenset[tuple[int, bool, bool]]:
        """Changes whenever a worker comes, goes, is killed or retires (publish then)."""
        return frozenset(
            (w.pid, w.kill_reason is not None, w.retiring) for w in self.workers.values()
        )

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The workers as ``supervisor status`` shows them, by slot."""
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.slot):
            v = self.scoreboard.read(w.slot)
            workers.append(
                {
                    "slot": w.slot,
                    "pid": w.pid,
                    "state": self._state_name(w, v),
                    "task_id": v.task_id or None,
                    "task_type": v.task_type or None,
                    "running_s": round(now - v.task_started, 3) if v.state == sb.BUSY else None,
                    "tasks_done": v.tasks_done,
                    "uptime_s": round(now - w.started_at, 3),
                }
            )
        return workers
