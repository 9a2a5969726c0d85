"""The node process of a Redis-backed master: its HTTP endpoints and the task history writer.

On one machine the embedded broker's process hosts the HTTP endpoints. With Redis there is no
broker process of ours, and the master must stay single-threaded (it forks workers), so the
master forks this small process instead. It serves ``/metrics``, ``/livez``, ``/readyz`` and the
JSON API over a :class:`~supervisor.broker.redis.RedisBroker` of its own, and, when a database
is set, runs the :class:`~supervisor.broker.redis.history.HistoryWriter` that copies task
records into the SQL task table (one writer at a time across the cluster). It dies with the
master (``PR_SET_PDEATHSIG``) and stops on SIGTERM.

While it serves ``/metrics`` it also competes, from a thread of its own, for the role of the
cluster's metrics exporter (:meth:`~supervisor.broker.redis.nodes.NodeBroker.elect_exporter`):
the one node whose ``/metrics`` carries the cluster-wide gauges and counters. It gives the role
up when it stops.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor import osutil
from supervisor.broker.redis.nodes import EXPORTER_RENEW_S
from supervisor.errors import BrokerError
from supervisor.policy import compute_backoff

PRUNE_EVERY_S = 60.0
# How long the history writer lets a trickle of changes gather before the next batch: each
# batch costs ~9 Redis commands and a database transaction, which at low rates cost more CPU
# than the tasks (and slowed them, on a small machine). History is at most this much later.
GATHER_S = 0.1  # the exporter forgets long-silent nodes this often


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
        exporter = on_serve is not None and hasattr(broker, "elect_exporter")
        if exporter:
            _exporter_turn(broker, first=True)  # before the first scrape can come
        if on_serve is not None:
            on_serve(broker)
        if exporter:
            threading.Thread(
                target=_keep_exporter_role, args=(stop, broker), name="exporter", daemon=True
            ).start()
        ready("serving")
        _serve(stop, None if make_history is None else lambda: make_history(broker))
        if exporter:
            with contextlib.suppress(Exception):
                broker.resign_exporter()  # another node takes over at once

    try:
        pid, _ = osutil.fork_service(node_process, timeout_s=timeout_s)
    except osutil.ServiceStartError as exc:
        raise BrokerError(
            f"the node process (HTTP endpoints, task history) did not start: {exc}"
        ) from None
    return pid


def _exporter_turn(broker: Any, *, first: bool = False) -> bool:
    """Take or keep the exporter's role; False (and the role lapses) when Redis fails."""
    try:
        broker.elect_exporter()
    except BrokerError as exc:
        if first:
            logger.bind(component="metrics").warning(
                "cannot take part in the metrics exporter's election yet: {}", exc
            )
        return False
    return True


def _keep_exporter_role(stop: threading.Event, broker: Any) -> None:
    """Every EXPORTER_RENEW_S until ``stop``; the exporter also forgets long-silent nodes."""
    log = logger.bind(component="metrics")
    failing = False
    next_prune = 0.0
    while not stop.wait(EXPORTER_RENEW_S):
        ok = _exporter_turn(broker)
        if ok and failing:
            log.info("metrics exporter election: Redis answers again")
        elif not ok and not failing:
            log.warning("metrics exporter election: Redis does not answer; retrying")
        failing = not ok
        if ok and broker.is_cluster_exporter() and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + PRUNE_EVERY_S
            with contextlib.suppress(BrokerError):
                broker.prune_node_health()


def _serve(stop: threading.Event, make_history: Callable[[], Any] | None) -> None:
    """Write history until SIGTERM (or just wait for it when there is no history to write).

    The writer is made here, retried with the same backoff as its writes: a database that is
    down or locked at start delays the history (it waits in the Redis stream), never the node."""
    log = logger.bind(component="history")
    failures = 0
    history: Any = None
    while not stop.is_set():
        if make_history is None:
            stop.wait(1.0)
            continue
        try:
            if history is None:
                history = make_history()
            n = history.step(block_ms=500)
            if not n:
                stop.wait(0.5)  # nothing new (the read blocked already), or not the writer
            elif n < history.batch:
                stop.wait(GATHER_S)  # a trickle: let entries gather, one write for many
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
