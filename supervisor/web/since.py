"""``since`` values, shared by ``/api/tasks?since=`` and ``supervisor tasks list --since``.

Three forms, and nothing else (no spaces, signs or exponents):

* a duration ago with its unit: ``90s``, ``30m``, ``2h``, ``7d``, ``2w`` (decimals allowed);
* epoch seconds: ``1764750000`` or ``1764750000.5``;
* an ISO 8601 time: ``2026-12-03T10:00:00Z``, ``2026-12-03T10:00+01:00``; without an offset it
  is the local time of the process that parses it, as on the command line.

A bad value raises :class:`SinceError` naming the parameter and the forms expected (a negative
duration or epoch: "must be positive").
"""

from __future__ import annotations

import datetime as dt
import math
import re

from supervisor.errors import SupervisorError

__all__ = ["DURATION_PATTERN", "EPOCH_PATTERN", "SinceError", "parse_since"]

UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhdw]$"
EPOCH_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
_DURATION = re.compile(DURATION_PATTERN, re.ASCII)
_EPOCH = re.compile(EPOCH_PATTERN, re.ASCII)
# The start of an ISO date, so that fromisoformat's other spellings ('20261203') stay out.
_ISO_START = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_SHOWN = 60  # characters of a bad value quoted back


class SinceError(SupervisorError, ValueError):
    """A ``since`` value in none of the accepted forms."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def parse_since(text: str, *, now: float, name: str = "since") -> float:
    """``text`` as epoch seconds: ``now`` minus a duration, epoch seconds, or an ISO time.

    ``name`` is how the caller calls the value (``since``, ``--since``) in the error."""
    expected = (
        f"{name}: expected a duration with its unit (90s, 30m, 2h, 7d), epoch seconds "
        f"or an ISO 8601 time (2026-12-03T10:00:00Z), got {_shown(text)}"
    )
    if text[:1] == "-" and (_DURATION.fullmatch(text[1:]) or _EPOCH.fullmatch(text[1:])):
        raise SinceError(f"{name}: must be positive, got {_shown(text)}")
    if _DURATION.fullmatch(text):
        value = now - float(text[:-1]) * UNITS_S[text[-1]]
    elif _EPOCH.fullmatch(text):
        value = float(text)
    elif _ISO_START.match(text):
        try:
            when = dt.datetime.fromisoformat(text.replace("z", "Z"))
            if when.tzinfo is None:
                when = when.astimezone()
            value = when.timestamp()
        except (ValueError, OverflowError, OSError):
            raise SinceError(expected) from None
    else:
        raise SinceError(expected)
    if not math.isfinite(value):
        raise SinceError(expected)
    return value
