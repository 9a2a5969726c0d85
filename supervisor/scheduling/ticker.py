"""``ScheduleTicker``: one step of the scheduler process's loop.

The scheduler process calls :meth:`ScheduleTicker.tick` with its clock's ``now`` whenever it
wakes, and
sleeps until the time it returns: the next due time, but never longer than ``max_sleep_s`` so
that schedules added or edited by another process are seen within that delay. No polling of
every schedule: one indexed ``MIN(next_run_at)`` per wake.

One tick claims at most ``tick_limit`` due schedules (in batches of ``batch_size`` per
transaction) and then returns "now", so that a backlog after an outage is worked off in short
steps between which the caller can notice a stop request.

A database that is locked or unreachable never raises out of ``tick``: the error is logged and
the next attempt is pushed back exponentially (``backoff_base_s`` doubling up to
``backoff_cap_s``), so the master and the workers keep running and the log is not flooded.
"""

from __future__ import annotations

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from supervisor.scheduling.claim import DEFAULT_BATCH, ActiveCount
from supervisor.scheduling.fires import FireCallback, FireMany, FireOutcome
from supervisor.scheduling.store import ScheduleStore

_log = logger.bind(component="scheduler")


class ScheduleTicker:
    """Fires due schedules of ``store`` through ``fire``; tells the master when to wake."""

    def __init__(
        self,
        store: ScheduleStore,
        fire: FireCallback,
        *,
        active_instances: ActiveCount | None = None,
        max_sleep_s: float = 1.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        fire_many: FireMany | None = None,
        batch_size: int = DEFAULT_BATCH,
        tick_limit: int | None = None,
    ) -> None:
        self._store = store
        self._fire = fire
        self._fire_many = fire_many
        self._active = active_instances
        self._batch_size = batch_size
        self._tick_limit = tick_limit
        self._max_sleep_s = max_sleep_s
        self._base_s = backoff_base_s
        self._cap_s = backoff_cap_s
        self.failures = 0  # consecutive failed ticks
        self._retry_at = float("-inf")
        self.last_fired: list[FireOutcome] = []
        self.next_due: float | None = None  # the earliest due time seen by the last tick

    def tick(self, now: float) -> float:
        """Fire what is due at ``now``; return the epoch time at which to call again."""
        self.last_fired = []
        if now < self._retry_at:
            return self._retry_at
        errors_before = self._store.counters["db_error"]
        try:
            self.last_fired = self._store.claim_due(
                now,
                self._fire,
                active_instances=self._active,
                limit=self._tick_limit,
                batch_size=self._batch_size,
                fire_many=self._fire_many,
            )
            next_due = self.next_due = self._store.next_due_at()
        except SQLAlchemyError as exc:
            return self._back_off(now, exc)
        if self._store.counters["db_error"] > errors_before:
            return self._back_off(now, "a schedule could not be claimed (database busy)")
        if self.failures:
            _log.info("scheduler database reachable again after {} failed tick(s)", self.failures)
        self.failures = 0
        wake = now + self._max_sleep_s
        return wake if next_due is None else max(now, min(wake, next_due))

    def _back_off(self, now: float, reason: object) -> float:
        self.failures += 1
        delay_s = min(self._cap_s, self._base_s * 2.0 ** min(self.failures - 1, 30))
        self._retry_at = now + delay_s
        _log.warning(
            "scheduler tick failed ({}); retrying in {:.1f} s (failure {})",
            reason,
            delay_s,
            self.failures,
        )
        return self._retry_at
