"""The scheduler's work, one step at a time, free of process state (testable in-process).

:class:`SchedulerService` is what the scheduler process (:mod:`supervisor.scheduling.process`)
runs between its sleeps: :meth:`~SchedulerService.step` takes the clock's ``now`` and returns
the epoch time at which it wants to run again. The first steps prepare the database (migrate,
upsert the config-declared schedules, record the app's task types), retrying with backoff while
the database is unreachable; after that each step fires what is due (the ticker), now and then
settles fires a crash left unpushed, and publishes the status document to the broker.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from supervisor.broker.base import Broker
from supervisor.errors import DatabaseBusy
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.pusher import BrokerPusher, InstanceTracker
from supervisor.scheduling.spec import ScheduleSpec
from supervisor.scheduling.status import status_doc
from supervisor.scheduling.store import ScheduleStore
from supervisor.scheduling.ticker import ScheduleTicker

_log = logger.bind(component="scheduler")


@dataclass(frozen=True)
class SchedulerOptions:
    """Tuning of the scheduler loop (seconds unless said otherwise)."""

    max_sleep_s: float = 1.0  # longest sleep: changes from other processes are seen this fast
    batch_size: int = 100  # due schedules claimed per transaction
    tick_limit: int = 1000  # due schedules claimed per step (a backlog goes in several steps)
    status_every_s: float = 1.0
    count_every_s: float = 10.0  # how often the enabled schedules are counted for the status
    retry_every_s: float = 10.0  # how often failed pushes are retried ...
    retry_min_age_s: float = 10.0  # ... once they are this old
    fire_retention_s: float = 86_400.0  # settled fire records are kept this long ...
    prune_every_s: float = 60.0  # ... and deleted this often, in short transactions of
    prune_batch: int = 1000  # this many rows (a few ms of write lock), one per second
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_payload_bytes: int | None = 1 << 20


class SchedulerService:
    """Fires the schedules of ``store`` into ``broker``.

    ``config_schedules`` is the full list of config-declared schedules (upserted by name at
    start; config schedules missing from it are disabled), or None to leave them alone.
    ``task_types`` (the app's registered types) is recorded in the database for the CLI.
    """

    def __init__(
        self,
        *,
        store: ScheduleStore,
        broker: Broker,
        task_types: Collection[str] | None = None,
        config_schedules: Sequence[ScheduleSpec] | None = None,
        clock: Callable[[], float] = time.time,
        database_label: str = "",
        options: SchedulerOptions | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.options = options = options or SchedulerOptions()
        self.clock = clock
        self.task_types = None if task_types is None else sorted(task_types)
        self.config_schedules = None if config_schedules is None else list(config_schedules)
        self.database_label = database_label
        self.tracker = InstanceTracker(broker, recent_ids=store.recent_fire_task_ids)
        self.pusher = BrokerPusher(
            broker,
            clock=clock,
            on_pushed=self.tracker.record,
            max_payload_bytes=options.max_payload_bytes,
        )
        self.ticker = ScheduleTicker(
            store,
            self.pusher.push,
            fire_many=self.pusher.push_many,
            active_instances=self.tracker.count,
            max_sleep_s=options.max_sleep_s,
            backoff_base_s=options.backoff_base_s,
            backoff_cap_s=options.backoff_cap_s,
            batch_size=options.batch_size,
            tick_limit=options.tick_limit,
        )
        self.ready = False
        self.state = "starting"
        self.started_at = clock()
        self.config_error: str | None = None
        self.last_tick_s = 0.0
        self._prepare_failures = 0
        self._next_retry = float("-inf")
        self._next_status = float("-inf")
        self._next_count = float("-inf")
        self._next_prune = float("-inf")
        self._enabled: int | None = None
        self._status_failed = False

    # -- the step ------------------------------------------------------------------------------
    def step(self, now: float) -> float:
        """Do what is due at ``now``; return the epoch time of the next step."""
        if not self.ready:
            wake = self.prepare(now)
            if not self.ready:
                self.publish(now)
                return wake
        started = time.perf_counter()
        wake = self.ticker.tick(now)
        self.last_tick_s = time.perf_counter() - started
        self.state = "backoff" if self.ticker.failures else "running"
        if now >= self._next_retry and not self.ticker.failures:
            self._next_retry = now + self.options.retry_every_s
            self.retry_unpushed(self.options.retry_min_age_s)
        if now >= self._next_prune and not self.ticker.failures:
            self.prune(now)
        if now >= self._next_status:
            self.publish(now)
        return min(wake, self._next_status, self._next_retry)

    def prune(self, now: float) -> int:
        """Delete one batch of old fire records; look again soon while batches come back full."""
        batch = self.options.prune_batch
        try:
            removed = self.store.prune_fires(now - self.options.fire_retention_s, batch=batch)
        except SQLAlchemyError as exc:
            _log.warning("could not prune old fire records ({}); trying again later", _short(exc))
            removed = 0
        self._next_prune = now + (1.0 if removed >= batch else self.options.prune_every_s)
        if removed:
            _log.debug(
                "pruned {} fire record(s) older than {:g} s", removed, self.options.fire_retention_s
            )
        return removed

    def prepare(self, now: float) -> float:
        """Migrate, upsert the config schedules, record the task types; ``ready`` when done.

        Returns when to try again after a database error (exponential backoff). Raises
        ScheduleError when the database belongs to a newer release.
        """
        try:
            self.store.migrate()
            if self.config_schedules is not None:
                self._upsert_config()
            if self.task_types is not None:
                self.store.register_task_types(self.task_types)
        except SQLAlchemyError as exc:
            self._prepare_failures += 1
            delay = min(
                self.options.backoff_cap_s,
                self.options.backoff_base_s * 2.0 ** min(self._prepare_failures - 1, 30),
            )
            self.state = "backoff"
            _log.warning(
                "scheduler database {} not usable ({}); retrying in {:.1f} s",
                self.database_label,
                _short(exc),
                delay,
            )
            return now + delay
        self.ready, self.state = True, "running"
        _log.info(
            "scheduler ready on {}: {} enabled schedule(s)",
            self.database_label,
            self.store.count_enabled(),
        )
        self.retry_unpushed(0.0)  # what a crashed predecessor left claimed or failed
        self._next_retry = now + self.options.retry_every_s
        return now

    def _upsert_config(self) -> None:
        try:
            report = self.store.upsert_from_config(self.config_schedules or [])
        except ScheduleError as exc:
            # The master validated the file before forking us; what is left is data-dependent
            # (a changed 'once' schedule now in the past). The stored schedules keep firing.
            self.config_error = str(exc)
            _log.error("config schedules not applied (the stored ones keep firing): {}", exc)
            return
        self.config_error = None
        _log.info(
            "config schedules: {} created, {} updated, {} unchanged, {} disabled",
            len(report.created),
            len(report.updated),
            len(report.unchanged),
            len(report.disabled),
        )
        for name in report.disabled:
            _log.warning("schedule {!r} is no longer in the config: disabled (not deleted)", name)

    def retry_unpushed(self, min_age_s: float) -> None:
        """Settle fires left claimed or failed (see :mod:`supervisor.scheduling.recover`)."""
        try:
            self.store.retry_unpushed(self.pusher.push, min_age_s=min_age_s, known=self._known)
        except SQLAlchemyError as exc:
            _log.warning("could not look for unpushed fires ({}); trying again later", _short(exc))

    def _known(self, task_id: str) -> bool:
        """Whether the broker has ``task_id``; DatabaseBusy (cannot tell) goes to recovery."""
        try:
            return self.pusher.known(task_id)
        except DatabaseBusy:
            raise
        except Exception as exc:  # unknown is the safe answer: the push then decides
            _log.debug("cannot ask the broker about {}: {}", task_id, exc)
            return False

    # -- status --------------------------------------------------------------------------------
    def counters(self) -> Counter[str]:
        return self.store.counters + self.pusher.counters

    def status(self, now: float) -> dict[str, Any]:
        """The status document (see :func:`supervisor.scheduling.status.status_doc`)."""
        if self.ready and now >= self._next_count:
            self._next_count = now + self.options.count_every_s
            try:
                self._enabled = self.store.count_enabled()
            except SQLAlchemyError:
                pass
        return status_doc(
            pid=os.getpid(),
            state=self.state,
            started_at=self.started_at,
            now=now,
            database=self.database_label,
            counters=self.counters(),
            lag=self.pusher.lag,
            next_due_at=self.ticker.next_due,
            enabled=self._enabled,
            db_failures=self.ticker.failures or self._prepare_failures * (not self.ready),
            last_tick_s=self.last_tick_s,
            config_error=self.config_error,
        )

    def publish(self, now: float) -> None:
        """Send the status document to the broker (``publish_scheduler_status``)."""
        self._next_status = now + self.options.status_every_s
        try:
            self.broker.publish_scheduler_status(self.status(now))
        except Exception as exc:  # an older broker without the method, or the broker is gone
            if not self._status_failed:
                self._status_failed = True
                _log.debug(
                    "cannot publish the scheduler status ({}: {}); carrying on",
                    type(exc).__name__,
                    exc,
                )


def _short(exc: BaseException) -> str:
    """The first line of an error (SQLAlchemy appends SQL and a help link)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
