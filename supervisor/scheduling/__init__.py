"""Scheduling: schedule specs, fire-time policy, the SQL schedule store, and its API.

Importing it starts nothing. The scheduler process (:mod:`supervisor.scheduling.process`,
forked by the master) fires due schedules; any process manages them with
:func:`get_scheduler` (the seed's API) or ``supervisor schedules ...``.

The modules, by role (each imports only those above it or beside it, never in a cycle):

* what a schedule is -- ``spec`` (the dataclass), ``cron`` (cron and DST), ``errors``;
* when it fires -- ``policy`` (pure functions); whether it can be stored -- ``validation``;
  where it is declared -- ``config`` (the TOML file and the app's ``SCHEDULES``);
* the database -- ``models`` (tables, migration), ``rows`` (row <-> spec), ``writes`` (one row
  in a transaction), ``queries`` (bookkeeping), ``upsert`` (config schedules by name),
  ``store`` (:class:`ScheduleStore`, the facade), ``client`` (the seed's ``get_scheduler``);
* firing -- ``claim`` (the claim transaction), ``plan`` (per-row decision and its log),
  ``fires`` (push after commit, fire-row outcome), ``recover`` (fires left unpushed),
  ``ticker`` (one tick), ``pusher`` (into the broker), ``status`` (the status document);
* the process -- ``service`` (one step, no process state), ``process`` (the forked child),
  ``wake`` (pokes from other processes).
"""

from supervisor.db import make_engine
from supervisor.scheduling.client import Scheduler, get_scheduler
from supervisor.scheduling.errors import ScheduleError
from supervisor.scheduling.fires import FireOutcome
from supervisor.scheduling.models import SCHEMA_VERSION, migrate
from supervisor.scheduling.policy import (
    FireDecision,
    due_fires,
    first_fire,
    interval_anchor,
    next_fire_after,
    preview,
)
from supervisor.scheduling.spec import ScheduleSpec, make_spec
from supervisor.scheduling.store import ScheduleStore
from supervisor.scheduling.ticker import ScheduleTicker
from supervisor.scheduling.upsert import UpsertReport
from supervisor.scheduling.validation import validate

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
