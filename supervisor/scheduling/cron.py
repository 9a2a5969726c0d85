"""Cron expressions in an IANA timezone, with explicit daylight-saving rules.

croniter does the calendar arithmetic; this module only decides how a *local wall-clock* time
that croniter matched becomes an instant (epoch seconds). croniter runs on naive local
datetimes, so its answer does not depend on how a given croniter release treats aware
datetimes at transitions, and the two DST rules are ours, stated once:

* **Spring forward (a skipped local hour).** A matched local time that does not exist is not
  invented: it fires at the first instant after the gap (03:00 local for a 02:30 daily cron in
  Europe/Berlin on the last Sunday of March) -- the same time croniter 7 gives for a daily job.
  Several matches inside one gap (``*/15 * * * *``) fire once at that instant, never several.
* **Fall back (a repeated local hour).** A matched local time that occurs twice fires once, at
  its first occurrence. A ``*/5 * * * *`` schedule therefore pauses during the second pass of
  the repeated hour: every local time it names still fires exactly once.

Expressions have 5 fields (``minute hour day-of-month month day-of-week``) or 6 with a leading
seconds field (``second minute hour day-of-month month day-of-week``, as Quartz, Spring and
node-cron write it). croniter wants the seconds field last; :func:`croniter_form` moves it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from supervisor.scheduling.errors import ScheduleError

CRON_FORMS = (
    "5 fields 'minute hour day-of-month month day-of-week' or "
    "6 fields 'second minute hour day-of-month month day-of-week'"
)
# Upper bound on croniter steps without a new fire time. Only reached by a per-second
# expression while skipping the repeated hour of a fall-back day (3,600 steps), or by one
# that never matches.
_MAX_STEPS = 10_000


@functools.lru_cache(maxsize=4096)
def croniter_form(expression: str) -> str:
    """Return ``expression`` in croniter's field order; raise ScheduleError if malformed.

    Only the field count and order are handled here; croniter validates the fields.
    """
    if not isinstance(expression, str):
        raise ScheduleError(
            f"cron_expression must be a string ({CRON_FORMS}), got {expression!r}",
            field="cron_expression",
        )
    fields = expression.split()
    if len(fields) == 6:
        fields = [*fields[1:], fields[0]]
    elif len(fields) != 5:
        raise ScheduleError(
            f"cron_expression {expression!r} has {len(fields)} fields; expected {CRON_FORMS}",
            field="cron_expression",
        )
    form = " ".join(fields)
    try:
        croniter(form, datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(
            f"cron_expression {expression!r} is invalid ({exc}); expected {CRON_FORMS}",
            field="cron_expression",
        ) from exc
    return form


def wall_to_epoch(local: datetime, tz: ZoneInfo) -> float:
    """Instant of the naive local time ``local`` in ``tz`` under the module's DST rules.

    An ambiguous time maps to its first occurrence; a non-existent one to the first instant
    after the gap.
    """
    naive = local.replace(tzinfo=None, fold=0)
    first = naive.replace(tzinfo=tz).timestamp()
    if datetime.fromtimestamp(first, tz).replace(tzinfo=None, fold=0) == naive:
        return first
    # In a gap: fold=0 and fold=1 read the time with the offsets before and after the
    # transition, so the transition instant lies between the two readings. Bisect on seconds.
    other = naive.replace(tzinfo=tz, fold=1).timestamp()
    lo, hi = int(min(first, other)), math.ceil(max(first, other))
    new_offset = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == new_offset:
            hi = mid
        else:
            lo = mid
    return float(hi)


def cron_iter(
    form: str, tz: ZoneInfo, after_epoch: float, *, inclusive: bool = False
) -> Iterator[float]:
    """Fire times of croniter expression ``form`` in ``tz``, ascending, after ``after_epoch``.

    Strictly after it, or at-or-after it with ``inclusive``. Fire times are whole seconds. Ends
    when the expression never matches again (``0 0 30 2 *``).
    """
    # Fire instants are whole seconds (gap ends too), so "> after" is "> floor(after)" and
    # ">= after" is "> ceil(after) - 1"; croniter's get_next is strictly after its start.
    last: float = math.ceil(after_epoch) - 1 if inclusive else math.floor(after_epoch)
    start = datetime.fromtimestamp(last, tz).replace(tzinfo=None, fold=0)
    it = croniter(form, start)
    idle = 0
    while idle < _MAX_STEPS:
        try:
            local = it.get_next(datetime)
        except CroniterBadDateError:
            return
        instant = wall_to_epoch(local, tz)
        # Skips the second pass of a repeated hour (its local times map to the first pass)
        # and the several matches of one gap that all map to the same instant.
        if instant > last:
            idle, last = 0, instant
            yield instant
        else:
            idle += 1


def cron_next(
    form: str, tz: ZoneInfo, after_epoch: float, *, inclusive: bool = False
) -> float | None:
    """The first fire time of :func:`cron_iter`, or None when there is none."""
    return next(cron_iter(form, tz, after_epoch, inclusive=inclusive), None)
