"""The Redis broker: the contract of :class:`~supervisor.broker.base.Broker` on a Redis server
shared by every node of a cluster (see ARCHITECTURE "Scale-out").

Every state change is one Lua script call (``lua/``), so it is atomic and costs one round
trip: a push (or a whole ``push_many``), a report together with taking the next task, a cancel.
Ready tasks sit in one sorted set per named queue scored by ``(10 - priority) * 2**40 + seq``:
strict priority, FIFO within a priority, global across nodes and across the queues a consumer
takes from (the take script compares the heads of those sets). A consumer that finds nothing
is parked and waits on its own mailbox (BLPOP); the script that makes a task ready takes it for
the parked consumer of its queue whose wait ends first and puts it in that mailbox, so an idle
worker gets a pushed task in the push's own round trip, without a second take. Delayed tasks
wait in a sorted set by eta, in Redis, and come due inside the scripts. Records, params and
results are hashes by task id.

A handed-out task holds a lease (a deadline on Redis TIME) and an owner token
``<node>/<consumer>|<attempt>``. The node's master extends the leases of its workers with
:meth:`renew`; any node's :meth:`recover` fails the attempts whose lease ran out as
``worker_lost`` under the retry policy. A report whose token no longer matches changes nothing
(fencing), so a task is never recorded twice. Delivery is at least once: handlers must be
idempotent.

Record times (pushed, eta, started, finished) come from this process's clock (injected in
tests); lease deadlines from Redis TIME, so nodes whose clocks disagree still agree on leases.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from loguru import logger

from supervisor.broker import base
from supervisor.broker.base import Broker, Queues, Report
from supervisor.broker.redis import codec
from supervisor.broker.redis.control import ControlMixin
from supervisor.broker.redis.core import LeaseLost
from supervisor.broker.redis.hub import HubMixin
from supervisor.broker.redis.leases import LeaseMixin
from supervisor.broker.redis.store import StoreMixin
from supervisor.broker.redis.validate import validate
from supervisor.broker.validate import check_queues
from supervisor.errors import DuplicateTaskId, TaskError, UnknownTaskType
from supervisor.registry import DEFAULT_QUEUE, PRIORITY_MAX, PRIORITY_MIN, TaskOptions

MAX_BLOCK_S = 1.0  # longest BLPOP on a mailbox: then the consumer takes (and parks) again
MIN_BLOCK_S = 0.01
# A parked consumer stays parked this much past its wait, so it is parked for the whole of its
# BLPOP even when the round trip is slow; a consumer that died parked is handed a task (then
# recovered by its lease) for at most its wait and this long.
PARK_SLACK_S = 0.5
OFF = -math.inf  # "next eta" of a take refused because dispatching is off

log = logger.bind(component="broker")


class RedisBroker(LeaseMixin, ControlMixin, StoreMixin, HubMixin, Broker):
    """The broker contract on Redis (>= 7, ``maxmemory-policy noeviction``, AOF on).

    ``node`` names this process's node (its master and workers share it): consumer names are
    qualified by it, and dispatching is switched per node. Every node must be configured with
    the same task types and options."""

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        prefix: str = "sv",
        node: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        task_types: dict[str, TaskOptions] | None = None,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int = 1 << 20,
        finished_records: int = 10_000,
        lease_s: float = 30.0,
        result_ttl_s: float = 7 * 86400,
        failure_ttl_s: float = 30 * 86400,
        queues: Sequence[str] | None = None,
        history: Any = None,
        check_types: bool = True,
    ) -> None:
        self._queues = check_queues(list(queues) if queues is not None else None)
        # The task table the history writer fills (a TaskTable, or None): it answers for the
        # finished tasks that have left Redis.
        self._history = history
        # Without task types of its own, refuse types no node published (see push.lua).
        self._check_types = check_types
        super().__init__(
            url=url,
            client=client,
            prefix=prefix,
            node=node,
            clock=clock,
            rng=rng,
            task_types=task_types,
            default_options=default_options,
            max_payload_bytes=max_payload_bytes,
            finished_records=finished_records,
            lease_s=lease_s,
            result_ttl_s=result_ttl_s,
            failure_ttl_s=failure_ttl_s,
        )

    # -- configuration -----------------------------------------------------------------------
    def configure(
        self,
        task_types: dict[str, TaskOptions] | None,
        *,
        default_options: TaskOptions | None = None,
        max_payload_bytes: int | None = None,
        finished_records: int | None = None,
    ) -> None:
        """Set the known task types (None: accept any type) and limits, for this instance, and
        publish each type's queue to Redis, so a producer with only the URL routes its tasks."""
        self._types = dict(task_types) if task_types is not None else None
        if self._types:
            routes: dict[Any, Any] = {name: opts.queue for name, opts in self._types.items()}
            with self._guard():
                pipe = self._client.pipeline(transaction=True)
                pipe.hset(self._keys.routes, mapping=routes)
                # 'default' always: ready tasks left by a release before named queues (in
                # its ready set, never added to the set of queues) are taken again.
                pipe.sadd(self._keys.queues, DEFAULT_QUEUE, *set(routes.values()))
                pipe.execute()
        if default_options is not None:
            self._default = default_options
        if max_payload_bytes is not None:
            self._max_payload = max_payload_bytes
        if finished_records is not None:
            self._finished_cap = finished_records

    @property
    def node(self) -> str:
        """This instance's node name (its consumers are qualified by it)."""
        return self._node

    def close(self) -> None:
        """Close this instance's connections."""
        self._client.close()

    # -- push --------------------------------------------------------------------------------
    def _push(self, messages: list[Any]) -> list[str]:
        now = self._clock()
        items = [validate(self, m, now) for m in messages]
        ids = [item[0] for item in items]
        if len(set(ids)) != len(ids):
            raise TaskError("push_many got the same task_id twice")
        if not items:
            return []
        # A producer that knows no task types (only the URL) is checked against the types the
        # nodes published, as the embedded broker checks against its registry.
        check = self._types is None and self._check_types
        args: list[Any] = ["1" if check else "", len(items)]
        for item in items:
            args.extend(item)
        res = self._run("push", args, now)
        if codec.text(res[0]) == "dup":
            index, status = int(res[1]) - 1, codec.text(res[2])
            raise DuplicateTaskId(f"task id {ids[index]!r} is already {status}")
        if codec.text(res[0]) == "unknown":
            known = ", ".join(sorted(codec.text(x) for x in res[3:]))
            raise UnknownTaskType(
                f"task type {codec.text(res[2])!r} is not registered on any node; known: {known}"
            )
        return [codec.text(x) for x in res[1:]]

    def push(self, message: dict[str, Any]) -> str:
        """Accept one task; return its id (the holder's id when its ``unique_key`` is held by
        a live task). Raises TaskError / UnknownTaskType / DuplicateTaskId, changing nothing."""
        return self._push([message])[0]

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        """Accept several tasks in one script call, all or none; return their ids in order."""
        if not isinstance(messages, list):
            raise TaskError(f"push_many takes a list of tasks, got {type(messages).__name__}")
        return self._push(messages)

    # -- dispatch ----------------------------------------------------------------------------
    def _report_args(self, consumer: str, report: Report | None, now: float) -> list[Any]:
        """The report part of the exchange script's arguments (10 values after qc, consumer,
        want, lease). A failure reads the record first: the retry policy needs its attempt."""
        if report is None:
            return ["", "", "", "", "", "", "", "", "", ""]
        task_id, outcome, detail = report
        if not isinstance(task_id, str):
            raise TaskError(f"a report names its task id as a string, got {task_id!r}")
        if outcome == base.SUCCEEDED:
            return [outcome, task_id, "", codec.encode_result(detail), "", "", "", "", "", ""]
        detail = detail if isinstance(detail, dict) else {}
        if outcome == "retry":
            reason = base.REASON_RETRY
        elif outcome == "invalid":
            reason = base.REASON_INVALID
        elif outcome == base.CANCELLED:
            reason = base.REASON_CANCELLED
        else:
            reason = str(detail.get("reason") or base.REASON_ERROR)
        with self._guard():
            blob = self._client.hget(self._keys.task, task_id)
        rec = codec.decode_raw(blob) if blob else {"task_id": task_id, "attempts": 0}
        item = self._fail_item(self._qc(consumer), rec, reason, detail, now)
        return ["failed", task_id, item[2], "", *item[3:]]

    def _queues_for(self, queues: Queues) -> tuple[str, ...] | None:
        return self._queues if queues is None else check_queues(queues)

    def _exchange_once(
        self,
        consumer: str,
        report: Report | None,
        want: bool,
        queues: tuple[str, ...] | None = None,
        park_s: float = 0.0,
    ) -> tuple[bool, dict[str, Any] | None, float | None]:
        """One script call: (report refused?, the message taken, the next delayed eta in
        seconds). The eta is :data:`OFF` while this node's dispatching is off. With
        ``park_s`` > 0, a consumer that finds nothing is parked that long plus
        :data:`PARK_SLACK_S`: a task made ready meanwhile is taken for it into its mailbox."""
        now = self._clock()
        qc = self._qc(consumer)
        lease_ms, lease_by_type = self._lease_for(consumer)
        args = [qc, consumer, "1" if want else "0", lease_ms]
        args += self._report_args(consumer, report, now)
        args.append(lease_by_type)
        args.append("" if queues is None else codec.SEP.join(queues))
        args.append(round((park_s + PARK_SLACK_S) * 1000) if park_s > 0 else 0)
        res = self._run("exchange", args, now)
        lost = bool(int(res[0]))
        if lost and report is not None:
            log.warning(
                "report of task {} by {} refused: its lease was lost (recovered elsewhere)",
                report[0],
                qc,
            )
        kind = codec.text(res[1])
        if kind == "task":
            return lost, codec.message_of(res[3], bytes(res[4])), None
        if kind == "held":
            raise TaskError(
                f"consumer {consumer!r} still holds task {codec.text(res[2])!r}: report it first"
            )
        if kind == "off":
            return lost, None, OFF
        nxt = codec.text(res[2]) if len(res) > 2 else ""
        return lost, None, (float(nxt) / 1000.0 if nxt else None)

    def _block_s(self, deadline: float | None) -> float:
        """How long the next wait on the mailbox lasts (0: the wait is over: too short to
        block, so a take then does not park)."""
        if deadline is None:
            return MAX_BLOCK_S
        left = min(MAX_BLOCK_S, deadline - time.monotonic())
        return left if left >= MIN_BLOCK_S else 0.0

    def _wait_and_take(
        self,
        consumer: str,
        deadline: float | None,
        queues: tuple[str, ...] | None,
        parked: tuple[float | None] | None = None,
    ) -> dict[str, Any] | None:
        """Take, else wait parked on the consumer's mailbox, until ``deadline`` (monotonic;
        None: until a task comes). ``parked`` (the next eta) says the caller's take just found
        nothing and parked the consumer. Every wait ends with a take that does not park, so a
        task taken for the consumer after its mailbox wait timed out is handed over then."""
        box = self._keys.box(self._qc(consumer))
        while True:
            if parked is not None:
                next_eta, block = parked[0], self._block_s(deadline)
                parked = None
            else:
                block = self._block_s(deadline)
                _, msg, next_eta = self._exchange_once(consumer, None, True, queues, block)
                if msg is not None:
                    return msg
                if next_eta == OFF or not block:
                    return None
            if next_eta is not None:
                block = min(block, max(0.0, next_eta - self._clock()))
            with self._guard():
                got = self._client.blpop([box], timeout=max(MIN_BLOCK_S, block))
            if got is not None and got[1]:
                raw = got[1]
                return codec.delivery(raw if isinstance(raw, bytes) else raw.encode())

    def pop(
        self, consumer: str, wait_s: float | None = 0.0, queues: Queues = None
    ) -> dict[str, Any] | None:
        """Hand the highest-priority ready task of ``queues`` (None: this handle's, else every
        queue) to ``consumer`` (attempt counted, lease set), waiting up to ``wait_s`` (None:
        until one comes) parked on its mailbox, never polling faster than the pushes. None
        on timeout or while this node's dispatching is off; TaskError when ``consumer`` still
        holds a task it has not reported."""
        wanted = self._queues_for(queues)
        return self._wait_and_take(consumer, self._deadline(wait_s), wanted)

    def report_strict(self, consumer: str, report: Report) -> None:
        """:meth:`report`, but raises :class:`LeaseLost` when it was refused."""
        lost, _, _ = self._exchange_once(consumer, report, False)
        if lost:
            raise LeaseLost(
                f"task {report[0]!r} is no longer held by {consumer!r} on node {self._node!r} "
                "(its lease was lost or it was released): the report changed nothing"
            )

    def report(self, consumer: str, report: Report) -> None:
        """Record the outcome of the task ``consumer`` holds and apply the retry policy. A
        report of an attempt the consumer no longer holds (fencing) changes nothing."""
        self._exchange_once(consumer, report, False)

    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None, queues: Queues = None
    ) -> dict[str, Any] | None:
        """``report`` then take the next task in one script call (a failure report reads the
        record first); waits like :meth:`pop` when nothing is ready. A refused report (lease
        lost) changes nothing, and the next task is still handed out."""
        wanted = self._queues_for(queues)
        deadline = self._deadline(wait_s)
        park_s = self._block_s(deadline)
        _, msg, next_eta = self._exchange_once(consumer, report, True, wanted, park_s)
        if msg is not None or next_eta == OFF or not park_s:
            return msg
        return self._wait_and_take(consumer, deadline, wanted, (next_eta,))

    @staticmethod
    def _deadline(wait_s: float | None) -> float | None:
        return None if wait_s is None else time.monotonic() + max(0.0, wait_s)

    def set_dispatching(self, on: bool) -> None:
        """Stop (or resume) handing out tasks on this node; waiting pops return None soon
        (their mailboxes get a wake-up at once)."""
        self._run("dispatch", ["1" if on else "0"])

    def dispatching(self) -> bool:
        """Whether this node hands out tasks (see :meth:`set_dispatching`)."""
        with self._guard():
            return self._client.hget(self._keys.dispatch, self._node) != b"0"

    def drain_events(self) -> list[tuple[str, str, str, float]]:
        """This node's observations since the last call, for the metrics: ``("started", type,
        "", seconds waited ready)`` and ``("finished", type, status, seconds run)``."""
        key = self._keys.obs(self._node)
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            raw, _ = pipe.execute()
        out = []
        for item in raw:
            ev, rest = codec.text(item).split(codec.SEP, 1)
            ttype, status, seconds = rest.rsplit(codec.SEP, 2)
            out.append((ev, ttype, status, float(seconds)))
        return out

    # -- queries -----------------------------------------------------------------------------
    def queue_size(self) -> int:
        """Tasks ready to run now in this handle's queues (None: every queue); due delayed
        tasks are promoted first."""
        self._run("maintain", [1000, "0"])
        with self._guard():
            queues = self._queues
            if queues is None:
                queues = tuple(codec.text(q) for q in self._client.smembers(self._keys.queues))
            pipe = self._client.pipeline(transaction=False)
            for q in queues:
                pipe.zcard(self._keys.ready(q))
            return sum(int(n) for n in pipe.execute())

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task's record (the shape of ``TaskRecord.as_dict``), or None when unknown."""
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(self._keys.task, task_id)
            pipe.hget(self._keys.params, task_id)
            pipe.hget(self._keys.result, task_id)
            blob, params, result = pipe.execute()
        if blob is None:
            old = None if self._history is None else self._history.get(task_id)
            return None if old is None else dict(old.as_dict())
        return codec.as_dict(codec.decode_raw(blob), params, codec.decode_result(result))

    def stats(self) -> dict[str, Any]:
        """Counts by status and priority, oldest ready age, store size and counters, from
        counters kept by the scripts (O(priorities + counters), whatever the records)."""
        now = self._clock()
        prios, running, flag, keys, nstatus, counts, by_queue = self._run("stats", [], now)
        by_priority: dict[int, int] = {}
        oldest: dict[int, float] = {}
        for prio in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            n, at = int(prios[2 * prio]), codec.time_or_none(codec.text(prios[2 * prio + 1]))
            if n:
                by_priority[prio] = n
                oldest[prio] = 0.0 if at is None else max(0.0, now - at)
        by_status = {
            codec.text(nstatus[i]): int(nstatus[i + 1])
            for i in range(0, len(nstatus), 2)
            if int(nstatus[i + 1]) > 0
        }
        counters = {
            codec.counter_key(counts[i]): int(counts[i + 1]) for i in range(0, len(counts), 2)
        }
        return {
            "queued": sum(by_priority.values()),
            "by_priority": by_priority,
            "by_queue": {
                codec.text(by_queue[i]): int(by_queue[i + 1]) for i in range(0, len(by_queue), 2)
            },
            "oldest_age_s": oldest,
            "scheduled": by_status.get(base.SCHEDULED, 0),
            "retrying": by_status.get(base.RETRYING, 0),
            "running": int(running),
            "by_status": by_status,
            "store_keys": int(keys),
            "dispatching": codec.text(flag) != "0",
            "counters": counters,
        }

    def maintain(self, limit: int = 1000) -> dict[str, int]:
        """Housekeeping, about once a second on every node: promote due delayed tasks,
        recover expired leases (:meth:`recover`), forget finished records past their
        retention, drop expired store-index entries. Returns counts of each."""
        promoted, records, keys = self._run("maintain", [limit, "1"])
        recovered = self.recover(limit)
        return {
            "promoted": int(promoted),
            "leases_expired": recovered,
            "keys_expired": int(keys),
            "records_expired": int(records),
        }


__all__ = ["LeaseLost", "RedisBroker"]
