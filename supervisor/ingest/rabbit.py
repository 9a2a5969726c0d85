"""The pika side of the ingest: connect and declare, publish a dead letter, describe an error.

The queue is declared as the QueueManager declares it (durable, ``x-max-priority`` 10, the
dead-letter queue ``<queue>.dead``): a queue that exists with other arguments is refused by
RabbitMQ (406 PRECONDITION_FAILED), which :func:`describe` explains. The channel is in confirm
mode, so a dead letter is on RabbitMQ before the message it copies is acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions

from supervisor.ingest.mapping import dead_letter_headers
from supervisor.ingest.url import IngestSpec
from supervisor.queuemanager.amqpwire import dead_letter_queue, queue_arguments

CONNECT_TIMEOUT_S = 5.0
BLOCKED_TIMEOUT_S = 60.0  # a memory alarm on RabbitMQ: reconnect, not hang forever
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


class ConsumerCancelled(pika.exceptions.AMQPChannelError):
    """RabbitMQ cancelled our consumer (the queue was deleted): reconnect and declare again."""

    def __str__(self) -> str:
        return "RabbitMQ cancelled the consumer (was the queue deleted?)"


def connect(
    spec: IngestSpec,
    *,
    prefetch: int,
    on_message: Callable[[Any, Any, Any, bytes], None],
    on_cancel: Callable[[Any], None],
) -> tuple[Any, Any]:
    """(connection, channel) consuming ``spec.queue`` with manual acks and ``prefetch``
    messages in flight; raises one of :data:`CONNECTION_ERRORS`."""
    params = pika.URLParameters(spec.connection_url)
    params.connection_attempts = 1  # the caller's loop retries, with backoff and a log line
    params.socket_timeout = CONNECT_TIMEOUT_S
    params.stack_timeout = CONNECT_TIMEOUT_S * 2
    params.blocked_connection_timeout = BLOCKED_TIMEOUT_S
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare(dead_letter_queue(spec.queue), durable=True)
        ch.queue_declare(spec.queue, durable=True, arguments=queue_arguments(spec.queue))
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=prefetch)
        ch.add_on_cancel_callback(on_cancel)
        ch.basic_consume(spec.queue, on_message, auto_ack=False)
    except BaseException:
        try:
            if conn.is_open:
                conn.close()
        except CONNECTION_ERRORS:
            pass
        raise
    return conn, ch


def dead_letter(
    ch: Any, dead_queue: str, body: bytes, props: Any, *, reason: str, queue: str, now: float
) -> None:
    """Publish a persistent copy of a message to ``dead_queue`` with why (confirmed)."""
    copy = pika.BasicProperties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=dead_letter_headers(
            getattr(props, "headers", None), reason=reason, queue=queue, now=now
        ),
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        message_id=props.message_id,
        timestamp=props.timestamp,
        type=props.type,
        app_id=props.app_id,
    )  # not user_id (RabbitMQ checks it against ours) nor expiration
    try:
        ch.basic_publish("", dead_queue, body, copy, mandatory=True)
    except pika.exceptions.UnroutableError:  # the dead-letter queue was deleted: again
        ch.queue_declare(dead_queue, durable=True)
        ch.basic_publish("", dead_queue, body, copy, mandatory=True)


def describe(exc: BaseException, spec: IngestSpec) -> str:
    """What went wrong, for the log: with a hint where one helps, never the password."""
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        text = f"RabbitMQ refused: {exc.reply_code} {exc.reply_text}"
        if exc.reply_code == 406:
            text += (
                f" (the queue must be declared durable with {queue_arguments(spec.queue)}"
                ", as the QueueManager declares it)"
            )
    elif isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        text = f"login refused, check the user and password ({exc})"
    elif isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        text = f"access to the virtual host {spec.vhost!r} denied ({exc})"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    password = urlsplit(spec.url).password
    if password:
        text = text.replace(password, "***")
    return text[:500]
