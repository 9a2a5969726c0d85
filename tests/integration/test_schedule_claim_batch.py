"""Batched claims (SQLite and PostgreSQL): many due schedules per transaction, each at most once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from supervisor.errors import DatabaseBusy, UnknownTaskType
from supervisor.scheduling import ScheduleStore, make_engine
from supervisor.scheduling.models import schedule_fire
from tests.integration.test_schedule_backends import BACKENDS, backend_url

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[ScheduleStore]:
    made = ScheduleStore(make_engine(db_url), clock=lambda: T0 + 10)
    made.migrate()
    yield made
    made._engine.dispose()


def add_many(store: ScheduleStore, n: int, every: float = 10, **kw: Any) -> list[str]:
    """``n`` schedules first due at T0 + 10 (the stores' clock reads T0 + 10)."""
    return [
        store.add_scheduler_task(
            name=f"s{k}",
            task_type="t",
            schedule_type="interval",
            interval_seconds=every,
            start_at=T0 + 10,
            **kw,
        )
        for k in range(n)
    ]


def statuses(store: ScheduleStore) -> dict[str, int]:
    with store._engine.connect() as conn:
        rows = conn.execute(
            sa.select(schedule_fire.c.status, sa.func.count()).group_by(schedule_fire.c.status)
        ).all()
    return {status: n for status, n in rows}


def test_a_burst_is_claimed_in_a_few_transactions(store: ScheduleStore) -> None:
    add_many(store, 250)
    begins: list[int] = []
    event.listen(store._engine, "begin", lambda conn: begins.append(1))
    batches: list[int] = []

    def fire_many(tasks: list[dict[str, Any]]) -> list[BaseException | None]:
        batches.append(len(tasks))
        return [None] * len(tasks)

    outcomes = store.claim_due(T0 + 10, lambda t: None, batch_size=100, fire_many=fire_many)
    assert len(outcomes) == 250 and all(o.pushed for o in outcomes)
    assert batches == [100, 100, 50]
    assert len(begins) <= 4 + 1  # three claims and one mark (+ the read of the due ids)
    assert statuses(store) == {"pushed": 250}
    assert store.claim_due(T0 + 10, lambda t: None) == []
    assert {t["run_count"] for t in store.list_tasks()} == {1}


def test_per_message_push_failures_are_kept_apart(store: ScheduleStore) -> None:
    ids = add_many(store, 3)

    def fire_many(tasks: list[dict[str, Any]]) -> list[BaseException | None]:
        by_id = {t["schedule_id"]: i for i, t in enumerate(tasks)}
        errors: list[BaseException | None] = [None] * len(tasks)
        errors[by_id[ids[0]]] = ConnectionError("broker gone")
        errors[by_id[ids[1]]] = UnknownTaskType("task type 't' is not registered; known: x")
        return errors

    outcomes = store.claim_due(T0 + 10, lambda t: None, fire_many=fire_many)
    by = {o.schedule_id: o for o in outcomes}
    assert (by[ids[0]].status, by[ids[1]].status, by[ids[2]].status) == (
        "failed",
        "dropped",
        "pushed",
    )
    assert statuses(store) == {"failed": 1, "dropped": 1, "pushed": 1}
    retried: list[dict[str, Any]] = []
    store.retry_unpushed(retried.append, min_age_s=0)  # only the retryable one comes back
    assert [t["schedule_id"] for t in retried] == [ids[0]]


def test_a_row_taken_by_another_scheduler_mid_batch(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain engines (no SQLite write lock up front): B claims one schedule of A's batch while
    A decides; A's batch rolls back and is claimed one by one. Each due time fires once."""
    from supervisor.scheduling import claim

    plain = [sa.create_engine(db_url), sa.create_engine(db_url)]
    try:
        a, b = (ScheduleStore(e, clock=lambda: T0 + 10) for e in plain)
        a.migrate()
        add_many(a, 3)
        pushed: list[dict[str, Any]] = []
        real = claim.plan_row
        nested: list[bool] = []

        def interleave(*args: Any, **kw: Any) -> Any:
            if not nested:
                nested.append(True)
                b.claim_due(T0 + 10, pushed.append, limit=1)
            return real(*args, **kw)

        monkeypatch.setattr(claim, "plan_row", interleave)
        a.claim_due(T0 + 10, pushed.append, batch_size=3)
        keys = [(t["schedule_id"], t["scheduled_at"]) for t in pushed]
        assert len(keys) == 3 and len(set(keys)) == 3
        if db_url.startswith("sqlite"):
            assert (a.counters["fired"], b.counters["fired"]) == (2, 1)
        else:  # B skipped the rows A had locked
            assert (a.counters["fired"], b.counters["fired"]) == (3, 0)
    finally:
        for engine in plain:
            engine.dispose()


def test_tick_limit_leaves_the_rest_due(store: ScheduleStore) -> None:
    add_many(store, 30)
    first = store.claim_due(T0 + 10, lambda t: None, limit=20, batch_size=8)
    assert len(first) == 20
    assert store.next_due_at() == T0 + 10  # the caller steps again at once
    assert len(store.claim_due(T0 + 10, lambda t: None, limit=20)) == 10


def test_overlap_is_asked_only_for_skip_schedules(store: ScheduleStore) -> None:
    skip = add_many(store, 2)
    queue = store.add_scheduler_task(
        name="q",
        task_type="t",
        schedule_type="interval",
        interval_seconds=10,
        start_at=T0 + 10,
        overlap="queue",
    )
    asked: list[str] = []

    def active(sid: str) -> int:
        asked.append(sid)
        return 1 if sid == skip[0] else 0

    outcomes = store.claim_due(T0 + 10, lambda t: None, active_instances=active)
    assert asked == [] and len(outcomes) == 3  # none ran before: none can be live
    outcomes = store.claim_due(T0 + 20, lambda t: None, active_instances=active)
    assert sorted(asked) == sorted(skip)
    assert sorted(o.schedule_id for o in outcomes) == sorted([skip[1], queue])
    assert store.counters["overlapped"] == 1


def test_old_settled_fire_records_are_pruned(store: ScheduleStore) -> None:
    ids = add_many(store, 3)
    store.claim_due(T0 + 10, lambda t: None)  # three 'pushed' records claimed at T0 + 10
    with store._engine.begin() as conn:  # one left 'claimed' by a crash
        conn.execute(
            sa.update(schedule_fire)
            .where(schedule_fire.c.schedule_id == ids[0])
            .values(status="claimed")
        )
    assert store.prune_fires(T0 + 10) == 0  # not older than the cut
    assert store.prune_fires(T0 + 11, batch=1) == 1
    assert store.prune_fires(T0 + 11) == 1
    assert statuses(store) == {"claimed": 1}


def test_recovery_waits_when_the_broker_cannot_tell_if_a_fire_was_pushed(
    store: ScheduleStore,
) -> None:
    """The broker's task table is locked: pushing again could run a due time twice, so the
    fire stays claimed and is settled at a later call."""
    [sid] = add_many(store, 1)

    def broker_gone(task: dict[str, Any]) -> None:
        raise ConnectionError("broker gone")

    store.claim_due(T0 + 10, broker_gone)
    assert statuses(store) == {"failed": 1}

    def busy(task_id: str) -> bool:
        raise DatabaseBusy("the task table is locked by another process")

    pushed: list[dict[str, Any]] = []
    assert store.retry_unpushed(pushed.append, min_age_s=0, known=busy) == []
    assert pushed == [] and statuses(store) == {"claimed": 1}
    assert store.counters["undecided"] == 1
    store.retry_unpushed(pushed.append, min_age_s=0, known=lambda task_id: False)
    assert [t["schedule_id"] for t in pushed] == [sid] and statuses(store) == {"pushed": 1}
