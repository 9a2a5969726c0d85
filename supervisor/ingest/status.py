"""The ingest child's counters, its lag, and the status document it publishes (pure).

Lag: each message's age when we take it, ``now - sent`` (``sent``: its AMQP ``timestamp``,
whole seconds, else when we received it; see :func:`supervisor.ingest.mapping.sent_at`), kept
as a moving maximum over the last ``window_s`` seconds; plus, while a batch is held (our broker
is down and we retry), the age of its oldest message, which grows until the batch is accepted.
0 when nothing came and nothing is held. The AMQP timestamp has a resolution of one second, so a
lag below a second reads as 0 or 1.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

KIND = "ingest"
WINDOW_S = 10.0


def component_name(node: str, queue: str) -> str:
    """The status board name of one ingest: unique across the cluster (node, then queue)."""
    return f"ingest:{node}:{queue}"


@dataclass
class LagWindow:
    """Moving maximum of ages over the last ``window_s`` seconds (one slot per second)."""

    window_s: float = WINDOW_S
    _slots: deque[tuple[int, float]] = field(default_factory=deque)  # (second, max age)

    def record(self, age_s: float, now: float) -> None:
        second = math.floor(now)
        age = max(0.0, age_s)
        if self._slots and self._slots[-1][0] == second:
            self._slots[-1] = (second, max(self._slots[-1][1], age))
        else:
            self._slots.append((second, age))
        self._expire(now)

    def value(self, now: float) -> float:
        self._expire(now)
        return max((age for _, age in self._slots), default=0.0)

    def _expire(self, now: float) -> None:
        while self._slots and self._slots[0][0] <= now - self.window_s:
            self._slots.popleft()


@dataclass
class IngestStats:
    """Cumulative counts (since the first ingest child of this node and queue: a restarted
    child continues from its last published document)."""

    ingested: int = 0  # tasks accepted by our broker
    duplicates: int = 0  # messages whose task id our broker already had (acked, not pushed)
    rejected: int = 0  # messages dead-lettered
    lag: LagWindow = field(default_factory=LagWindow)
    held_since: float | None = None  # sent time of the oldest message of a held batch

    def resume(self, previous: dict[str, Any] | None) -> None:
        """Continue from a previous document of the same name (a restarted child)."""
        if not previous or previous.get("kind") != KIND:
            return
        for name in ("ingested", "duplicates", "rejected"):
            value = previous.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, name, value)

    def lag_s(self, now: float) -> float:
        held = 0.0 if self.held_since is None else max(0.0, now - self.held_since)
        return round(max(self.lag.value(now), held), 3)


def status_doc(
    *, node: str, queue: str, url: str, stats: IngestStats, connected: bool, now: float
) -> dict[str, Any]:
    """The document published under :func:`component_name` (``url`` already masked)."""
    return {
        "kind": KIND,
        "node": node,
        "queue": queue,
        "url": url,
        "ingested": stats.ingested,
        "duplicates": stats.duplicates,
        "rejected": stats.rejected,
        "lag_s": stats.lag_s(now),
        "connected": connected,
    }
