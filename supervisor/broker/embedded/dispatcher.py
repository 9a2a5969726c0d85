"""The dispatcher: the one path of every hot call, and parked consumers that cost no thread.

Every push, report and exchange of the embedded broker goes through :meth:`Dispatcher.serve`,
whether it comes from a connection thread of the broker process or from an in-process caller:
under the broker's lock it opens a request on the change sink, runs the call on the task core,
hands tasks that became ready to parked consumers, and closes the request (one journal write).

Why parking. The manager serves each connection in a thread of its own. A worker's exchange
that found nothing to do used to wait in that thread on a condition variable; a push then woke
it (a context switch), it waited again for the pushing thread's lock and GIL (often one more),
took the task and sent it. A context switch costs about 10 µs of the broker's single core on
this kind of machine, and they were most of its time (``perf``: 40 % of the broker's CPU in the
scheduler's switch path, 5-7 switches per no-op task). Now an exchange that finds nothing is
*parked*: its thread goes straight back to reading its socket, and whoever makes a task ready
takes it for the first parked consumer, in priority order, and sends it on that consumer's
connection (a *sink*). The hand-over is decided under the lock; the sends happen after it.

The dispatcher thread answers parked consumers whose wait ran out (``None``, as a pop that timed
out), hands over delayed tasks that came due and tasks that other threads (the HTTP API, the
master's maintenance call) made ready, and answers everyone ``None`` when dispatching stops. It
sleeps until the next of those moments; a push served by a connection thread never wakes it.
An in-process caller that must wait parks with a :class:`LocalSink` and waits on its event.
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
from supervisor.broker.embedded.changes import ChangeSink
from supervisor.broker.embedded.core import TaskCore
from supervisor.broker.validate import check_queues

Sink = Callable[[Any], None]  # sends one answer on a parked consumer's connection
Handoff = tuple[str, Sink, Any]  # (consumer, sink, the answer)
PARKED = object()  # serve's result when the caller's answer comes later, through its sink
MAX_SLEEP_S = 3600.0
# The calls a connection thread hands to serve (everything else goes the generic way).
HOT_METHODS = frozenset({"push", "push_many", "exchange", "report"})
_log = logger.bind(component="broker")


@dataclass(slots=True)
class Parked:
    sink: Sink
    deadline: float  # time.monotonic() at which it is answered None
    queues: tuple[str, ...] | None = None  # the named queues it takes from (None: all)


class LocalSink:
    """The sink of an in-process caller: the answer is put here, and the caller woken."""

    def __init__(self) -> None:
        self.answer: Any = None
        self.event = threading.Event()

    def __call__(self, answer: Any) -> None:
        self.answer = answer
        self.event.set()


class Dispatcher:
    def __init__(self, core: TaskCore, lock: threading.RLock, changes: ChangeSink) -> None:
        self.core = core
        self.lock = lock
        self.changes = changes
        self.parked: OrderedDict[str, Parked] = OrderedDict()
        self._handoff = False  # a task became ready while consumers were parked
        self._serving = False  # a serve() is running: it hands over what it readies
        self._wake = threading.Event()
        self._at = math.inf  # time.monotonic() of the thread's next look
        self.thread: threading.Thread | None = None
        self._stopped = False
        self._calls: dict[str, Callable[..., Any]] = {
            "push": core.push,
            "push_many": core.push_many,
            "report": core.report,
        }
        core.on_ready = self.task_ready
        core.on_delayed = self.eta_set

    # -- the one path of the hot calls -------------------------------------------------------
    def serve(
        self, method: str, args: tuple[Any, ...], sink: Sink
    ) -> tuple[Any, BaseException | None, list[Handoff]]:
        """Run one of ``HOT_METHODS`` for a caller whose later answer goes to ``sink``.

        Returns (result, error, hand-overs): ``result`` is ``PARKED`` when the caller is answered
        later through ``sink``; the caller must send the hand-overs (see :meth:`deliver`)."""
        result: Any = None
        error: BaseException | None = None
        with self.lock:
            try:  # the durable broker makes sure its journal can take the change, first
                self.changes.begin(method, args)
            except Exception as exc:
                return None, exc, []
            self._serving = True
            try:
                if method == "exchange":
                    result = self._exchange(*args, sink=sink)
                else:
                    result = self._calls[method](*args)
            except Exception as exc:
                error = exc
            try:
                handoffs = self._hand_over() if self._handoff else []
            finally:
                self._serving = False
                failed = self.changes.end()
            if failed is not None:  # not safe: say so (hand-overs still go: they were made)
                if result is PARKED:
                    self.parked.pop(args[0], None)
                result, error = None, failed
        return result, error, handoffs

    def _exchange(
        self,
        consumer: str,
        report: Any,
        wait_s: float | None,
        queues: Any = None,
        *,
        sink: Sink,
    ) -> Any:
        wanted = check_queues(queues)  # before the report: a refused call changes nothing
        if report is not None:
            self.core.report(consumer, report)
        if not self.core.dispatching:
            return None
        msg = self.core.take(consumer, self.core.clock(), wanted)
        if msg is not None or (wait_s is not None and wait_s <= 0):
            return msg
        deadline = time.monotonic() + (MAX_SLEEP_S if wait_s is None else min(wait_s, MAX_SLEEP_S))
        self.parked[consumer] = Parked(sink, deadline, wanted)
        self._wake_by(deadline)
        return PARKED

    def withdraw(self, consumer: str, sink: Sink) -> bool:
        """Unpark ``consumer`` if it is still parked with ``sink``; False if it was answered
        (a hand-over may be on its way to the sink)."""
        with self.lock:
            parked = self.parked.get(consumer)
            if parked is None or parked.sink is not sink:
                return False
            del self.parked[consumer]
            return True

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
                    _log.error(
                        "task {} of departed consumer {} not put back: {}",
                        msg["task_id"],
                        consumer,
                        exc,
                    )

    def undeliverable(self, consumer: str, task_id: str) -> None:
        with self.lock:
            if self.core.held.get(consumer) != task_id:
                return
            del self.core.held[consumer]
            rec = self.core.active.get(task_id)
            if rec is not None:
                detail = {"error": f"consumer {consumer} left before it got the task"}
                self.core.fail(rec, base.REASON_SHUTDOWN, detail, self.core.clock())

    # -- what the core tells us (lock held) --------------------------------------------------
    def task_ready(self) -> None:
        """A task became ready: hand it to a parked consumer, if there is one."""
        if self.parked:
            self._handoff = True
            if not self._serving:
                self._wake.set()  # no serving thread will hand it over: wake the thread

    def eta_set(self, eta: float) -> None:
        """A delayed task waits until ``eta`` (the core's clock)."""
        if self.parked:
            self._wake_by(time.monotonic() + max(0.0, eta - self.core.clock()))

    def dispatching_changed(self) -> None:
        """Dispatching was switched on or off: the thread answers or hands over."""
        if self.parked:
            self._wake.set()

    def _wake_by(self, when: float) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
            self.thread.start()
        if when < self._at:
            self._at = when
            self._wake.set()

    def _hand_over(self) -> list[Handoff]:
        """Take ready tasks for parked consumers, first parked first."""
        self._handoff = False
        out: list[Handoff] = []
        if not self.core.dispatching:
            return out
        now = self.core.clock()
        for consumer, parked in list(self.parked.items()):
            msg = self.core.take(consumer, now, parked.queues)
            if msg is None:
                if parked.queues is None:
                    break  # nothing ready in any queue: no one else can get one either
                continue
            del self.parked[consumer]
            out.append((consumer, parked.sink, msg))
        return out

    # -- the dispatcher thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            sleep = 1.0
            try:
                with self.lock:
                    handoffs = self.once(time.monotonic())
                    sleep = self._at - time.monotonic()
                self.deliver(handoffs)
            except Exception as exc:  # never die: parked workers depend on this thread
                _log.opt(exception=exc).error("dispatcher: {} (going on)", exc)
            self._wake.wait(min(max(0.0, sleep), MAX_SLEEP_S))
            self._wake.clear()  # state is read under the lock after this: none lost

    def once(self, now_m: float) -> list[Handoff]:
        """Hand over, answer expired waits; set when to look next (lock held)."""
        now = self.core.clock()
        self.core.promote(now)
        handoffs: list[Handoff] = []
        try:
            self.changes.begin("dispatch", ())
        except Exception as exc:  # the journal cannot take a hand-over now: only answer waits
            _log.error("dispatcher cannot hand tasks over: {}", exc)
            retry_at = now_m + 1.0
        else:
            retry_at = math.inf
            try:
                handoffs = self._hand_over()
            finally:
                failed = self.changes.end()
            if failed is not None:
                _log.error("hand-overs not journaled (they still go): {}", failed)
        for consumer, parked in list(self.parked.items()):
            if not self.core.dispatching or parked.deadline <= now_m:
                del self.parked[consumer]
                handoffs.append((consumer, parked.sink, None))
        nearest = min((p.deadline for p in self.parked.values()), default=math.inf)
        eta = self.core.next_eta()
        if self.parked and eta is not None:
            nearest = min(nearest, now_m + max(0.0, eta - now))
        self._at = min(nearest, retry_at)
        return handoffs

    def stop(self) -> None:
        """Stop the thread and answer every parked consumer None now (the broker closes)."""
        with self.lock:
            self._stopped = True
            self._wake.set()
            handoffs = [(c, p.sink, None) for c, p in self.parked.items()]
            self.parked.clear()
        with contextlib.suppress(Exception):
            self.deliver(handoffs)
