"""Records as the scripts store them, and back to the shape of
:meth:`supervisor.broker.records.TaskRecord.as_dict`.

Times travel as strings of epoch seconds: Lua's cjson keeps only 14 significant digits of a
number, which would round a timestamp to 0.1 ms. Lua encodes an empty list as ``{}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from supervisor.registry import DEFAULT_QUEUE

TIME_FIELDS = (
    "pushed_at",
    "eta",
    "ready_at",
    "started_at",
    "finished_at",
    "lease_until",
    "scheduled_at",
    "cancel_requested_at",
)
SEP = "\x1f"  # between the parts of a counter field: event, task type, status


def time_str(value: float) -> str:
    """Exact text of a float (``repr`` round-trips)."""
    return repr(float(value))


def time_or_none(value: Any) -> float | None:
    """A stored time (string, number or null) as a float, None when absent or bad."""
    if value is None or isinstance(value, dict | list):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def new_record(
    *,
    task_id: str,
    task_type: str,
    priority: int,
    pushed_at: float,
    eta: float | None,
    schedule_id: Any,
    scheduled_at: Any,
    unique_key: str | None,
    queue: str | None = None,
) -> str:
    """The JSON of a record about to be pushed (status set by the script)."""
    sched_at = scheduled_at if isinstance(scheduled_at, int | float) else None
    return json.dumps(
        {
            "task_id": task_id,
            "type": task_type,
            "priority": priority,
            "status": None,
            "pushed_at": time_str(pushed_at),
            "eta": None if eta is None else time_str(eta),
            "attempts": 0,
            "seq": None,
            "ready_at": None,
            "started_at": None,
            "finished_at": None,
            "consumer": None,
            "node": None,
            "lease_until": None,
            "errors": [],
            "schedule_id": schedule_id if isinstance(schedule_id, str) else None,
            "scheduled_at": None if sched_at is None else time_str(sched_at),
            "unique_key": unique_key,
            "cancel_requested_at": None,
            "queue": queue,  # None: the push script routes it by type
        }
    )


def decode_raw(blob: bytes | str) -> dict[str, Any]:
    """A stored record with its times as floats and ``errors`` as a list."""
    rec: dict[str, Any] = json.loads(blob)
    for name in TIME_FIELDS:
        rec[name] = time_or_none(rec.get(name))
    errors = rec.get("errors")
    rec["errors"] = [
        {**e, "at": time_or_none(e.get("at"))} for e in (errors if isinstance(errors, list) else ())
    ]
    for name in ("schedule_id", "unique_key", "consumer", "node", "queue"):
        if isinstance(rec.get(name), dict | list):
            rec[name] = None
    return rec


def as_dict(rec: dict[str, Any], params: bytes | None, result: Any) -> dict[str, Any]:
    """The public record (the keys of ``TaskRecord.as_dict``)."""
    errors = [dict(e) for e in rec["errors"]]
    last = errors[-1] if errors else None
    return {
        "task_id": rec["task_id"],
        "type": rec["type"],
        "params": params or b"",
        "priority": rec["priority"],
        "status": rec["status"],
        "attempts": rec["attempts"],
        "pushed_at": rec["pushed_at"],
        "eta": rec["eta"],
        "started_at": rec["started_at"],
        "finished_at": rec["finished_at"],
        "consumer": rec.get("consumer"),
        "result": result,
        "errors": errors,
        "error": last["error"] if last else None,
        "traceback": last["traceback"] if last else None,
        "schedule_id": rec.get("schedule_id"),
        "scheduled_at": rec["scheduled_at"],
        "unique_key": rec.get("unique_key"),
        "cancel_requested_at": rec["cancel_requested_at"],
        "queue": rec.get("queue") or DEFAULT_QUEUE,
    }


def message(rec: dict[str, Any], params: bytes) -> dict[str, Any]:
    """What a consumer receives (``TaskRecord.message``)."""
    return {
        "task_id": rec["task_id"],
        "type": rec["type"],
        "params": params,
        "priority": rec["priority"],
        "attempt": rec["attempts"],
        "pushed_at": rec["pushed_at"],
        "scheduled_at": rec["scheduled_at"],
        "schedule_id": rec.get("schedule_id"),
        "queue": rec.get("queue") or DEFAULT_QUEUE,
    }


def message_of(blob: bytes | str, params: bytes) -> dict[str, Any]:
    """:func:`message` straight from a stored record, decoding only what a message carries
    (a worker does this for every task; :func:`decode_raw` converts every time and error)."""
    rec: dict[str, Any] = json.loads(blob)
    for name in ("pushed_at", "scheduled_at"):
        rec[name] = time_or_none(rec.get(name))
    for name in ("schedule_id", "queue"):
        if not isinstance(rec.get(name), str):
            rec[name] = None
    return message(rec, params)


def delivery(data: bytes) -> dict[str, Any]:
    """The message of a task taken for a parked consumer, from its mailbox:
    ``b"<length of the record json>\x1f<record json><params>"`` (see lua/common.lua)."""
    head, _, rest = data.partition(SEP.encode())
    n = int(head)
    return message_of(rest[:n], rest[n:])


def encode_result(value: Any) -> str:
    """A succeeded task's result as JSON (what is not JSON-able is kept as its ``repr``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(value, default=repr)


def decode_result(blob: bytes | None) -> Any:
    """A stored result (None when there is none)."""
    return None if blob is None else json.loads(blob)


def counter_key(field: bytes | str) -> tuple[str, str, str]:
    """A counter's hash field as (event, task type, status)."""
    text = field.decode() if isinstance(field, bytes) else field
    parts = text.split(SEP)
    while len(parts) < 3:
        parts.append("")
    return parts[0], parts[1], SEP.join(parts[2:])


def text(value: bytes | str | None) -> str:
    """A Redis reply as text ("" for None)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
