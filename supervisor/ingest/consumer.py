"""The ingest loop: consume one RabbitMQ queue into our broker, acking only what it accepted.

Why it loses nothing: a message is acknowledged to RabbitMQ only after our broker accepted its
task durably (the embedded broker's journal, or the Redis script; ``push`` returns only then) or
after it was dead-lettered with a confirmed publish. A ``kill -9`` anywhere before the ack leaves
the message unacked: RabbitMQ delivers it again once our connection is gone.

Why a redelivery makes no second task: the task id is the message's, and before pushing a
message RabbitMQ flags ``redelivered`` (it was handed to a consumer before: ours may have pushed
it, then died before the ack) we ask our broker for it (``get_task``): a task it knows (live or
finished) is acknowledged without a push -- a push would re-run a finished one. A push refused
with ``DuplicateTaskId`` (the id is live: a producer sent it twice, or another node pushed it in
between) counts the same. Messages never delivered before are pushed without the look-up (it is
a round trip per message, and it would cut the throughput by three): so a producer that sends
an id again *after* its task finished gets it run again, as a second ``push`` would. A
redelivered message whose record is gone (expired after ``result_ttl`` / ``failure_ttl``, or
purged) is pushed and runs again.

Batches: with ``prefetch`` messages in flight, what has arrived is taken as one batch: the
look-ups of its redelivered messages, one ``push_many`` for the new ones (one durable write),
dead letters published, then one ``basic_ack(multiple=True)`` for the batch. While our broker
is down the batch is held unacked and retried with backoff (every message looked up then: the
broker may have taken some), the connection kept alive (heartbeats served); while RabbitMQ is
down, connecting is retried with backoff. Either is logged with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from supervisor.broker.base import Broker
from supervisor.errors import BrokerError, TaskError
from supervisor.ingest import rabbit
from supervisor.ingest.accept import Outcome, accept
from supervisor.ingest.mapping import Accepted, Rejected, message_label, sent_at, to_task
from supervisor.ingest.status import IngestStats, component_name, status_doc
from supervisor.ingest.url import IngestSpec
from supervisor.policy import compute_backoff
from supervisor.queuemanager.amqpwire import dead_letter_queue

IDLE_WAIT_S = 0.2  # longest wait for a delivery: how soon a stop request is seen
PUBLISH_EVERY_S = 1.0
HEALTHY_AFTER_S = 10.0  # a connection that lasted this long resets the reconnect delay

Delivery = tuple[Any, Any, bytes, float]  # method, properties, body, received at (epoch s)


class Stopping(Exception):
    """A stop was asked while a batch was held: leave it unacked (RabbitMQ requeues it)."""


class Ingestor:
    """Consumes ``spec``'s queue into ``broker`` until ``should_stop()`` (see the module)."""

    def __init__(
        self,
        *,
        spec: IngestSpec,
        broker: Broker,
        node: str,
        should_stop: Callable[[], bool],
        max_payload_bytes: int | None = 1 << 20,
        prefetch: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        reconnect_base_s: float = 0.5,
        reconnect_cap_s: float = 30.0,
        broker_retry_cap_s: float = 5.0,
    ) -> None:
        self.spec = spec
        self.broker = broker
        self.node = node
        self.name = component_name(node, spec.queue)
        self._should_stop = should_stop
        self.max_payload_bytes = max_payload_bytes
        self.prefetch = max(1, spec.prefetch if prefetch is None else prefetch)
        self.clock = clock  # epoch seconds: message ages
        self.monotonic = monotonic  # waits and the publishing cadence
        self._reconnect = (reconnect_base_s, reconnect_cap_s)
        self._broker_retry_cap_s = broker_retry_cap_s
        self.stats = IngestStats()
        self.connected = False
        self._pending: list[Delivery] = []
        self._cancelled = False
        self._next_publish = 0.0
        self._published_connected: bool | None = None
        self.dead_queue = dead_letter_queue(spec.queue)
        self.log = logger.bind(component="ingest", queue=spec.queue)

    # -- the outer loop: connect, consume, back off ------------------------------------------
    def run(self) -> None:
        self._resume()
        failures = 0
        while not self._should_stop():
            try:
                conn, ch = self._connect()
            except rabbit.CONNECTION_ERRORS as exc:
                failures += 1
                delay = compute_backoff(
                    failures, base_s=self._reconnect[0], cap_s=self._reconnect[1]
                )
                self.log.error(
                    "cannot consume queue {!r} at {}: {}; trying again in {:.1f} s (attempt {})",
                    self.spec.queue,
                    self.spec.masked,
                    self._describe(exc),
                    delay,
                    failures,
                )
                self._wait(delay)
                continue
            self.log.info(
                "consuming queue {!r} at {} into the broker (prefetch {}){}",
                self.spec.queue,
                self.spec.masked,
                self.prefetch,
                f", after {failures} failure(s)" if failures else "",
            )
            connected_at = self.monotonic()
            try:
                self._consume(conn, ch)
            except Stopping:
                pass
            except rabbit.CONNECTION_ERRORS as exc:
                if self.monotonic() - connected_at >= HEALTHY_AFTER_S:
                    failures = 0  # it worked for a while: the delay starts over
                failures += 1
                delay = compute_backoff(
                    failures, base_s=self._reconnect[0], cap_s=self._reconnect[1]
                )
                self.log.warning(
                    "consuming queue {!r} at {} broke off: {}; unacked messages go back to the "
                    "queue; reconnecting in {:.1f} s",
                    self.spec.queue,
                    self.spec.masked,
                    self._describe(exc),
                    delay,
                )
                self._close(conn)
                self._wait(delay)
            finally:
                self._close(conn)
        self._publish(force=True)
        self.log.info("stopped consuming queue {!r}", self.spec.queue)

    def _connect(self) -> tuple[Any, Any]:
        conn, ch = rabbit.connect(
            self.spec,
            prefetch=self.prefetch,
            on_message=self._on_message,
            on_cancel=self._on_cancel,
        )
        self._pending.clear()
        self._cancelled = False
        self._set_connected(True)
        return conn, ch

    def _on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self._pending.append((method, props, body, self.clock()))

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = True

    def _consume(self, conn: Any, ch: Any) -> None:
        while not self._should_stop():
            if self._cancelled and not self._pending:
                raise rabbit.ConsumerCancelled()
            conn.process_data_events(time_limit=0 if self._pending else IDLE_WAIT_S)
            if self._pending:
                batch, self._pending = (
                    self._pending[: self.prefetch],
                    self._pending[self.prefetch :],
                )
                self.ingest_batch(conn, ch, batch)
            self._publish()

    # -- one batch ---------------------------------------------------------------------------
    def ingest_batch(self, conn: Any, ch: Any, batch: list[Delivery]) -> None:
        """Map, push (retrying while our broker is down), dead-letter, then ack the batch."""
        sent = [sent_at(d[1], d[3]) for d in batch]
        accepted: list[tuple[Accepted, int]] = []  # with the delivery's index in the batch
        refused: list[tuple[Delivery, str]] = []
        for i, d in enumerate(batch):
            try:
                task = to_task(
                    d[2], d[1], queue=self.spec.queue, max_payload_bytes=self.max_payload_bytes
                )
            except Exception as exc:  # whatever a message does, it must not stop the queue
                task = Rejected(f"unreadable message: {type(exc).__name__}: {exc}")
            if isinstance(task, Rejected):
                refused.append((d, task.reason))
            else:
                accepted.append((task, i))
        self.stats.held_since = min(sent)
        redelivered = {id(a) for a, i in accepted if batch[i][0].redelivered}
        pushed, dups, bad = self._accept(conn, [(a, id(a) in redelivered) for a, _ in accepted])
        # Tasks are counted as soon as our broker has them: if the ack below is lost with the
        # connection, the redelivery finds them (a duplicate then), so each task counts once
        # as ingested. Dead letters are counted once acked: a redelivery publishes them again.
        now = self.clock()
        self.stats.ingested += len(pushed)
        self.stats.duplicates += len(dups)
        for _, i in accepted:
            self.stats.lag.record(now - sent[i], now)
        index = {id(a): i for a, i in accepted}  # the very objects _accept hands back
        refused += [(batch[index[id(a)]], reason) for a, reason in bad]
        for d, reason in refused:
            self._dead_letter(ch, d, reason)
        ch.basic_ack(batch[-1][0].delivery_tag, multiple=True)
        self.stats.held_since = None
        self.stats.rejected += len(refused)
        if dups:
            self.log.info(
                "{} message(s) mapped to tasks the broker already has (acked, not pushed): {}",
                len(dups),
                ", ".join(repr(a.task_id) for a in dups[:5]) + (", ..." if len(dups) > 5 else ""),
            )

    def _accept(self, conn: Any, items: list[tuple[Accepted, bool]]) -> Outcome:
        """(pushed, duplicates, refused with why) of ``(task, redelivered)`` items, retrying
        while our broker is down."""
        mine: set[str] = set()  # ids pushed by us during this batch (before a failure)
        attempt = 0
        while True:
            try:
                # after a failure every item is looked up: the broker may have taken some
                return accept(self.broker, items, mine, look_up_all=attempt > 0)
            except BrokerError as exc:
                attempt += 1
                delay = compute_backoff(
                    attempt, base_s=0.1, cap_s=self._broker_retry_cap_s, jitter=False
                )
                self.log.warning(
                    "the broker did not accept {} message(s) of queue {!r}: {}; they stay "
                    "unacked on RabbitMQ; trying again in {:.1f} s (attempt {})",
                    len(items),
                    self.spec.queue,
                    exc,
                    delay,
                    attempt,
                )
                self._hold(conn, delay)

    def _dead_letter(self, ch: Any, d: Delivery, reason: str) -> None:
        """A copy to ``<queue>.dead`` with the reason (confirmed); acked with the batch."""
        method, props, body, _ = d
        rabbit.dead_letter(
            ch, self.dead_queue, body, props, reason=reason, queue=self.spec.queue, now=self.clock()
        )
        self.log.error(
            "message {} of queue {!r} dead-lettered to {!r}: {}",
            message_label(props, method.delivery_tag),
            self.spec.queue,
            self.dead_queue,
            reason,
        )

    # -- waiting, status ---------------------------------------------------------------------
    def _hold(self, conn: Any, delay_s: float) -> None:
        """Wait ``delay_s`` serving the connection (heartbeats); Stopping if asked to stop."""
        deadline = self.monotonic() + delay_s
        while (left := deadline - self.monotonic()) > 0:
            if self._should_stop():
                raise Stopping()
            conn.sleep(min(IDLE_WAIT_S, left))
            self._publish()
        if self._should_stop():
            raise Stopping()

    def _wait(self, delay_s: float) -> None:
        """Wait ``delay_s`` with no connection, publishing the status; early on a stop."""
        deadline = self.monotonic() + delay_s
        while not self._should_stop() and (left := deadline - self.monotonic()) > 0:
            time.sleep(min(IDLE_WAIT_S, left))
            self._publish()

    def _set_connected(self, on: bool) -> None:
        self.connected = on
        self._publish()

    def _publish(self, *, force: bool = False) -> None:
        """The status document, about once a second and at once when ``connected`` changed."""
        now = self.monotonic()
        changed = self._published_connected is not self.connected
        if not (force or changed or now >= self._next_publish):
            return
        self._next_publish = now + PUBLISH_EVERY_S
        doc = self.status_doc()
        try:
            self.broker.publish_component_status(self.name, doc)
        except (BrokerError, TaskError) as exc:
            self.log.debug("status not published: {}", exc)
            return
        self._published_connected = self.connected

    def status_doc(self) -> dict[str, Any]:
        return status_doc(
            node=self.node,
            queue=self.spec.queue,
            url=self.spec.masked,
            stats=self.stats,
            connected=self.connected,
            now=self.clock(),
        )

    def _resume(self) -> None:
        try:
            self.stats.resume(self.broker.component_statuses().get(self.name))
        except BrokerError as exc:
            self.log.debug("previous counts not read: {}", exc)

    def _describe(self, exc: BaseException) -> str:
        return rabbit.describe(exc, self.spec)

    def _close(self, conn: Any) -> None:
        self._pending.clear()
        self.stats.held_since = None  # what we held goes back to RabbitMQ with the connection
        if self.connected:
            self._set_connected(False)
        try:
            if conn.is_open:
                conn.close()
        except rabbit.CONNECTION_ERRORS:
            pass
