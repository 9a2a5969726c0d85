"""The master's scheduler step: wake times and backoff on database errors (fake store)."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import pytest
from sqlalchemy.exc import OperationalError

from supervisor.scheduling import ScheduleStore
from supervisor.scheduling.ticker import ScheduleTicker

pytestmark = pytest.mark.timeout(30)


class FakeStore:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.next_due: float | None = None
        self.broken = False
        self.claims: list[float] = []

    def claim_due(self, now: float, fire: Any, **options: Any) -> list[Any]:
        if self.broken:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        self.claims.append(now)
        return []

    def next_due_at(self) -> float | None:
        return self.next_due


def ticker(store: FakeStore) -> ScheduleTicker:
    return ScheduleTicker(
        cast(ScheduleStore, store),
        lambda task: None,
        max_sleep_s=1.0,
        backoff_base_s=0.5,
        backoff_cap_s=4.0,
    )


def test_wakes_at_the_next_due_time_or_within_a_second() -> None:
    store = FakeStore()
    tick = ticker(store)
    assert tick.tick(100.0) == 101.0  # nothing scheduled: look again in a second
    store.next_due = 100.25
    assert tick.tick(100.0) == 100.25
    store.next_due = 99.0  # overdue (claimed by someone else meanwhile): now, not the past
    assert tick.tick(100.0) == 100.0


def test_database_errors_back_off_exponentially_then_recover() -> None:
    store = FakeStore()
    tick = ticker(store)
    store.broken = True
    assert tick.tick(100.0) == 100.5
    assert tick.tick(100.2) == 100.5  # not retried before the backoff ends
    assert tick.tick(100.5) == 101.5
    assert tick.tick(101.5) == 103.5
    assert tick.tick(103.5) == 107.5  # capped at 4 s
    assert tick.failures == 4
    store.broken = False
    assert tick.tick(107.5) == 108.5
    assert tick.failures == 0 and store.claims == [107.5]


def test_a_busy_claim_counts_as_a_failed_tick() -> None:
    store = FakeStore()
    tick = ticker(store)

    def busy(now: float, fire: Any, **options: Any) -> list[Any]:
        store.counters["db_error"] += 1
        return []

    store.claim_due = busy  # type: ignore[method-assign]
    assert tick.tick(10.0) == 10.5
