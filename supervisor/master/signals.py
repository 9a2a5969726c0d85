"""Signal handling for the master: handlers only record; the loop acts.

Each handled signal's number goes on a ``SimpleQueue`` (safe to use from a handler) and a byte on
a self-pipe (``signal.set_wakeup_fd``) wakes the loop's ``select``. Logging, reaping and killing
all happen in the loop, never in a handler: logging from a handler deadlocked gunicorn for years.

Signals are blocked around ``fork`` so that a child never runs the master's handlers (which would
write into the master's pipe) before it has installed its own.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)


class SignalQueue:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self._queue.put(signum)

    def install(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._record)

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def fds(self) -> tuple[int, int]:
        return (self._r, self._w)

    def wait(self, timeout_s: float) -> None:
        """Sleep until a signal arrives or ``timeout_s`` passes."""
        if not self._queue.empty():
            return
        try:
            ready, _, _ = select.select([self._r], [], [], max(0.0, timeout_s))
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._r, 4096):
                    pass

    def drain(self) -> list[int]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def fork(self, child: Callable[[], object]) -> int:
        """:func:`fork_blocked` (a method, so that tests can replace it)."""
        return fork_blocked(child)

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Block every handled signal (e.g. around fork); pending ones arrive on exit."""
        with blocked_signals():
            yield


@contextlib.contextmanager
def blocked_signals() -> Iterator[None]:
    """Block every handled signal; pending ones arrive on exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def fork_blocked(child: Callable[[], object]) -> int:
    """Fork with every handled signal blocked, so that a signal never reaches the child before
    it has its own handlers; the child runs ``child()`` (it must not return; if it does, the
    child exits 1) and unblocks them itself. Returns the child's pid; OSError if fork fails."""
    with blocked_signals():
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(1)
    return pid


def current_stack() -> str:
    """The stack of the calling thread, formatted (the master's USR2 dump)."""
    frame = sys._current_frames().get(threading.get_ident())
    return "".join(traceback.format_stack(frame)) if frame else "(unavailable)"
