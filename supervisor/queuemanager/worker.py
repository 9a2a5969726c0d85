"""``TaskWorker``: the document's pull loop over a QueueManager, with its graceful shutdown.

The pipeline rule: ``pipeline_service`` is an object with a ``process(task_id, data)`` method
(used when it has one), or else a callable ``pipeline_service(task_id, data)``. Its return value
is ignored; returning means success, raising means failure.

Each task runs in a daemon thread while the loop (the thread that called :meth:`start`) waits
on it, keeps the queue connection alive and watches the signals. SIGTERM and SIGINT handlers
only record the signal (on a SimpleQueue); the loop then stops pulling, lets the current task
finish for up to ``max_shutdown_wait`` seconds, and returns 0. A task still running at that
deadline is logged and marked FAILED: back to the queue for another consumer (RabbitMQ: nack
with requeue; Redis: a failed attempt under the retry policy); its thread is abandoned (a
daemon: it does not hold the process's exit). A task that raises is marked failed with the
backend's policy (Redis: retried per the retry policy; RabbitMQ: dead-lettered).
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from loguru import logger

from supervisor.errors import ConfigError, ExitCode
from supervisor.queuemanager.manager import QueueManager
from supervisor.queuemanager.validate import Message

WAIT_STEP_S = 0.2  # how often the loop looks at the task, the signals and the connection
LOOP_ERROR_WAIT_S = 1.0  # pause after an unexpected error, so that it cannot spin
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logger.bind(component="queue")


def resolve_pipeline(pipeline_service: Any) -> Callable[[str, dict[str, Any]], Any]:
    """The function to call per task (see the module docstring), or ConfigError."""
    process = getattr(pipeline_service, "process", None)
    if callable(process):
        return process
    if callable(pipeline_service):
        return pipeline_service
    raise ConfigError(
        "pipeline_service must have a process(task_id, data) method or be a callable "
        f"pipeline_service(task_id, data), got {type(pipeline_service).__name__}"
    )


class _Run(threading.Thread):
    """One task in a daemon thread; ``error`` is its traceback text if it raised."""

    def __init__(self, fn: Callable[[str, dict[str, Any]], Any], msg: Message) -> None:
        super().__init__(name=f"task-{msg['task_id']}", daemon=True)
        self._fn, self._msg = fn, msg
        self.error: str | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._fn(self._msg["task_id"], self._msg["data"])
        except BaseException as exc:  # the task's failure is data for the loop
            self.error = "".join(traceback.format_exception(exc)).strip()[-4000:] or repr(exc)
        finally:
            self.finished.set()


class TaskWorker:
    """Pull tasks from ``queue_manager`` and run ``pipeline_service`` on each, until stopped."""

    def __init__(
        self,
        queue_manager: QueueManager,
        pipeline_service: Any,
        max_shutdown_wait: float = 300,
        *,
        pull_timeout_s: float = 1.0,
    ) -> None:
        if (
            isinstance(max_shutdown_wait, bool)
            or not isinstance(max_shutdown_wait, int | float)
            or max_shutdown_wait < 0
        ):
            raise ConfigError(f"max_shutdown_wait must be seconds >= 0, got {max_shutdown_wait!r}")
        self.queue_manager = queue_manager
        self._fn = resolve_pipeline(pipeline_service)
        self.max_shutdown_wait = float(max_shutdown_wait)
        self.pull_timeout_s = pull_timeout_s
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stopping = False
        self.processed = 0
        self.failed = 0

    def stop(self) -> None:
        """Ask the loop to stop (as SIGTERM does); safe from any thread or a signal handler."""
        self._signals.put(0)

    def start(self) -> int:
        """Run the loop until SIGTERM/SIGINT (or :meth:`stop`); close the queue manager and
        return 0 (:data:`ExitCode.OK`). Signal handlers are installed only when called from the
        main thread, and the previous ones are restored on return."""
        log.info("worker started on queue {!r} ({})", self.queue_manager.queue_name, self.url)
        with self._handlers():
            try:
                while not self._stop_requested():
                    try:
                        self._step()
                    except Exception:  # the loop boundary: log it, keep serving
                        log.exception("worker loop error (next try in {:g} s)", LOOP_ERROR_WAIT_S)
                        time.sleep(LOOP_ERROR_WAIT_S)
            finally:
                self.queue_manager.close()
        log.info("worker stopped ({} done, {} failed)", self.processed, self.failed)
        return int(ExitCode.OK)

    @property
    def url(self) -> str:
        return self.queue_manager.url

    # -- steps -------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                return self._stopping
            if not self._stopping:
                name = signal.Signals(signum).name if signum else "stop()"
                log.info("{} received: stopping (no new tasks)", name)
            self._stopping = True

    def _step(self) -> None:
        """Pull one task and run it (or give it back if a stop came meanwhile)."""
        msg = self.queue_manager.pull(timeout=self.pull_timeout_s)
        if msg is None:
            return
        if self._stop_requested():
            self.queue_manager.release(msg["task_id"])
            log.info("task {!r} given back: pulled as the worker stopped", msg["task_id"])
            return
        self._run_one(msg)

    def _run_one(self, msg: Message) -> None:
        task_id = msg["task_id"]
        log.info("task {!r} started (priority {})", task_id, msg["priority"])
        run = _Run(self._fn, msg)
        run.start()
        deadline: float | None = None
        while not run.finished.wait(WAIT_STEP_S):
            self.queue_manager.keepalive()
            if deadline is None and self._stop_requested():
                deadline = time.monotonic() + self.max_shutdown_wait
                log.info(
                    "waiting up to {:g} s for task {!r} to finish", self.max_shutdown_wait, task_id
                )
            if deadline is not None and time.monotonic() >= deadline:
                error = (
                    f"cut off by the shutdown after max_shutdown_wait={self.max_shutdown_wait:g} s"
                )
                log.error("task {!r} FAILED: {}", task_id, error)
                self.failed += 1
                self.queue_manager.task_failed(task_id, error, requeue=True)
                return
        if run.error is not None:
            self.failed += 1
            log.error("task {!r} FAILED: {}", task_id, run.error)
            self.queue_manager.task_failed(task_id, run.error)
        else:
            self.processed += 1
            log.info("task {!r} succeeded", task_id)
            self.queue_manager.task_done(task_id)

    @contextlib.contextmanager
    def _handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            log.info("not the main thread: no signal handlers (use stop())")
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._record)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _record(self, signum: int, frame: Any) -> None:
        self._signals.put(signum)  # only record: the loop acts
