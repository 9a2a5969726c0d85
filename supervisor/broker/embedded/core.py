"""The task core of the embedded broker: ready lanes, the delayed heap, records, the retry policy.

Ready tasks sit in one FIFO deque per named queue and priority (0-10), so dequeue order is
global and stable: higher priority first, FIFO within a priority (by push sequence across the
queues a consumer takes from), whatever the number of consumers, with no prefetch. Delayed
tasks (an ``eta``, or a retry backoff) wait in a heap here, never in a worker.

Not thread-safe by itself: every method is called with the broker's lock held (see
:class:`~supervisor.broker.embedded.memory.MemoryBroker`). It reports each state change to its
change sink (:mod:`supervisor.broker.embedded.changes`: the journal, or nothing), a task made
ready to ``on_ready`` and a delayed one to ``on_delayed`` (the dispatcher listens), and each
failed attempt's outcome to the log.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger

from supervisor.broker import base
from supervisor.broker.base import Report
from supervisor.broker.embedded.changes import ChangeSink, NullSink
from supervisor.broker.embedded.counts import StatusCounts
from supervisor.broker.records import TaskRecord
from supervisor.broker.validate import validate
from supervisor.errors import DuplicateTaskId, TaskError
from supervisor.policy import compute_backoff
from supervisor.registry import DEFAULT_QUEUE, PRIORITY_MAX, TaskOptions

WORKER_PREFIX = "worker:"  # consumers the master supervises (it enforces their deadlines)
LEASE_GRACE_S = 30.0  # how long past its timeout an external consumer may hold a task
DAY_S = 86_400.0
_log = logger.bind(component="broker")


Lane = deque[tuple[str, int]]  # (task id, seq) in FIFO order


def _nothing(*args: Any) -> None:
    return None


class TaskCore:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        changes: ChangeSink | None = None,
        task_types: dict[str, TaskOptions] | None = None,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int = 1 << 20,
        finished_records: int = 10_000,
        result_ttl_s: float = 7 * DAY_S,
        failure_ttl_s: float = 30 * DAY_S,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.changes: ChangeSink = changes or NullSink()
        self.ready: dict[str, list[Lane]] = {}  # queue -> one lane per priority
        self.delayed: list[tuple[float, int, str]] = []
        self.active: dict[str, TaskRecord] = {}
        self.finished: OrderedDict[str, TaskRecord] = OrderedDict()
        self.held: dict[str, str] = {}  # consumer -> task id
        self.unique: dict[str, str] = {}  # unique key -> id of the live task holding it
        self.seq = 0
        self.dispatching = True
        self.types: dict[str, TaskOptions] | None = task_types
        self.default = default_options or TaskOptions(
            timeout_s=300.0, max_retries=3, backoff_base_s=1.0, backoff_cap_s=300.0
        )
        self.max_payload = max_payload_bytes
        self.finished_cap = finished_records
        self.result_ttl = result_ttl_s
        self.failure_ttl = failure_ttl_s
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self.events: deque[tuple[str, str, str, float]] = deque(maxlen=100_000)
        self.counts = StatusCounts()
        self.front_seqs: set[int] = set()  # lane entries put back at the front (shutdown)
        self.on_ready: Callable[[], None] = _nothing
        self.on_delayed: Callable[[float], None] = _nothing

    # -- options -----------------------------------------------------------------------------
    def options(self, task_type: str) -> TaskOptions:
        if self.types is not None and task_type in self.types:
            return self.types[task_type]
        return self.default

    def option(self, task_type: str, name: str, fallback: Any) -> Any:
        """The type's option, else the default options', else ``fallback`` (0 is a value)."""
        value = getattr(self.options(task_type), name)
        if value is None:
            value = getattr(self.default, name)
        return fallback if value is None else value

    def lanes(self, queue: str | None) -> list[Lane]:
        """The lanes of ``queue`` by priority (made on first use)."""
        name = queue or DEFAULT_QUEUE
        lanes = self.ready.get(name)
        if lanes is None:
            lanes = self.ready[name] = [deque() for _ in range(PRIORITY_MAX + 1)]
        return lanes

    def live(self, task_id: str, seq: int) -> bool:
        rec = self.active.get(task_id)
        return rec is not None and rec.seq == seq and rec.status == base.QUEUED

    def head(self, lane: Lane) -> tuple[str, int] | None:
        """The first live entry of ``lane``; stale ones before it are dropped."""
        while lane:
            entry = lane[0]
            if self.live(*entry):
                return entry
            lane.popleft()
            if self.front_seqs:
                self.front_seqs.discard(entry[1])
        return None

    # -- status changes ----------------------------------------------------------------------
    def move(self, rec: TaskRecord, status: str) -> None:
        self.counts.uncount(rec)
        rec.status = status
        self.counts.count(rec)

    def enqueue(
        self, rec: TaskRecord, *, delayed_status: str = base.SCHEDULED, front: bool = False
    ) -> None:
        """Track ``rec`` as active: delayed (as ``delayed_status``) until its eta, else ready."""
        if self.active.get(rec.task_id) is rec:
            self.counts.uncount(rec)  # counted again below under its new status
        old = self.finished.pop(rec.task_id, None)
        if old is not None:
            self.counts.uncount(old)
        self.seq += 1
        rec.seq = self.seq
        self.active[rec.task_id] = rec
        if rec.unique_key is not None:
            self.unique[rec.unique_key] = rec.task_id
        now = self.clock()
        if rec.eta is not None and rec.eta > now:
            rec.status = delayed_status
            heapq.heappush(self.delayed, (rec.eta, rec.seq, rec.task_id))
            self.counts.count(rec)
            self.changes.changed(rec)
            self.on_delayed(rec.eta)
            return
        rec.status = base.QUEUED
        rec.ready_at = now
        lane = self.lanes(rec.queue)[rec.priority]
        if front:
            lane.appendleft((rec.task_id, rec.seq))
            self.front_seqs.add(rec.seq)
        else:
            lane.append((rec.task_id, rec.seq))
        self.counts.count(rec)
        self.changes.changed(rec)
        self.on_ready()

    def existing_unique(self, rec: TaskRecord) -> str | None:
        """The id of the live task holding ``rec``'s unique key, if any."""
        if rec.unique_key is None:
            return None
        holder = self.unique.get(rec.unique_key)
        return holder if holder in self.active else None

    # -- push --------------------------------------------------------------------------------
    def record(self, msg: Any) -> TaskRecord:
        """The record ``msg`` describes (validated, not enqueued); TaskError if it is bad."""
        task_type = msg.get("type") if isinstance(msg, dict) else None
        options = self.options(task_type) if isinstance(task_type, str) else self.default
        rec = validate(
            msg, types=self.types, options=options, max_payload=self.max_payload, now=self.clock()
        )
        if rec.task_id in self.active:
            raise DuplicateTaskId(
                f"task id {rec.task_id!r} is already {self.active[rec.task_id].status}"
            )
        if rec.queue is None:
            rec.queue = options.queue
        return rec

    def push(self, message: dict[str, Any]) -> str:
        rec = self.record(message)
        existing = self.existing_unique(rec)
        if existing is not None:
            return existing
        self.enqueue(rec)
        self.counters[("pushed", rec.type, "")] += 1
        return rec.task_id

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        if not isinstance(messages, list):
            raise TaskError(f"push_many takes a list of tasks, got {type(messages).__name__}")
        recs = [self.record(m) for m in messages]
        ids = [r.task_id for r in recs]
        if len(set(ids)) != len(ids):
            raise TaskError("push_many got the same task_id twice")
        for i, rec in enumerate(recs):
            existing = self.existing_unique(rec)
            if existing is not None:
                ids[i] = existing
                continue
            self.enqueue(rec)
            self.counters[("pushed", rec.type, "")] += 1
        return ids

    # -- hand-out ----------------------------------------------------------------------------
    def promote(self, now: float) -> int:
        """Make delayed tasks whose eta passed ready; return how many."""
        n = 0
        while self.delayed and self.delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(self.delayed)
            rec = self.active.get(task_id)
            if rec is None or rec.seq != seq or rec.status not in (base.SCHEDULED, base.RETRYING):
                continue
            rec.eta = None
            self.move(rec, base.QUEUED)
            rec.ready_at = now
            self.lanes(rec.queue)[rec.priority].append((task_id, seq))
            n += 1
        if n:
            self.on_ready()
        return n

    def groups(self, queues: Iterable[str] | None) -> list[list[Lane]]:
        """The lanes of ``queues`` (None: every queue)."""
        if queues is None:
            return list(self.ready.values())
        return [self.ready[q] for q in queues if q in self.ready]

    def best_lane(self, groups: list[list[Lane]]) -> Lane | None:
        """The lane whose first live entry goes next across ``groups``: the highest priority,
        then entries put back at the front, then the lowest push sequence."""
        for prio in range(PRIORITY_MAX, -1, -1):
            best: Lane | None = None
            best_key = (True, 0)
            for lanes in groups:
                lane = lanes[prio]
                entry = self.head(lane) if lane else None
                if entry is None:
                    continue
                key = (entry[1] not in self.front_seqs, entry[1])
                if best is None or key < best_key:
                    best, best_key = lane, key
            if best is not None:
                return best
        return None

    def take(
        self, consumer: str, now: float, queues: Iterable[str] | None = None
    ) -> dict[str, Any] | None:
        """Hand the best ready task of ``queues`` (None: any) to ``consumer``, counting the
        attempt; None if none."""
        if consumer in self.held:
            raise TaskError(
                f"consumer {consumer!r} still holds task {self.held[consumer]!r}: report it first"
            )
        self.promote(now)
        lane = self.best_lane(self.groups(queues))
        if lane is None:
            return None
        task_id, seq = lane.popleft()
        if self.front_seqs:
            self.front_seqs.discard(seq)
        rec = self.active[task_id]
        self.move(rec, base.RUNNING)
        rec.attempts += 1
        rec.started_at = now
        rec.consumer = consumer
        timeout = self.option(rec.type, "timeout_s", 300.0)
        rec.lease_until = (
            None if consumer.startswith(WORKER_PREFIX) else now + timeout + LEASE_GRACE_S
        )
        self.held[consumer] = task_id
        self.counters[("started", rec.type, "")] += 1
        self.events.append(("started", rec.type, "", now - (rec.ready_at or now)))
        self.changes.changed(rec)
        return rec.message()

    def next_eta(self) -> float | None:
        return self.delayed[0][0] if self.delayed else None

    # -- outcomes ----------------------------------------------------------------------------
    def finish(self, rec: TaskRecord, status: str, now: float) -> None:
        if rec.unique_key is not None and self.unique.get(rec.unique_key) == rec.task_id:
            del self.unique[rec.unique_key]
        ran = rec.status == base.RUNNING  # not a task cancelled while it waited
        self.move(rec, status)
        rec.finished_at = now
        rec.consumer = None
        rec.lease_until = None
        self.active.pop(rec.task_id, None)
        self.finished[rec.task_id] = rec
        while len(self.finished) > self.finished_cap:
            self.counts.uncount(self.finished.popitem(last=False)[1])
        self.counters[("finished", rec.type, status)] += 1
        if ran and rec.started_at is not None:  # the duration histogram: attempts that ran
            self.events.append(("finished", rec.type, status, now - rec.started_at))
        self.changes.changed(rec)

    def fail(self, rec: TaskRecord, reason: str, detail: dict[str, Any], now: float) -> None:
        """The attempt ended without success: cancelled, put back (shutdown), retried with a
        backoff, or dead, by the task's retry policy; each outcome is logged."""
        error = str(detail.get("error", ""))[:4000]
        rec.errors.append(
            {
                "attempt": rec.attempts,
                "reason": reason,
                "at": now,
                "error": error,
                "traceback": str(detail.get("traceback", ""))[-16000:],
                "exit_status": detail.get("exit_status"),
            }
        )
        rec.consumer = None
        rec.lease_until = None
        log = _log.bind(task_id=rec.task_id, task_type=rec.type, reason=reason)
        if rec.cancel_requested_at is not None or reason == base.REASON_CANCELLED:
            self.finish(rec, base.CANCELLED, now)  # whatever ended it: never retried
            log.info("task {} ({}) cancelled", rec.task_id, rec.type)
            return
        if reason == base.REASON_SHUTDOWN:  # not the task's fault: put it back, uncounted
            rec.attempts = max(0, rec.attempts - 1)
            rec.errors.pop()
            self.enqueue(rec, front=True)
            return
        self.counters[("failed", rec.type, reason)] += 1
        max_retries = self.option(rec.type, "max_retries", 3)
        what = f"{reason}: {error}" if error else reason
        if reason == base.REASON_INVALID or rec.attempts > max_retries:
            self.finish(rec, base.DEAD, now)
            log.error(
                "task {} ({}) is dead after {} attempts: {}",
                rec.task_id,
                rec.type,
                rec.attempts,
                what,
            )
            return
        delay = detail.get("delay")
        if delay is None:
            delay = compute_backoff(
                rec.attempts,
                base_s=self.option(rec.type, "backoff_base_s", 1.0),
                cap_s=self.option(rec.type, "backoff_cap_s", 300.0),
                rng=self.rng,
            )
        delay = max(0.0, float(delay))
        rec.eta = now + delay
        self.counters[("retried", rec.type, reason)] += 1
        log.warning(
            "task {} ({}) failed ({}), attempt {} of {}; retrying in {:.1f} s",
            rec.task_id,
            rec.type,
            what,
            rec.attempts,
            max_retries + 1,
            delay,
        )
        self.enqueue(rec, delayed_status=base.RETRYING)

    def report(self, consumer: str, report: Report) -> None:
        task_id, outcome, detail = report
        if self.held.get(consumer) != task_id:
            return  # late report of a task already released (timed out, lost): ignore
        del self.held[consumer]
        rec = self.active.get(task_id)
        if rec is None:
            return
        now = self.clock()
        if outcome == base.SUCCEEDED:
            rec.result = detail
            self.finish(rec, base.SUCCEEDED, now)
        elif outcome == "retry":
            self.fail(rec, base.REASON_RETRY, detail or {}, now)
        elif outcome == "invalid":
            self.fail(rec, base.REASON_INVALID, detail or {}, now)
        elif outcome == base.CANCELLED:
            self.fail(rec, base.REASON_CANCELLED, detail or {}, now)
        else:
            reason = (detail or {}).get("reason", base.REASON_ERROR)
            self.fail(rec, reason, detail or {}, now)

    def release(
        self, consumer: str, reason: str, error: str, exit_status: int | None
    ) -> str | None:
        task_id = self.held.pop(consumer, None)
        rec = self.active.get(task_id) if task_id else None
        if rec is None:
            return None
        self.fail(rec, reason, {"error": error, "exit_status": exit_status}, self.clock())
        return task_id

    def expire_leases(self, now: float) -> int:
        """Fail the tasks of external consumers whose lease ran out (as timed out)."""
        expired = [
            (c, t)
            for c, t in self.held.items()
            if (r := self.active.get(t)) is not None
            and r.lease_until is not None
            and r.lease_until <= now
        ]
        for consumer, task_id in expired:
            del self.held[consumer]
            detail = {"error": f"lease of consumer {consumer} expired"}
            self.fail(self.active[task_id], base.REASON_TIMEOUT, detail, now)
        return len(expired)
