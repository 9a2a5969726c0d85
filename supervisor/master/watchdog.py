"""The watchdog: which workers must die or be recycled, read from the scoreboard every tick.

Three steps, each testable alone with a fake clock: :meth:`Watchdog.enforce_deadlines` kills a
worker whose task passed its hard timeout (the worker cannot interrupt C code itself),
:meth:`Watchdog.check_liveness` kills a worker whose heartbeat went silent and asks a worker over
its memory limit to recycle, :meth:`Watchdog.enforce_cancels` relays a user's cancel to the
worker and kills it once the cancel grace passed. Killing is the pool's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from supervisor.errors import BrokerError
from supervisor.master import scoreboard as sb
from supervisor.master.exits import KILL_CANCELLED, KILL_HUNG, KILL_LEASE_LOST, KILL_TIMEOUT
from supervisor.master.pool import WorkerPool


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class Watchdog:
    """Reads the pool's scoreboard; kills through the pool. ``wall_clock`` (epoch s) dates
    cancel requests; ``rss_of(pid)`` measures a worker's memory (None: gone);
    ``lost_consumers`` is the backend's (see :meth:`BrokerBackend.lost_consumers`)."""

    def __init__(
        self,
        *,
        pool: WorkerPool,
        wall_clock: Callable[[], float] = time.time,
        rss_of: Callable[[int], int | None] = _rss,
        lost_consumers: Callable[[dict[str, str]], list[str]] = lambda held: [],
    ) -> None:
        self.pool = pool
        self.lost_consumers = lost_consumers
        self.wall_clock = wall_clock
        self.rss_of = rss_of
        self._last_memory_check = 0.0

    def enforce_deadlines(self, now: float) -> None:
        """Kill (process group, SIGKILL) every worker whose task's hard deadline passed."""
        pool = self.pool
        for w in list(pool.workers.values()):
            if w.kill_reason is not None:
                continue
            view = pool.scoreboard.read(w.slot)
            if view.state == sb.BUSY and 0 < view.deadline <= now:
                limit_s = round(view.deadline - view.task_started, 3)
                pool.log.bind(worker=w.slot, pid=w.pid, task_id=view.task_id).warning(
                    "worker {} (pid {}) killed: task {} ({}) passed its hard timeout of {:g} s",
                    w.slot,
                    w.pid,
                    view.task_id,
                    view.task_type,
                    limit_s,
                )
                pool.kill_worker(w, KILL_TIMEOUT)

    def check_liveness(self, now: float) -> None:
        """Kill a worker idle or booting whose heartbeat is older than ``heartbeat_timeout``;
        at most once a second, ask a busy worker over ``max_memory_per_child`` to recycle."""
        pool = self.pool
        s = pool.settings
        limit_bytes = s.max_memory_per_child * 1024 * 1024
        check_memory = bool(limit_bytes) and now - self._last_memory_check >= 1.0
        if check_memory:
            self._last_memory_check = now
        for w in list(pool.workers.values()):
            if w.kill_reason is not None:
                continue
            view = pool.scoreboard.read(w.slot)
            log = pool.log.bind(worker=w.slot, pid=w.pid)
            if view.state in (sb.IDLE, sb.BOOTING) and now - view.heartbeat > s.heartbeat_timeout:
                log.warning(
                    "worker {} (pid {}) killed: silent for {:.1f} s while {} (hung)",
                    w.slot,
                    w.pid,
                    now - view.heartbeat,
                    view.state_name,
                )
                pool.kill_worker(w, KILL_HUNG)
            elif check_memory and view.state == sb.BUSY and not view.recycle_request:
                rss = self.rss_of(w.pid)
                if rss is not None and rss > limit_bytes:
                    log.info(
                        "worker {} (pid {}) uses {} MiB: recycled after its task",
                        w.slot,
                        w.pid,
                        rss >> 20,
                    )
                    pool.scoreboard.request_recycle(w.slot)

    def enforce_cancels(self, now: float) -> None:
        """Tell workers whose task was cancelled; kill them once the cancel grace passed."""
        pool = self.pool
        try:
            pending = pool.broker.pending_cancels()
        except BrokerError as exc:
            pool.log.error("could not read cancel requests: {}", exc)
            return
        if not pending:
            return
        by_consumer = {w.consumer: w for w in pool.workers.values()}
        wall = self.wall_clock()
        grace_s = pool.settings.cancel_grace
        for consumer, task_id, requested_at in pending:
            w = by_consumer.get(consumer)
            if w is None or w.kill_reason is not None:
                continue
            view = pool.scoreboard.read(w.slot)
            if view.task_id != sb.clip_id(task_id):  # the scoreboard keeps 100 bytes of it
                continue
            log = pool.log.bind(worker=w.slot, pid=w.pid, task_id=task_id)
            if not view.cancel_request:
                log.info(
                    "task {} cancelled: asking worker {} (pid {}) to stop it",
                    task_id,
                    w.slot,
                    w.pid,
                )
                pool.scoreboard.request_cancel(w.slot)
            if wall - requested_at >= grace_s:
                log.warning(
                    "worker {} (pid {}) killed: task {} ({}) ignored its cancel for {:g} s",
                    w.slot,
                    w.pid,
                    task_id,
                    view.task_type,
                    grace_s,
                )
                pool.kill_worker(w, KILL_CANCELLED)

    def enforce_leases(self, now: float) -> None:
        """Kill the busy workers whose task the backend says they lost (Redis leases)."""
        pool = self.pool
        busy = {}
        for w in pool.workers.values():
            view = pool.scoreboard.read(w.slot)
            if w.kill_reason is None and view.state == sb.BUSY and view.task_id:
                busy[w.consumer] = (w, view)
        if not busy:
            return
        for consumer in self.lost_consumers({c: v.task_id for c, (_, v) in busy.items()}):
            if consumer not in busy:
                continue
            w, view = busy[consumer]
            pool.log.bind(worker=w.slot, pid=w.pid, task_id=view.task_id).warning(
                "worker {} (pid {}) killed: task {} ({}) lost its lease to another node",
                w.slot,
                w.pid,
                view.task_id,
                view.task_type,
            )
            pool.kill_worker(w, KILL_LEASE_LOST)
