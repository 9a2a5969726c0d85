"""Pure policy functions: backoff, the crash-loop breaker, recycle limits.

No I/O and no clocks of their own: callers pass ``now`` and a random source, so every decision
is unit-tested without processes.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


def compute_backoff(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1``, after ``attempt`` (>= 1) failed.

    Exponential ``base_s * 2**(attempt-1)`` capped at ``cap_s``; with ``jitter`` it is "full
    jitter" (uniform in ``[0, that]``), which spreads a thundering herd of retries apart.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    if not (base_s >= 0 and cap_s >= 0):  # also refuses NaN, which would make the delay NaN
        raise ValueError(f"base_s and cap_s must be >= 0, got {base_s}, {cap_s}")
    exponent = min(attempt - 1, 62)  # 2**62 * base overflows nothing and is past any cap
    ceiling = min(cap_s, base_s * (2.0**exponent))
    if not jitter:
        return ceiling
    return (rng or random).uniform(0.0, ceiling)


@dataclass
class RestartBreaker:
    """Trips when more than ``max_crashes`` worker crashes fall within ``window_s`` seconds.

    ``max_crashes <= 0`` disables it.
    """

    max_crashes: int
    window_s: float
    _times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Record one crash at ``now``; return True when the breaker trips."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return self.max_crashes > 0 and len(self._times) > self.max_crashes

    @property
    def recent(self) -> int:
        return len(self._times)


@dataclass
class SlotBackoff:
    """Per-slot respawn delay: grows with consecutive crashes, resets once the slot is healthy."""

    base_s: float = 0.1
    cap_s: float = 10.0
    failures: int = 0

    def crashed(self) -> float:
        """Count a crash; return how long to wait before forking the replacement."""
        self.failures += 1
        return compute_backoff(self.failures, base_s=self.base_s, cap_s=self.cap_s, jitter=False)

    def healthy(self) -> None:
        self.failures = 0


def recycle_after(max_tasks: int, jitter: int, rng: random.Random | None = None) -> int:
    """Number of tasks a worker runs before it is recycled (0 = never), gunicorn-style jitter."""
    if max_tasks <= 0:
        return 0
    return max_tasks + ((rng or random).randint(0, jitter) if jitter > 0 else 0)
