"""``supervisor run --ingest amqp://…/QUEUE``: RabbitMQ queues consumed into this node's broker.

Modules: :mod:`~supervisor.ingest.url` (the setting's values, checked at the boundary),
:mod:`~supervisor.ingest.mapping` (a message → a task, pure), :mod:`~supervisor.ingest.status`
(counters, lag, the status document), :mod:`~supervisor.ingest.consumer` (the loop, on pika)
and :mod:`~supervisor.ingest.process` (the child the master forks per URL). Only the pure parts
are imported here: pika is needed once an ingest runs.
"""

from supervisor.ingest.url import (
    IngestSpec,
    check_task_types,
    parse_ingest_url,
    parse_ingest_urls,
)

__all__ = ["IngestSpec", "check_task_types", "parse_ingest_url", "parse_ingest_urls"]
