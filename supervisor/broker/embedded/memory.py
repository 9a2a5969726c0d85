"""The embedded broker: priority queue with delays and leases, task records, public store.

It lives in the broker process and is served to every other process by the manager in
:mod:`supervisor.broker.embedded.server`; it is also usable in-process (the seed's ``MemoryQueue``).
One condition variable guards everything: the manager serves each client connection in its own
thread, and the critical sections are a few dict and deque operations.

Ready tasks sit in one FIFO deque per priority (0-10), so dequeue order is global and stable:
higher priority first, FIFO within a priority, whatever the number of consumers, with no prefetch.
Delayed tasks (an ``eta``, or a retry backoff) wait in a heap here, never in a worker.

Metrics are scraped from this process every few seconds, so ``stats`` and ``queue_size`` must not
walk the records: counts by status and ready counts by priority are kept up to date on every
status change (``_count`` / ``_uncount``), and the oldest ready age is read from the lane heads.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from supervisor.broker import base
from supervisor.broker.base import Broker, Report
from supervisor.broker.embedded.control import ControlMixin
from supervisor.broker.embedded.hub import HubMixin
from supervisor.broker.embedded.parking import ParkingMixin
from supervisor.broker.embedded.store import MemoryStore
from supervisor.broker.records import TaskRecord
from supervisor.errors import DuplicateTaskId, TaskError, UnknownTaskType
from supervisor.policy import compute_backoff
from supervisor.registry import PRIORITY_MAX, PRIORITY_MIN, TaskOptions, check_priority

WORKER_PREFIX = "worker:"  # consumers the master supervises (it enforces their deadlines)
LEASE_GRACE_S = 30.0  # how long past its timeout an external consumer may hold a task
MAX_ID_LEN = 200
MAX_WAIT_S = 3600.0  # longest single condition wait (a far eta must not overflow the timeout)


def _unique_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise TaskError(
            f"unique_key must be a non-empty string of at most {MAX_ID_LEN} "
            f"characters, got {value!r}"
        )
    return value


class MemoryBroker(ParkingMixin, ControlMixin, HubMixin, Broker):
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        task_types: dict[str, TaskOptions] | None = None,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int = 1 << 20,
        finished_records: int = 10_000,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._ready: list[deque[tuple[str, int]]] = [deque() for _ in range(PRIORITY_MAX + 1)]
        self._delayed: list[tuple[float, int, str]] = []
        self._active: dict[str, TaskRecord] = {}
        self._finished: OrderedDict[str, TaskRecord] = OrderedDict()
        self._held: dict[str, str] = {}  # consumer -> task id
        self._unique: dict[str, str] = {}  # unique key -> id of the live task holding it
        self._seq = 0
        self._dispatching = True
        self._types: dict[str, TaskOptions] | None = task_types
        self._default = default_options or TaskOptions(
            timeout_s=300.0, max_retries=3, backoff_base_s=1.0, backoff_cap_s=300.0
        )
        self._max_payload = max_payload_bytes
        self._finished_cap = finished_records
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self._events: deque[tuple[str, str, str, float]] = deque(maxlen=100_000)
        self._status: dict[str, Any] = {}
        self._scheduler: dict[str, Any] = {}
        self._scheduler_at: float | None = None  # broker clock of the last scheduler publish
        # Counts kept on every status change, so stats() is O(priorities), not O(records):
        # records in _active or _finished by status, and live ready entries by priority.
        # _counted (task id -> the status it is counted under) makes un-counting a record that
        # was put in place directly (journal recovery) a no-op; a record removed directly
        # (purge) shows as a size mismatch, and the counts are rebuilt (see _check_counts).
        self._counted: dict[str, str] = {}
        self._by_status: Counter[str] = Counter()
        self._ready_n = [0] * (PRIORITY_MAX + 1)
        self._front_seqs: set[int] = set()  # lane entries put back at the front (shutdown)
        self.store = MemoryStore(clock=clock)
        self._init_parking()

    # -- configuration -----------------------------------------------------------------------
    def configure(
        self,
        task_types: dict[str, TaskOptions] | None,
        *,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int | None = None,
        finished_records: int | None = None,
    ) -> None:
        """Set the known task types (None: accept any type) and limits; used at start and HUP."""
        with self._cond:
            self._types = dict(task_types) if task_types is not None else None
            if default_options is not None:
                self._default = default_options
            if max_payload_bytes is not None:
                self._max_payload = max_payload_bytes
            if finished_records is not None:
                self._finished_cap = finished_records

    def _options(self, task_type: str) -> TaskOptions:
        if self._types is not None and task_type in self._types:
            return self._types[task_type]
        return self._default

    def _option(self, task_type: str, name: str, fallback: Any) -> Any:
        """The type's option, else the default options', else ``fallback`` (0 is a value)."""
        value = getattr(self._options(task_type), name)
        if value is None:
            value = getattr(self._default, name)
        return fallback if value is None else value

    # -- push --------------------------------------------------------------------------------
    def _validate(self, msg: Any) -> TaskRecord:
        if not isinstance(msg, dict):
            raise TaskError(f"a task must be a dict, got {type(msg).__name__}")
        task_type = msg.get("type")
        if not isinstance(task_type, str) or not task_type:
            raise TaskError(f"task 'type' must be a non-empty string, got {task_type!r}")
        if self._types is not None and task_type not in self._types:
            known = ", ".join(sorted(self._types)) or "(none)"
            raise UnknownTaskType(f"task type {task_type!r} is not registered; known: {known}")
        params = msg.get("params", b"")
        if not isinstance(params, bytes):
            raise TaskError(
                "task params must reach the broker pickled (bytes); "
                "push through supervisor.connect() or get_queue()"
            )
        if len(params) > self._max_payload:
            raise TaskError(
                f"params of task type {task_type!r} are {len(params)} bytes pickled; "
                f"the limit is {self._max_payload} (max_payload_bytes)"
            )
        priority = msg.get("priority")
        priority = self._options(task_type).priority if priority is None else priority
        check_priority(priority)
        task_id = msg.get("task_id") or str(uuid.uuid4())
        if not isinstance(task_id, str) or len(task_id) > MAX_ID_LEN:
            raise TaskError(
                f"task_id must be a string of at most {MAX_ID_LEN} characters, got {task_id!r}"
            )
        if task_id in self._active:
            raise DuplicateTaskId(f"task id {task_id!r} is already {self._active[task_id].status}")
        eta = msg.get("eta")
        if eta is not None and (
            isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta)
        ):
            raise TaskError(f"eta must be epoch seconds, got {eta!r}")
        delay = msg.get("delay")
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not 0 <= delay < math.inf
        ):
            raise TaskError(f"delay must be a number of seconds >= 0, got {delay!r}")
        now = self._clock()
        if delay is not None:  # on the broker's clock: a producer's clock may be skewed
            eta = now + delay
        return TaskRecord(
            task_id=task_id,
            type=task_type,
            params=params,
            priority=priority,
            status=base.QUEUED,
            pushed_at=now,
            eta=float(eta) if eta is not None else None,
            schedule_id=msg.get("schedule_id"),
            scheduled_at=msg.get("scheduled_at"),
            unique_key=_unique_key(msg.get("unique_key")),
        )

    # -- counts (every status change of a tracked record goes through these) ----------------
    def _count(self, rec: TaskRecord) -> None:
        self._counted[rec.task_id] = rec.status
        self._by_status[rec.status] += 1
        if rec.status == base.QUEUED:
            self._ready_n[rec.priority] += 1

    def _uncount(self, rec: TaskRecord) -> None:
        status = self._counted.pop(rec.task_id, None)
        if status is None:
            return  # never counted: put in place directly
        self._by_status[status] -= 1
        if status == base.QUEUED:
            self._ready_n[rec.priority] -= 1

    def _check_counts(self) -> None:
        """Rebuild the counts if records were added or removed behind ``_count`` (O(1) check)."""
        if len(self._counted) == len(self._active) + len(self._finished):
            return
        self._counted = {}
        self._by_status = Counter()
        self._ready_n = [0] * (PRIORITY_MAX + 1)
        for rec in (*self._active.values(), *self._finished.values()):
            self._count(rec)

    def _changed(self, rec: TaskRecord) -> None:
        """Called (lock held) after ``rec`` was queued, taken or finished: the durable
        broker's journal hook; nothing to do in memory."""

    def _move(self, rec: TaskRecord, status: str) -> None:
        self._uncount(rec)
        rec.status = status
        self._count(rec)

    def _enqueue(
        self, rec: TaskRecord, *, delayed_status: str = base.SCHEDULED, front: bool = False
    ) -> None:
        """Track ``rec`` as active: delayed (as ``delayed_status``) until its eta, else ready."""
        if self._active.get(rec.task_id) is rec:
            self._uncount(rec)  # counted again below under its new status
        old = self._finished.pop(rec.task_id, None)
        if old is not None:
            self._uncount(old)
        self._seq += 1
        rec.seq = self._seq
        self._active[rec.task_id] = rec
        if rec.unique_key is not None:
            self._unique[rec.unique_key] = rec.task_id
        if rec.eta is not None and rec.eta > self._clock():
            rec.status = delayed_status
            heapq.heappush(self._delayed, (rec.eta, rec.seq, rec.task_id))
            self._count(rec)
            self._changed(rec)
            self._eta_set(rec.eta)
            self._cond.notify_all()  # waiters recompute how long to sleep
        else:
            rec.status = base.QUEUED
            rec.ready_at = self._clock()
            lane = self._ready[rec.priority]
            if front:
                lane.appendleft((rec.task_id, rec.seq))
                self._front_seqs.add(rec.seq)
            else:
                lane.append((rec.task_id, rec.seq))
            self._count(rec)
            # Record the change before waking a consumer: the woken thread would otherwise
            # wake only to wait for this one's lock and GIL (two more context switches).
            self._changed(rec)
            self._task_ready()
            self._cond.notify()

    def _existing_unique(self, rec: TaskRecord) -> str | None:
        """The id of the live task holding ``rec``'s unique key, if any."""
        if rec.unique_key is None:
            return None
        holder = self._unique.get(rec.unique_key)
        return holder if holder in self._active else None

    def push(self, message: dict[str, Any]) -> str:
        with self._cond:
            rec = self._validate(message)
            existing = self._existing_unique(rec)
            if existing is not None:
                return existing
            self._enqueue(rec)
            self.counters[("pushed", rec.type, "")] += 1
            return rec.task_id

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        if not isinstance(messages, list):
            raise TaskError(f"push_many takes a list of tasks, got {type(messages).__name__}")
        with self._cond:
            recs = [self._validate(m) for m in messages]
            ids = [r.task_id for r in recs]
            if len(set(ids)) != len(ids):
                raise TaskError("push_many got the same task_id twice")
            for i, rec in enumerate(recs):
                existing = self._existing_unique(rec)
                if existing is not None:
                    ids[i] = existing
                    continue
                self._enqueue(rec)
                self.counters[("pushed", rec.type, "")] += 1
            return ids

    # -- dispatch ----------------------------------------------------------------------------
    def _promote(self, now: float) -> int:
        n = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(self._delayed)
            rec = self._active.get(task_id)
            if rec is None or rec.seq != seq or rec.status not in (base.SCHEDULED, base.RETRYING):
                continue
            rec.eta = None
            self._move(rec, base.QUEUED)
            rec.ready_at = now
            self._ready[rec.priority].append((task_id, seq))
            n += 1
        if n:
            self._task_ready()
            self._cond.notify(n)
        return n

    def _take(self, consumer: str, now: float) -> dict[str, Any] | None:
        self._promote(now)
        for lane in reversed(self._ready):
            while lane:
                task_id, seq = lane.popleft()
                if self._front_seqs:
                    self._front_seqs.discard(seq)
                rec = self._active.get(task_id)
                if rec is None or rec.seq != seq or rec.status != base.QUEUED:
                    continue  # cancelled or re-queued since: a stale entry
                self._move(rec, base.RUNNING)
                rec.attempts += 1
                rec.started_at = now
                rec.consumer = consumer
                timeout = self._option(rec.type, "timeout_s", 300.0)
                rec.lease_until = (
                    None if consumer.startswith(WORKER_PREFIX) else now + timeout + LEASE_GRACE_S
                )
                self._held[consumer] = task_id
                self.counters[("started", rec.type, "")] += 1
                self._events.append(("started", rec.type, "", now - (rec.ready_at or now)))
                self._changed(rec)
                return rec.message()
        return None

    def _next_eta_in(self, now: float) -> float | None:
        return self._delayed[0][0] - now if self._delayed else None

    def pop(self, consumer: str, wait_s: float | None = 0.0) -> dict[str, Any] | None:
        deadline = None if wait_s is None else time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while True:
                if not self._dispatching:
                    return None
                if consumer in self._held:
                    raise TaskError(
                        f"consumer {consumer!r} still holds task "
                        f"{self._held[consumer]!r}: report it first"
                    )
                now = self._clock()
                msg = self._take(consumer, now)
                if msg is not None:
                    return msg
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                eta_in = self._next_eta_in(now)
                waits = [w for w in (remaining, eta_in) if w is not None]
                self._cond.wait(min(max(0.0, min(waits)), MAX_WAIT_S) if waits else None)

    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None
    ) -> dict[str, Any] | None:
        if report is not None:
            self.report(consumer, report)
        return self.pop(consumer, wait_s)

    # -- outcomes ----------------------------------------------------------------------------
    def _finish(self, rec: TaskRecord, status: str, now: float) -> None:
        if rec.unique_key is not None and self._unique.get(rec.unique_key) == rec.task_id:
            del self._unique[rec.unique_key]
        ran = rec.status == base.RUNNING  # not a task cancelled while it waited
        self._move(rec, status)
        rec.finished_at = now
        rec.consumer = None
        rec.lease_until = None
        self._active.pop(rec.task_id, None)
        self._finished[rec.task_id] = rec
        while len(self._finished) > self._finished_cap:
            self._uncount(self._finished.popitem(last=False)[1])
        self.counters[("finished", rec.type, status)] += 1
        if ran and rec.started_at is not None:  # the duration histogram: attempts that ran
            self._events.append(("finished", rec.type, status, now - rec.started_at))
        self._changed(rec)

    def _fail(self, rec: TaskRecord, reason: str, detail: dict[str, Any], now: float) -> None:
        rec.errors.append(
            {
                "attempt": rec.attempts,
                "reason": reason,
                "at": now,
                "error": str(detail.get("error", ""))[:4000],
                "traceback": str(detail.get("traceback", ""))[-16000:],
                "exit_status": detail.get("exit_status"),
            }
        )
        rec.consumer = None
        rec.lease_until = None
        if rec.cancel_requested_at is not None or reason == base.REASON_CANCELLED:
            self._finish(rec, base.CANCELLED, now)  # whatever ended it: never retried
            return
        if reason == base.REASON_SHUTDOWN:  # not the task's fault: put it back, uncounted
            rec.attempts = max(0, rec.attempts - 1)
            rec.errors.pop()
            self._enqueue(rec, front=True)
            return
        self.counters[("failed", rec.type, reason)] += 1
        max_retries = self._option(rec.type, "max_retries", 3)
        if reason == base.REASON_INVALID or rec.attempts > max_retries:
            self._finish(rec, base.DEAD, now)
            return
        delay = detail.get("delay")
        if delay is None:
            delay = compute_backoff(
                rec.attempts,
                base_s=self._option(rec.type, "backoff_base_s", 1.0),
                cap_s=self._option(rec.type, "backoff_cap_s", 300.0),
                rng=self._rng,
            )
        rec.eta = now + max(0.0, float(delay))
        self.counters[("retried", rec.type, reason)] += 1
        self._enqueue(rec, delayed_status=base.RETRYING)

    def report(self, consumer: str, report: Report) -> None:
        task_id, outcome, detail = report
        with self._cond:
            if self._held.get(consumer) != task_id:
                return  # late report of a task already released (timed out, lost): ignore
            del self._held[consumer]
            rec = self._active.get(task_id)
            if rec is None:
                return
            now = self._clock()
            if outcome == base.SUCCEEDED:
                rec.result = detail
                self._finish(rec, base.SUCCEEDED, now)
            elif outcome == "retry":
                self._fail(rec, base.REASON_RETRY, detail or {}, now)
            elif outcome == "invalid":
                self._fail(rec, base.REASON_INVALID, detail or {}, now)
            elif outcome == base.CANCELLED:
                self._fail(rec, base.REASON_CANCELLED, detail or {}, now)
            else:
                reason = (detail or {}).get("reason", base.REASON_ERROR)
                self._fail(rec, reason, detail or {}, now)

    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        with self._cond:
            self._parked.pop(consumer, None)
            task_id = self._held.pop(consumer, None)
            rec = self._active.get(task_id) if task_id else None
            if rec is None:
                return None
            self._fail(rec, reason, {"error": error, "exit_status": exit_status}, self._clock())
            return task_id

    def set_dispatching(self, on: bool) -> None:
        with self._cond:
            self._dispatching = bool(on)
            self._parking_changed()
            self._cond.notify_all()

    # -- queries and control -----------------------------------------------------------------
    def queue_size(self) -> int:
        with self._cond:
            self._promote(self._clock())
            self._check_counts()
            return sum(self._ready_n)

    def _is_live(self, task_id: str, seq: int) -> bool:
        rec = self._active.get(task_id)
        return rec is not None and rec.seq == seq and rec.status == base.QUEUED

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._cond:
            rec = self._active.get(task_id) or self._finished.get(task_id)
            return None if rec is None else rec.as_dict()

    def retry_task(self, task_id: str) -> bool:
        with self._cond:
            rec = self._finished.get(task_id)
            if rec is None or rec.status not in (base.DEAD, base.CANCELLED):
                return False
            if self._existing_unique(rec) not in (None, task_id):
                return False  # another live task holds its unique key now
            rec.attempts = 0
            rec.eta = None
            rec.finished_at = None
            rec.cancel_requested_at = None
            self._enqueue(rec)  # takes it out of the finished records
            return True

    def _oldest_ready_at(self, prio: int) -> float | None:
        """When the longest-waiting ready task of a lane became ready (None: lane empty).

        Lanes are FIFO by ready time except entries put back at the front (shutdown requeues),
        which sit before every other entry: look at those and the first ordinary live entry.
        Stale entries at the head are dropped on the way (``_take`` would skip them anyway)."""
        lane = self._ready[prio]
        while lane and not self._is_live(*lane[0]):
            self._front_seqs.discard(lane.popleft()[1])
        oldest: float | None = None
        for task_id, seq in lane:
            rec = self._active.get(task_id)
            if rec is None or rec.seq != seq or rec.status != base.QUEUED:
                continue
            ready_at = rec.ready_at if rec.ready_at is not None else self._clock()
            oldest = ready_at if oldest is None else min(oldest, ready_at)
            if seq not in self._front_seqs:
                break
        return oldest

    def stats(self) -> dict[str, Any]:
        """Counts by status and priority, oldest ready age, store size and counters.

        O(priorities + task types), whatever the number of records (it is scraped often)."""
        with self._cond:
            now = self._clock()
            self._promote(now)
            self._check_counts()
            by_priority: dict[int, int] = {}
            oldest: dict[int, float] = {}
            for prio in range(PRIORITY_MIN, PRIORITY_MAX + 1):
                if self._ready_n[prio]:
                    by_priority[prio] = self._ready_n[prio]
                    ready_at = self._oldest_ready_at(prio)
                    oldest[prio] = 0.0 if ready_at is None else max(0.0, now - ready_at)
            counts = {status: n for status, n in self._by_status.items() if n}
            return {
                "queued": sum(by_priority.values()),
                "by_priority": by_priority,
                "oldest_age_s": oldest,
                "scheduled": counts.get(base.SCHEDULED, 0),
                "retrying": counts.get(base.RETRYING, 0),
                "running": len(self._held),
                "by_status": counts,
                "store_keys": self.store.get_store_size(),
                "dispatching": self._dispatching,
                "counters": dict(self.counters),
            }

    def drain_events(self) -> list[tuple[str, str, str, float]]:
        """Observations since the last call: (event, type, status, seconds) for metrics."""
        with self._cond:
            out = list(self._events)
            self._events.clear()
            return out

    def maintain(self) -> dict[str, int]:
        with self._cond:
            now = self._clock()
            promoted = self._promote(now)
            expired = [
                (c, t)
                for c, t in self._held.items()
                if (r := self._active.get(t)) is not None
                and r.lease_until is not None
                and r.lease_until <= now
            ]
            for consumer, task_id in expired:
                del self._held[consumer]
                self._fail(
                    self._active[task_id],
                    base.REASON_TIMEOUT,
                    {"error": f"lease of consumer {consumer} expired"},
                    now,
                )
        swept = self.store.cleanup()
        return {"promoted": promoted, "leases_expired": len(expired), "keys_expired": swept}
