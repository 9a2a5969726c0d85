"""The RabbitMQ backend of :class:`~supervisor.queuemanager.QueueManager`, on pika.

Why pika: it is the AMQP 0-9-1 client the RabbitMQ team documents and keeps, pure Python, and
its ``BlockingConnection`` is synchronous, which is what the document's ``push``/``pull`` calls
are (no event loop to own). It is an optional extra: ``pip install 'supervisor-workers[rabbitmq]'``;
nothing imports pika until a RabbitMQ QueueManager is built.

The contract on RabbitMQ:

- One durable classic queue named ``queue_name``, declared with ``x-max-priority`` 10 (the
  document's 0-10 maps one to one onto AMQP priorities) and, unless ``dead_letter=False``, a
  dead-letter queue ``<queue_name>.dead`` (default exchange): a task failed without requeue,
  and a message that is not ours (not JSON, no task id), end there with the reason.
  Declaring is idempotent, but a queue that already exists with other arguments is refused by
  RabbitMQ (PRECONDITION_FAILED): the push then returns False with that reason.
- A push is a persistent message (delivery mode 2, ``message_id`` = task id, AMQP priority)
  whose body is JSON ``{"task_id", "data", "priority"}``, published ``mandatory`` on a channel
  in confirm mode: it returns True only when the broker confirmed it; a nack or an unroutable
  message returns False. A batch (:meth:`push_many`) goes on a second, transactional channel:
  one ``tx.commit`` round trip makes the whole batch durable, all or none (RabbitMQ's
  transactions are the AMQP way to make a set of publishes safe; a channel cannot be both in
  confirm and in tx mode).
- A pull takes the head of the queue with ``basic.get`` (so the highest priority waiting, and
  several pulled tasks may be held at once, as the seed's ``pop_task`` allows); when the queue
  is empty it waits on a consumer with manual acks and ``prefetch_count=1`` for at most
  ``timeout`` s, then cancels it, so no message is ever held in this process unasked (priority
  holds, and nothing is stranded while the caller is busy). A pulled message stays unacked
  until :meth:`task_done` / :meth:`task_failed` / :meth:`release`; if this process dies, or its
  connection drops, RabbitMQ delivers it again to another consumer.
- Connection loss: any call reconnects; a push while RabbitMQ is down tries ``connect_attempts``
  times with a short backoff, logs the reason and returns False (never raises); a pull returns
  None after waiting out a backoff (at most its timeout). A publish that failed after it was
  sent is not retried (it may have reached the queue): delivery is at least once, and a task id
  may arrive twice, so handlers must be idempotent.

Heartbeats are served only while this process calls into the connection: a caller that holds
a pulled task longer than the heartbeat timeout (60 s by default) without calling ``pull`` or
``keepalive`` loses the connection, and RabbitMQ redelivers the task (its ``task_done`` then
returns False). ``TaskWorker`` calls ``keepalive`` while a task runs.

Not thread-safe (pika's blocking connection is not): one QueueManager per thread. After a fork
the child drops the parent's connection (never closing it under the parent) and opens its own.
RabbitMQ's ``consumer_timeout`` (30 min by default) closes a channel whose message stays unacked
longer: raise it on the server for longer tasks.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pika
import pika.exceptions
from loguru import logger

from supervisor.errors import BrokerError
from supervisor.policy import compute_backoff
from supervisor.queuemanager.amqpwire import dead_letter_queue, decode, encode, queue_arguments
from supervisor.queuemanager.validate import Message, safe_url

CONNECT_TIMEOUT_S = 2.0

log = logger.bind(component="queue")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


class RabbitMQQueue:
    """One RabbitMQ queue (see the module docstring for the contract)."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        *,
        dead_letter: bool = True,
        connect_attempts: int = 3,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
    ) -> None:
        try:
            self._params = pika.URLParameters(url)
        except Exception as exc:
            raise BrokerError(f"bad RabbitMQ URL {safe_url(url)}: {exc}") from None
        self._params.connection_attempts = 1  # our own loop retries, with backoff and logs
        self._params.socket_timeout = CONNECT_TIMEOUT_S
        self._params.stack_timeout = CONNECT_TIMEOUT_S * 2
        self._params.blocked_connection_timeout = 30.0  # a memory alarm fails a push, not hangs
        self.url = safe_url(url)
        self.queue_name = queue_name
        self._dead_letter = dead_letter
        self._attempts = max(1, connect_attempts)
        self._base_s, self._cap_s = backoff_base_s, backoff_cap_s
        self._conn: Any = None
        self._ch: Any = None  # confirm mode: single pushes, gets, consumes, acks
        self._tx: Any = None  # tx mode: batches
        self._returned: list[Any] = []
        self._generation = 0
        self._pid = os.getpid()
        self._failures = 0  # consecutive failed connects, for the pull backoff
        self._held: dict[str, tuple[int, int]] = {}  # task id -> (generation, delivery tag)

    # -- connection --------------------------------------------------------------------------
    def _channel(self) -> Any:
        if self._pid != os.getpid():  # forked: the socket is the parent's; never close it here
            self._conn = self._ch = self._tx = None
            self._held.clear()
            self._pid = os.getpid()
        conn, ch = self._conn, self._ch
        if conn is not None and conn.is_open and ch is not None and ch.is_open:
            try:  # a non-blocking read notices a connection that dropped while idle
                conn.process_data_events(time_limit=0)
            except _CONNECTION_ERRORS:
                pass
            if conn.is_open and ch.is_open:
                return ch
        self._drop()
        conn = pika.BlockingConnection(self._params)
        try:
            ch = conn.channel()
            self._declare(ch)
            ch.confirm_delivery()
            ch.basic_qos(prefetch_count=1)
        except BaseException:
            _close_quietly(conn)
            raise
        self._conn, self._ch = conn, ch
        self._generation += 1
        if self._failures:
            log.info("reconnected to RabbitMQ at {}", self.url)
        self._failures = 0
        return ch

    def _declare(self, ch: Any) -> None:
        if self._dead_letter:
            ch.queue_declare(dead_letter_queue(self.queue_name), durable=True)
        ch.queue_declare(
            self.queue_name,
            durable=True,
            arguments=queue_arguments(self.queue_name, dead_letter=self._dead_letter),
        )

    def _tx_channel(self) -> Any:
        self._channel()
        if self._tx is None or not self._tx.is_open:
            tx = self._conn.channel()
            tx.tx_select()
            tx.add_on_return_callback(lambda *args: self._returned.append(args))
            self._tx = tx
        return self._tx

    def _drop(self) -> None:
        """Forget the connection (closing it if it is still open); held messages are lost to
        this process (RabbitMQ redelivers them)."""
        conn, self._conn, self._ch, self._tx = self._conn, None, None, None
        if conn is not None:
            _close_quietly(conn)
        self._held.clear()

    def _connect_with_retries(self, what: str) -> tuple[Any, str]:
        """(channel or None, the reason it is None)."""
        reason = ""
        for attempt in range(1, self._attempts + 1):
            try:
                return self._channel(), ""
            except _CONNECTION_ERRORS as exc:
                self._drop()
                self._failures += 1
                reason = _describe(exc)
                if attempt < self._attempts:
                    time.sleep(compute_backoff(attempt, base_s=self._base_s, cap_s=self._cap_s))
        log.warning(
            "{} not accepted: RabbitMQ at {} unreachable after {} attempt(s): {}",
            what,
            self.url,
            self._attempts,
            reason,
        )
        return None, reason

    def close(self) -> None:
        """Close the connection; messages still held are redelivered by RabbitMQ."""
        if self._pid == os.getpid():
            self._drop()
        else:
            self._conn = self._ch = self._tx = None

    # -- push --------------------------------------------------------------------------------
    def push(self, task_id: str, data: dict[str, Any], priority: int) -> bool:
        ch, _ = self._connect_with_retries(f"push of task {task_id!r}")
        if ch is None:
            return False
        body, props = encode(task_id, data, priority)
        try:
            ch.basic_publish("", self.queue_name, body, props, mandatory=True)
        except pika.exceptions.UnroutableError:
            self._drop()  # the queue was deleted: the next call declares it again
            log.warning("push of task {!r} refused: queue {!r} is gone", task_id, self.queue_name)
            return False
        except pika.exceptions.NackError:
            log.warning("push of task {!r} refused: RabbitMQ nacked it", task_id)
            return False
        except _CONNECTION_ERRORS as exc:
            self._drop()
            log.warning(
                "push of task {!r} not confirmed (it may still arrive): {}", task_id, _describe(exc)
            )
            return False
        return True

    def push_many(self, tasks: list[tuple[str, dict[str, Any], int]]) -> bool:
        if not tasks:
            return True
        what = f"batch of {len(tasks)} tasks"
        try:
            tx = self._tx_channel()
        except _CONNECTION_ERRORS:
            self._drop()
            ch, _ = self._connect_with_retries(what)
            if ch is None:
                return False
            try:
                tx = self._tx_channel()
            except _CONNECTION_ERRORS as exc:
                self._drop()
                log.warning("{} not accepted: {}", what, _describe(exc))
                return False
        self._returned.clear()
        try:
            for task_id, data, priority in tasks:
                body, props = encode(task_id, data, priority)
                tx.basic_publish("", self.queue_name, body, props, mandatory=True)
            tx.tx_commit()
            self._conn.process_data_events(time_limit=0)  # deliver basic.return, if any
        except _CONNECTION_ERRORS as exc:
            self._drop()
            log.warning("{} not committed (it may still arrive): {}", what, _describe(exc))
            return False
        if self._returned:
            self._drop()  # the queue was deleted: the next call declares it again
            log.warning("{} refused: queue {!r} is gone", what, self.queue_name)
            return False
        return True

    # -- pull and acknowledgements -----------------------------------------------------------
    def pull(self, timeout: float | None) -> Message | None:
        try:
            ch = self._channel()
        except _CONNECTION_ERRORS as exc:
            self._drop()
            self._failures += 1
            wait = compute_backoff(self._failures, base_s=0.1, cap_s=self._cap_s, jitter=False)
            if timeout is not None:
                wait = min(wait, timeout)
            log.warning(
                "pull: RabbitMQ at {} unreachable ({}); next try in {:.2f} s",
                self.url,
                _describe(exc),
                wait,
            )
            time.sleep(wait)
            return None
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        try:
            while True:
                method, props, body = ch.basic_get(self.queue_name, auto_ack=False)
                if method is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    method, props, body = self._wait_one(ch, left)
                    if method is None:
                        return None
                msg = decode(body, props)
                if isinstance(msg, str):
                    log.error(
                        "message {} on queue {!r} rejected to the dead-letter queue: {}",
                        getattr(props, "message_id", None) or method.delivery_tag,
                        self.queue_name,
                        msg,
                    )
                    ch.basic_reject(method.delivery_tag, requeue=False)
                    continue
                self._held[msg["task_id"]] = (self._generation, method.delivery_tag)
                return msg
        except _CONNECTION_ERRORS as exc:
            self._drop()
            log.warning("pull: connection to RabbitMQ lost: {}", _describe(exc))
            return None

    def _wait_one(self, ch: Any, timeout_s: float | None) -> tuple[Any, Any, Any]:
        """One delivery from a prefetch-1 consumer within ``timeout_s``, then the consumer is
        cancelled (pika rejects, requeued, whatever else it buffered: nothing, at prefetch 1)."""
        got: tuple[Any, Any, Any] = (None, None, None)
        try:
            deliveries = ch.consume(self.queue_name, auto_ack=False, inactivity_timeout=timeout_s)
            got = next(deliveries)
        finally:
            if ch.is_open:
                ch.cancel()
        return got

    def _settle(self, task_id: str, action: str, requeue: bool = False) -> bool:
        held = self._held.pop(task_id, None)
        if held is None:
            log.warning(
                "task {!r} is not held by this QueueManager: nothing to {}", task_id, action
            )
            return False
        generation, tag = held
        if generation != self._generation or self._ch is None or not self._ch.is_open:
            log.warning(
                "cannot {} task {!r}: the connection it came on is gone (RabbitMQ redelivers it)",
                action,
                task_id,
            )
            return False
        try:
            if action == "ack":
                self._ch.basic_ack(tag)
            else:
                self._ch.basic_nack(tag, requeue=requeue)
        except _CONNECTION_ERRORS as exc:
            self._drop()
            log.warning("cannot {} task {!r}: {}", action, task_id, _describe(exc))
            return False
        return True

    def task_done(self, task_id: str) -> bool:
        return self._settle(task_id, "ack")

    def task_failed(self, task_id: str, error: str, requeue: bool | None) -> bool:
        """Nack: requeued at once when ``requeue`` is True, else dead-lettered (RabbitMQ keeps
        no attempt count, so a default requeue would loop a poison message forever)."""
        again = bool(requeue)
        log.warning(
            "task {!r} failed ({}): {}",
            task_id,
            "requeued" if again else "dead-lettered" if self._dead_letter else "dropped",
            error,
        )
        return self._settle(task_id, "nack", requeue=again)

    def release(self, task_id: str) -> bool:
        return self._settle(task_id, "nack", requeue=True)

    def keepalive(self) -> None:
        """Serve heartbeats while a pulled task runs (call at least every few seconds)."""
        if self._conn is None or not self._conn.is_open or self._pid != os.getpid():
            return
        try:
            self._conn.process_data_events(time_limit=0)
        except _CONNECTION_ERRORS as exc:
            self._drop()
            log.warning("connection to RabbitMQ lost while a task ran: {}", _describe(exc))

    # -- queries -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn(self._channel())
        except _CONNECTION_ERRORS as exc:
            self._drop()
            raise BrokerError(f"{what}: RabbitMQ at {self.url}: {_describe(exc)}") from None

    def length(self) -> int:
        return int(
            self._call(
                "queue length",
                lambda ch: ch.queue_declare(self.queue_name, passive=True).method.message_count,
            )
        )

    def clear(self) -> int:
        return int(
            self._call("clear", lambda ch: ch.queue_purge(self.queue_name).method.message_count)
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:500]


def _close_quietly(conn: Any) -> None:
    try:
        if conn.is_open:
            conn.close()
    except _CONNECTION_ERRORS:
        pass
