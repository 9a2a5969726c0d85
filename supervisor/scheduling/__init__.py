"""Scheduling: schedule specs, fire-time policy, the SQL schedule store, and its API.

Importing it starts nothing. The scheduler process (:mod:`supervisor.scheduling.process`,
forked by the master) fires due schedules; any process manages them with
:func:`get_scheduler` (the seed's API) or ``supervisor schedules ...``.
"""

from supervisor.db import make_engine
from supervisor.scheduling.claim import FireOutcome
from supervisor.scheduling.client import Scheduler, get_scheduler
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.models import SCHEMA_VERSION, migrate
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
    "Scheduler",
    "UpsertReport",
    "due_fires",
    "first_fire",
    "get_scheduler",
    "interval_anchor",
    "make_engine",
    "make_spec",
    "migrate",
    "next_fire_after",
    "preview",
    "validate",
]
