"""The master's shutdown state machine: running → draining → stopping → stopped.

``draining`` (TERM/INT): no new fires, no new hand-outs, every worker finishes its task and
exits, until ``graceful_timeout``; then ``stopping``: the workers still there are killed and
their tasks requeued (the attempt not counted). A second TERM/INT or a QUIT goes to ``stopping``
at once. ``stopped`` once no worker and no scheduler is left: the loop ends.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger

from supervisor.broker.base import REASON_SHUTDOWN, Broker
from supervisor.errors import BrokerError
from supervisor.master.pool import WorkerPool
from supervisor.master.scheduler_handle import SchedulerChild

RUNNING, DRAINING, STOPPING, STOPPED = "running", "draining", "stopping", "stopped"


class Shutdown:
    """Holds the state; acts on the pool, the broker and the scheduler given to :meth:`attach`."""

    def __init__(self) -> None:
        self.state = RUNNING
        self.drain_deadline = 0.0
        self.log = logger.bind(component="master")
        self._pool: WorkerPool | None = None
        self._broker: Broker | None = None
        self._scheduler: Callable[[], SchedulerChild | None] = lambda: None

    def attach(
        self,
        *,
        pool: WorkerPool,
        broker: Broker,
        scheduler: Callable[[], SchedulerChild | None],
    ) -> None:
        self._pool, self._broker, self._scheduler = pool, broker, scheduler

    @property
    def pool(self) -> WorkerPool:
        assert self._pool is not None, "Shutdown.attach() first"
        return self._pool

    def begin_drain(self, now: float, graceful_timeout_s: float) -> None:
        """Stop scheduling and dispatching; ask every worker to finish its task and exit."""
        self.state = DRAINING
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.stop()  # no new fires while we drain
        self.drain_deadline = now + graceful_timeout_s
        self._set_dispatching(False)
        for w in list(self.pool.workers.values()):
            self.pool.retire(w, "stopped by the shutdown")

    def begin_fast(self) -> None:
        """Kill every worker now (their tasks are requeued) and the scheduler."""
        self.state = STOPPING
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.stop(kill=True)
        self._set_dispatching(False)
        self.pool.kill_all(REASON_SHUTDOWN)

    def _set_dispatching(self, on: bool) -> None:
        if self._broker is None:
            return
        try:
            self._broker.set_dispatching(on)
        except BrokerError as exc:
            self.log.error("could not stop dispatching: {}", exc)

    def advance(self, now: float) -> None:
        """Past the drain deadline, kill; once no child is left, stopped."""
        pool = self.pool
        if self.state == DRAINING and now >= self.drain_deadline:
            # The deadline holds for every child: a scheduler stuck in a database call too.
            if pool.workers:
                self.log.warning(
                    "graceful timeout passed; killing {} worker(s), their tasks go back to the "
                    "queue",
                    len(pool.workers),
                )
            self.state = STOPPING
            pool.kill_all(REASON_SHUTDOWN)
        scheduler = self._scheduler()
        scheduler_alive = scheduler is not None and bool(scheduler.pid)
        if self.state in (DRAINING, STOPPING) and not pool.workers and not scheduler_alive:
            self.state = STOPPED
        elif self.state == STOPPING and not pool.workers and scheduler is not None:
            scheduler.stop(kill=True)  # alive (else stopped above): the deadline holds for it
