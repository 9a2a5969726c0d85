"""Checks of a pushed message, before any script runs: the checks every broker makes
(:func:`supervisor.broker.validate.validate`), then the push script's arguments."""

from __future__ import annotations

from typing import Any

from supervisor.broker.redis import codec
from supervisor.broker.redis.core import Core
from supervisor.broker.validate import validate as validate_message


def validate(broker: Core, msg: Any, now: float) -> list[Any]:
    """The four push-script arguments of one message (id, record JSON, params, unique key or
    ``""``), or TaskError."""
    task_type = msg.get("type") if isinstance(msg, dict) else None
    options = broker._options(task_type) if isinstance(task_type, str) else broker._default
    rec = validate_message(
        msg, types=broker._types, options=options, max_payload=broker._max_payload, now=now
    )
    record = codec.new_record(
        task_id=rec.task_id,
        task_type=rec.type,
        priority=rec.priority,
        pushed_at=now,
        eta=rec.eta,
        schedule_id=rec.schedule_id,
        scheduled_at=rec.scheduled_at,
        unique_key=rec.unique_key,
        queue=rec.queue
        or (options.queue if broker._types and task_type in broker._types else None),
    )
    return [rec.task_id, record, rec.params, rec.unique_key or ""]
