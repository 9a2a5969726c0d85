"""Parked consumers: a worker waiting for work holds no thread and costs no wake-up.

The manager serves each connection in a thread of its own. A worker's ``exchange`` that found
nothing to do used to wait in that thread on the broker's condition variable; a push then woke
it (a context switch), it waited again for the pushing thread's lock and GIL (often one more),
took the task and sent it. A context switch costs about 10 µs of the broker's single core on
this kind of machine, and they were most of its time (``perf``: 40 % of the broker's CPU in the
scheduler's switch path, 5-7 switches per no-op task).

Now an exchange that finds nothing is *parked*: its thread goes straight back to reading its
socket, and whoever makes a task ready (a push, a retry, the dispatcher below) takes it for the
first parked consumer, in the broker's priority order, and sends it on that consumer's
connection. Per task the broker wakes for the push and for the worker's next exchange, nothing
else. The hand-over is decided under the broker's lock (and, in the durable broker, journaled in
the same write as the push); the sends happen after the lock is released.

The *dispatcher* thread answers parked consumers whose wait ran out (``None``, as a pop that
timed out), hands over delayed tasks that came due and tasks that other threads (the HTTP API,
the master's maintenance call) made ready, and answers everyone ``None`` when dispatching stops.
It sleeps until the next of those moments; a push served by a connection thread never wakes it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from supervisor.broker import base

Sink = Callable[[Any], None]  # sends one answer on a parked consumer's connection
Handoff = tuple[str, Sink, Any]  # (consumer, sink, the answer)
PARKED = object()  # serve_hot's result when the caller's answer comes later, through its sink
MAX_SLEEP_S = 3600.0
# The calls a connection thread hands to serve_hot (everything else goes the generic way).
HOT_METHODS = frozenset({"push", "push_many", "exchange", "report"})


@dataclass(slots=True)
class Parked:
    sink: Sink
    deadline: float  # time.monotonic() at which it is answered None


class ParkingMixin:
    """Parking for :class:`~supervisor.broker.embedded.memory.MemoryBroker` (see the module
    docstring)."""

    _cond: threading.Condition
    _dispatching: bool
    _delayed: list[tuple[float, int, str]]
    _held: dict[str, str]
    _active: dict[str, Any]
    _clock: Callable[[], float]
    _take: Callable[[str, float], dict[str, Any] | None]
    _promote: Callable[[float], int]
    _fail: Callable[..., None]
    report: Callable[..., None]
    pop: Callable[..., dict[str, Any] | None]

    def _init_parking(self) -> None:
        self._parked: OrderedDict[str, Parked] = OrderedDict()
        self._handoff = False  # a task became ready while consumers were parked
        self._serving = threading.local()  # .active: this thread hands over what it readies
        self._dispatch_wake = threading.Event()
        self._dispatch_at = math.inf  # time.monotonic() of the dispatcher's next look
        self._dispatcher: threading.Thread | None = None
        self._dispatch_stopped = False

    # -- the server's entry point ------------------------------------------------------------
    def serve_hot(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], sink: Sink
    ) -> tuple[Any, BaseException | None, list[Handoff]]:
        """Run one of ``HOT_METHODS`` for a connection thread whose answers go to ``sink``.

        Returns (result, error, hand-overs): ``result`` is ``PARKED`` when the caller is answered
        later through ``sink``; the caller must send the hand-overs (see :meth:`deliver`)."""
        result: Any = None
        error: BaseException | None = None
        with self._cond:
            try:  # the durable broker makes sure its journal can take the change, first
                self._begin_changes(method, args)
            except Exception as exc:
                return None, exc, []
            self._serving.active = True
            try:
                if method == "exchange":
                    result = self._exchange_or_park(*args, sink=sink, **kwargs)
                else:
                    result = getattr(self, method)(*args, **kwargs)
            except Exception as exc:
                error = exc
            try:
                handoffs = self._hand_over() if self._handoff else []
            finally:
                self._serving.active = False
                failed = self._end_changes()
            if failed is not None:  # not safe: say so (hand-overs still go: they were made)
                if result is PARKED:
                    self._parked.pop(args[0], None)
                result, error = None, failed
        return result, error, handoffs

    def _begin_changes(self, method: str, args: tuple[Any, ...]) -> None:
        """Before a call changes anything (lock held); raises if it must not. In memory: no-op."""

    def _end_changes(self) -> BaseException | None:
        """After the call (lock held): make its changes safe; the error if that failed."""
        return None

    def deliver(self, handoffs: list[Handoff]) -> None:
        """Send hand-overs (outside the lock); a task whose consumer is gone goes back first in
        its lane, the attempt not counted (its worker never saw it)."""
        for consumer, sink, msg in handoffs:
            try:
                sink(msg)
            except (OSError, EOFError, ValueError):
                if msg is None:
                    continue
                try:
                    self.undeliverable(consumer, msg["task_id"])
                except Exception as exc:  # the others must still get theirs
                    logger.bind(component="broker").error(
                        "task {} of departed consumer {} not put back: {}",
                        msg["task_id"],
                        consumer,
                        exc,
                    )

    def unpark(self, consumer: str, sink: Sink) -> None:
        """The connection of a parked consumer closed: forget it (if it is still that one)."""
        with self._cond:
            parked = self._parked.get(consumer)
            if parked is not None and parked.sink is sink:
                del self._parked[consumer]

    def undeliverable(self, consumer: str, task_id: str) -> None:
        with self._cond:
            if self._held.get(consumer) != task_id:
                return
            del self._held[consumer]
            rec = self._active.get(task_id)
            if rec is not None:
                detail = {"error": f"consumer {consumer} left before it got the task"}
                self._fail(rec, base.REASON_SHUTDOWN, detail, self._clock())

    # -- parking and handing over (broker lock held) -----------------------------------------
    def _exchange_or_park(
        self, consumer: str, report: Any, wait_s: float | None, *, sink: Sink
    ) -> Any:
        if report is not None:
            self.report(consumer, report)
        msg = self.pop(consumer, 0.0)
        if msg is not None or not self._dispatching or (wait_s is not None and wait_s <= 0):
            return msg
        deadline = time.monotonic() + (MAX_SLEEP_S if wait_s is None else min(wait_s, MAX_SLEEP_S))
        self._parked[consumer] = Parked(sink, deadline)
        self._wake_dispatcher_by(deadline)
        return PARKED

    def _task_ready(self) -> None:
        """A task became ready (lock held): hand it to a parked consumer, if there is one."""
        if self._parked:
            self._handoff = True
            if not getattr(self._serving, "active", False):
                self._dispatch_wake.set()  # no connection thread will hand it over: wake it

    def _eta_set(self, eta: float) -> None:
        """A delayed task waits until ``eta`` (broker clock; lock held)."""
        if self._parked:
            self._wake_dispatcher_by(time.monotonic() + max(0.0, eta - self._clock()))

    def _parking_changed(self) -> None:
        """Dispatching was switched on or off (lock held): the dispatcher answers or hands over."""
        if self._parked:
            self._dispatch_wake.set()

    def _wake_dispatcher_by(self, when: float) -> None:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name="dispatcher", daemon=True
            )
            self._dispatcher.start()
        if when < self._dispatch_at:
            self._dispatch_at = when
            self._dispatch_wake.set()

    def _hand_over(self) -> list[Handoff]:
        """Take ready tasks for parked consumers, first parked first."""
        self._handoff = False
        out: list[Handoff] = []
        if not self._dispatching:
            return out
        now = self._clock()
        while self._parked:
            consumer, parked = next(iter(self._parked.items()))
            msg = self._take(consumer, now)
            if msg is None:
                break
            del self._parked[consumer]
            out.append((consumer, parked.sink, msg))
        return out

    # -- the dispatcher thread ---------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        log = logger.bind(component="broker")
        while not self._dispatch_stopped:
            sleep = 1.0
            try:
                with self._cond:
                    handoffs = self._dispatch_once(time.monotonic())
                    sleep = self._dispatch_at - time.monotonic()
                self.deliver(handoffs)
            except Exception as exc:  # never die: parked workers depend on this thread
                log.opt(exception=exc).error("dispatcher: {} (going on)", exc)
            self._dispatch_wake.wait(min(max(0.0, sleep), MAX_SLEEP_S))
            self._dispatch_wake.clear()  # state is read under the lock after this: none lost

    def _dispatch_once(self, now_m: float) -> list[Handoff]:
        """Hand over, answer expired waits; set when to look next (lock held)."""
        now = self._clock()
        self._promote(now)
        handoffs: list[Handoff] = []
        try:
            self._begin_changes("dispatch", ())
        except Exception as exc:  # the journal cannot take a hand-over now: only answer waits
            logger.bind(component="broker").error("dispatcher cannot hand tasks over: {}", exc)
            retry_at = now_m + 1.0
        else:
            retry_at = math.inf
            try:
                handoffs = self._hand_over()
            finally:
                failed = self._end_changes()
            if failed is not None:
                logger.bind(component="broker").error(
                    "hand-overs not journaled (they still go): {}", failed
                )
        for consumer, parked in list(self._parked.items()):
            if not self._dispatching or parked.deadline <= now_m:
                del self._parked[consumer]
                handoffs.append((consumer, parked.sink, None))
        nearest = min((p.deadline for p in self._parked.values()), default=math.inf)
        if self._parked and self._delayed:
            nearest = min(nearest, now_m + max(0.0, self._delayed[0][0] - now))
        self._dispatch_at = min(nearest, retry_at)
        return handoffs

    def stop_dispatcher(self) -> None:
        """Stop the dispatcher and answer every parked consumer None now (the broker closes)."""
        with self._cond:
            self._dispatch_stopped = True
            self._dispatch_wake.set()
            handoffs = [(c, p.sink, None) for c, p in self._parked.items()]
            self._parked.clear()
        with contextlib.suppress(Exception):
            self.deliver(handoffs)
