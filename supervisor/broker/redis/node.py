"""The node process of a Redis-backed master: its HTTP endpoints and the task history writer.

On one machine the embedded broker's process hosts the HTTP endpoints. With Redis there is no
broker process of ours, and the master must stay single-threaded (it forks workers), so the
master forks this small process instead. It serves ``/metrics``, ``/livez``, ``/readyz`` and the
JSON API over a :class:`~supervisor.broker.redis.RedisBroker` of its own, and, when a database
is set, runs the :class:`~supervisor.broker.redis.history.HistoryWriter` that copies task
records into the SQL task table (one writer at a time across the cluster). It dies with the
master (``PR_SET_PDEATHSIG``) and stops on SIGTERM.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor import osutil
from supervisor.errors import BrokerError
from supervisor.policy import compute_backoff


def fork_node_process(
    *,
    make_broker: Callable[[], Any],
    on_serve: Callable[[Any], None] | None,
    make_history: Callable[[Any], Any] | None,
    timeout_s: float = 10.0,
) -> int:
    """Fork the node process; once its endpoints listen, return its pid. Raises BrokerError."""

    def node_process(ready: Callable[[str], None]) -> None:
        stop = threading.Event()
        osutil.service_child(lambda *_: stop.set())
        broker = make_broker()
        if on_serve is not None:
            on_serve(broker)
        ready("serving")
        _serve(stop, None if make_history is None else make_history(broker))

    try:
        pid, _ = osutil.fork_service(node_process, timeout_s=timeout_s)
    except osutil.ServiceStartError as exc:
        raise BrokerError(
            f"the node process (HTTP endpoints, task history) did not start: {exc}"
        ) from None
    return pid


def _serve(stop: threading.Event, history: Any) -> None:
    """Write history until SIGTERM (or just wait for it when there is no history to write)."""
    log = logger.bind(component="history")
    failures = 0
    while not stop.is_set():
        if history is None:
            stop.wait(1.0)
            continue
        try:
            if not history.step(block_ms=500):
                stop.wait(0.5)  # nothing new (the read blocked already), or not the writer
            failures = 0
        except Exception as exc:  # Redis or the database is down: back off, never die
            failures += 1
            delay = compute_backoff(failures, base_s=0.5, cap_s=10.0, jitter=False)
            if failures == 1 or failures % 20 == 0:
                log.warning(
                    "task history not written ({}); retrying in {:.1f} s", _short(exc), delay
                )
            stop.wait(delay)
    if history is not None:
        with contextlib.suppress(Exception):
            history.drain(max_batches=20)  # what is pending now, before we go


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {text}"
