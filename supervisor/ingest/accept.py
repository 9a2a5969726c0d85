"""One batch of mapped messages into the broker: which are pushed, which are duplicates, which
the broker refuses (see :mod:`supervisor.ingest.consumer` for why this order loses nothing).

A message is looked up (``get_task``) when RabbitMQ flagged it redelivered, or when an earlier
try of this batch failed (the broker may have taken some); one the broker knows is a duplicate.
The others go in one ``push_many``; if the broker refuses it (a live id -- a producer sent it
twice, another node pushed it meanwhile --, a payload over its limit) they are pushed one by one,
and a ``DuplicateTaskId`` is a duplicate, any other ``TaskError`` a refusal with its reason.
A ``BrokerError`` (the broker is down) propagates: the caller holds the batch and tries again.
"""

from __future__ import annotations

from typing import Any

from supervisor.errors import DuplicateTaskId, TaskError
from supervisor.ingest.mapping import Accepted

Outcome = tuple[list[Accepted], list[Accepted], list[tuple[Accepted, str]]]
"""(pushed, duplicates, refused with the reason)"""


def accept(
    broker: Any, items: list[tuple[Accepted, bool]], mine: set[str], *, look_up_all: bool
) -> Outcome:
    """Push ``(task, redelivered)`` items; ``mine`` collects the ids pushed one by one, so that
    a retry after a failure counts them as pushed, not as duplicates."""
    pushed: list[Accepted] = []
    dups: list[Accepted] = []
    fresh: list[Accepted] = []
    seen: set[str] = set()
    for a, redelivered in items:
        if a.task_id in seen:
            dups.append(a)  # the same id twice in one batch (a producer's retry)
        elif (redelivered or look_up_all) and broker.get_task(a.task_id) is not None:
            (pushed if a.task_id in mine else dups).append(a)
        else:
            fresh.append(a)
        seen.add(a.task_id)
    if not fresh:
        return pushed, dups, []
    try:
        broker.push_many([a.message for a in fresh])
        return pushed + fresh, dups, []
    except TaskError:
        pass  # one of them is refused: find which, one by one
    refused: list[tuple[Accepted, str]] = []
    for a in fresh:
        try:
            broker.push(a.message)
        except DuplicateTaskId:
            dups.append(a)
            continue
        except TaskError as exc:
            refused.append((a, str(exc)))
            continue
        mine.add(a.task_id)
        pushed.append(a)
    return pushed, dups, refused
