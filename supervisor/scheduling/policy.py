"""When a schedule fires: pure functions, no I/O, the clock passed in.

* :func:`next_fire_after` / :func:`first_fire` -- the fire time after (or at-or-after) a time.
* :func:`due_fires` -- given a schedule whose ``next_run_at`` may lie in the past (the master
  was down or busy), which due times fire now, which are skipped, and the new ``next_run_at``.
* :func:`preview` -- the next ``n`` fire times (``supervisor schedules next ID -n 10``).

Interval fire times are ``anchor + k * interval_seconds`` (k >= 0) where the anchor is
``start_at`` or, for a stored schedule, the ``anchor_epoch`` the store recorded at creation
(creation time + one interval). Lateness never shifts later fire times, so they do not drift.

Misfire policies. A *missed* due time is one at or before ``now``; it is *within grace* when
``now - due <= misfire_grace_s``. Normally (an idle master) exactly one due time is missed, by
milliseconds, and every policy fires it. After an outage:

* ``skip`` -- due times past grace are dropped; those within grace fire (at most
  ``misfire_max_catchup``, the most recent ones). Pair it with a grace that says how late a
  run may still be useful.
* ``once`` (default) -- one run for all missed due times, scheduled at the most recent one,
  however late: one catch-up run after any outage, never a burst.
* ``all`` -- every missed due time fires, capped at the ``misfire_max_catchup`` most recent.

Then ``max_instances`` (with ``overlap="skip"``) keeps only as many of those runs as there are
free instances, and ``max_runs`` stops the schedule when its budget is spent.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from supervisor.scheduling.cron import cron_iter, cron_next, croniter_form
from supervisor.scheduling.spec import ScheduleSpec

# A cron schedule missed for very long (a per-second expression down for a day) is not walked
# one due time at a time past this many steps; its misfire count is then a lower bound.
_MAX_SCAN = 5_000


@dataclass(frozen=True)
class FireDecision:
    """What :func:`due_fires` decided for one schedule at ``now``.

    ``fire``: due times to push now, ascending. ``misfired``: due times dropped as too late or
    over the catch-up cap; ``coalesced``: due times folded into the one ``once`` run;
    ``overlapped``: runs dropped because ``max_instances`` were busy. ``next_run_at`` is the
    next due time to store (None when ``finished``: the schedule will never fire again).
    """

    fire: tuple[float, ...] = ()
    misfired: int = 0
    coalesced: int = 0
    overlapped: int = 0
    next_run_at: float | None = None
    finished: bool = False

    @property
    def skipped(self) -> int:
        """Due times that will never fire."""
        return self.misfired + self.coalesced + self.overlapped


def interval_anchor(spec: ScheduleSpec, created_at: float) -> float | None:
    """The anchor a store records for an interval schedule created at ``created_at``."""
    if spec.schedule_type != "interval" or spec.interval_seconds is None:
        return None
    return spec.start_at if spec.start_at is not None else created_at + spec.interval_seconds


def next_fire_after(
    spec: ScheduleSpec, after_epoch: float, *, anchor_epoch: float | None = None
) -> float | None:
    """The first fire time strictly after ``after_epoch``; None when there is none.

    Respects ``start_at`` and ``end_at``. Without ``start_at`` or ``anchor_epoch`` an interval
    schedule is anchored one interval after ``after_epoch`` (a schedule created then).
    """
    return _next(spec, after_epoch, inclusive=False, anchor=anchor_epoch)


def first_fire(
    spec: ScheduleSpec, now: float, *, anchor_epoch: float | None = None
) -> float | None:
    """The first fire time at or after ``now``: ``next_run_at`` at creation or resume."""
    return _next(spec, now, inclusive=True, anchor=anchor_epoch)


def preview(
    spec: ScheduleSpec, after: float, n: int, *, anchor_epoch: float | None = None
) -> list[float]:
    """The next ``n`` fire times strictly after ``after`` (fewer if the schedule ends)."""
    times: list[float] = []
    t: float | None = after
    while len(times) < n and t is not None:
        t = next_fire_after(spec, t, anchor_epoch=anchor_epoch)
        if t is not None:
            times.append(t)
    return times


def _next(spec: ScheduleSpec, t: float, *, inclusive: bool, anchor: float | None) -> float | None:
    if spec.start_at is not None and t < spec.start_at:
        t, inclusive = spec.start_at, True
    found: float | None
    if spec.schedule_type == "once":
        at = spec.execute_at
        found = at if at is not None and (at > t or (inclusive and at == t)) else None
    elif spec.schedule_type == "interval":
        step = float(spec.interval_seconds or 0)
        base = spec.start_at if spec.start_at is not None else anchor
        found = _interval_next(t + step if base is None else base, step, t, inclusive)
    else:
        found = cron_next(
            croniter_form(spec.cron_expression or ""), spec.zone(), t, inclusive=inclusive
        )
    if found is not None and spec.end_at is not None and found > spec.end_at:
        return None
    return found


def _interval_next(base: float, step: float, t: float, inclusive: bool) -> float:
    def ok(x: float) -> bool:
        return x >= t if inclusive else x > t

    k = max(0, math.ceil((t - base) / step))
    # Float division can be off by one either way; settle on the smallest k that is ok.
    while not ok(base + k * step):
        k += 1
    while k > 0 and ok(base + (k - 1) * step):
        k -= 1
    return base + k * step


def due_fires(
    spec: ScheduleSpec,
    next_run_at: float | None,
    now: float,
    *,
    anchor_epoch: float | None = None,
    runs_done: int = 0,
    active_instances: int = 0,
) -> FireDecision:
    """Decide which due times of ``spec`` fire at ``now`` (see the module docstring).

    ``next_run_at`` is the stored next due time (it may lie far in the past), ``runs_done``
    the stored run count (for ``max_runs``), ``active_instances`` how many runs of this
    schedule are still queued or running. Pure: the same inputs give the same decision.
    """
    if next_run_at is None:
        return FireDecision(finished=True)
    if next_run_at > now:
        return FireDecision(next_run_at=next_run_at)
    limit = now if spec.end_at is None else min(now, spec.end_at)
    keep = max(1, spec.misfire_max_catchup)
    total, recent, after = _missed(spec, next_run_at, limit, keep, anchor_epoch)
    fire: list[float]
    coalesced = 0
    if total == 0:
        fire = []
    elif spec.misfire_policy == "once":
        fire, coalesced = [recent[-1]], total - 1
    elif spec.misfire_policy == "skip":
        fire = [d for d in recent if now - d <= spec.misfire_grace_s]
    else:
        fire = list(recent)
    misfired = total - len(fire) - coalesced
    overlapped = 0
    if spec.overlap == "skip":
        room = max(0, spec.max_instances - active_instances)
        overlapped = max(0, len(fire) - room)
        fire = fire[overlapped:]  # keep the most recent runs
    budget_left = spec.max_runs - runs_done if spec.max_runs > 0 else None
    if budget_left is not None:
        fire = fire[: max(0, budget_left)]  # runs past the budget are not runs at all
    # The fire time after the last missed one is the next after ``now`` when it lies past
    # ``now`` (nothing fires in between): saves a second croniter walk on every fire.
    nxt = (
        after
        if after is not None and after > now
        else next_fire_after(spec, now, anchor_epoch=anchor_epoch)
    )
    finished = nxt is None or (budget_left is not None and len(fire) >= budget_left)
    return FireDecision(
        fire=tuple(fire),
        misfired=misfired,
        coalesced=coalesced,
        overlapped=overlapped,
        next_run_at=None if finished else nxt,
        finished=finished,
    )


def _missed(
    spec: ScheduleSpec, first: float, limit: float, keep: int, anchor: float | None
) -> tuple[int, list[float], float | None]:
    """Count the due times in ``[first, limit]`` (``first`` is one) and list the ``keep`` latest.

    The count is exact for interval and once schedules, and a lower bound for a cron schedule
    with more than ``_MAX_SCAN`` missed due times. The third value is the fire time right after
    the last one listed, when it was computed on the way (else None).
    """
    if first > limit:
        return 0, [], None
    nxt = next_fire_after(spec, first, anchor_epoch=anchor)
    if nxt is None or nxt > limit:
        return 1, [first], nxt
    if spec.schedule_type == "interval" and spec.interval_seconds:
        step = float(spec.interval_seconds)
        n = int((limit - nxt) // step) + 1  # due times nxt + j * step <= limit, j < n
        while n > 0 and nxt + (n - 1) * step > limit:
            n -= 1
        while nxt + n * step <= limit:
            n += 1
        latest = [first] + [nxt + j * step for j in range(max(0, n - keep), n)]
        return 1 + n, latest[-keep:], None
    recent: deque[float] = deque([first], maxlen=keep)
    total, t = 1, first
    for t in _fires_after(spec, first, anchor):
        if t > limit:
            return total, list(recent), None
        if total >= _MAX_SCAN:
            break
        recent.append(t)
        total += 1
    else:
        return total, list(recent), None
    # Too many to walk one by one: look back from ``limit`` over a window sized from the mean
    # spacing so far, widening it until it holds ``keep`` due times.
    span = (t - first) / total * keep
    while True:
        lo = max(t, limit - span)
        window = list(
            itertools.takewhile(
                lambda x: x <= limit, itertools.islice(_fires_after(spec, lo, anchor), _MAX_SCAN)
            )
        )
        if len(window) >= keep or lo == t:
            return total + len(window), window[-keep:], None
        span *= 4


def _fires_after(spec: ScheduleSpec, after: float, anchor: float | None) -> Iterator[float]:
    """Fire times strictly after ``after``, ascending (cron reuses one croniter walk)."""
    if spec.schedule_type == "cron":
        for fire_at in cron_iter(croniter_form(spec.cron_expression or ""), spec.zone(), after):
            if spec.end_at is not None and fire_at > spec.end_at:
                return
            yield fire_at
        return
    t = next_fire_after(spec, after, anchor_epoch=anchor)
    while t is not None:
        yield t
        t = next_fire_after(spec, t, anchor_epoch=anchor)
