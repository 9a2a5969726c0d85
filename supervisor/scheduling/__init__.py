"""The scheduling core: schedule specs, fire-time policy and the SQL schedule store.

Pure and passive: nothing here runs on its own. The master drives it with
``ScheduleStore.next_due_at`` and ``ScheduleStore.claim_due``.
"""

from supervisor.scheduling.claim import FireOutcome
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import SCHEMA_VERSION, make_engine, migrate
from supervisor.scheduling.policy import (
    FireDecision,
    due_fires,
    first_fire,
    interval_anchor,
    next_fire_after,
    preview,
)
from supervisor.scheduling.spec import ScheduleSpec, make_spec, validate
from supervisor.scheduling.store import ScheduleStore, UpsertReport
from supervisor.scheduling.ticker import ScheduleTicker

__all__ = [
    "SCHEMA_VERSION",
    "FireDecision",
    "FireOutcome",
    "ScheduleError",
    "ScheduleSpec",
    "ScheduleStore",
    "ScheduleTicker",
    "UpsertReport",
    "due_fires",
    "first_fire",
    "interval_anchor",
    "make_engine",
    "make_spec",
    "migrate",
    "next_fire_after",
    "preview",
    "validate",
]
