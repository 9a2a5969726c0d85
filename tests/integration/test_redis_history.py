"""Task history from Redis into the SQL task table (SQLite and PostgreSQL): every change is
written, one writer at a time across nodes, and nothing is lost when a writer goes away."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.tasktable import TaskTable
from supervisor.broker.redis import RedisBroker
from supervisor.broker.redis.history import HistoryWriter
from supervisor.broker.redis.keys import Keys
from supervisor.db import make_engine
from supervisor.registry import TaskOptions
from tests.helpers import wait_until
from tests.integration.test_schedule_backends import backend_url
from tests.redisserver import RedisServer
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(60)
W = "worker:0:1"
OPTS = TaskOptions(max_retries=1, backoff_base_s=1.0, backoff_cap_s=1.0, timeout_s=10.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskTable]:
    with backend_url(request.param, tmp_path) as url:
        t = TaskTable(make_engine(url))
        t.migrate()
        yield t
        t.close()
        t.engine.dispose()


@pytest.fixture
def prefix() -> str:
    return f"h{uuid.uuid4().hex[:10]}"


def broker(
    redis_server: RedisServer, prefix: str, clock: FakeClock, node: str = "a"
) -> RedisBroker:
    return RedisBroker(
        url=redis_server.url,
        prefix=prefix,
        node=node,
        clock=clock,
        rng=random.Random(0),
        task_types={"t": OPTS},
    )


def writer(b: RedisBroker, prefix: str, table: TaskTable, node: str, **kw: Any) -> HistoryWriter:
    return HistoryWriter(b._client, Keys(prefix), table, node=node, **kw)


def test_every_change_reaches_the_table(
    redis_server: RedisServer, prefix: str, table: TaskTable
) -> None:
    clock = FakeClock()
    b = broker(redis_server, prefix, clock)
    ok, bad, waiting = (b.push({"type": "t", "params": b"p", "task_id": i}) for i in "xyz")
    b.report(W, (b.pop(W)["task_id"], base.SUCCEEDED, {"n": 1}))
    b.report(W, (b.pop(W)["task_id"], "failed", {"reason": "error", "error": "boom"}))
    w = writer(b, prefix, table, "a")
    assert w.drain() > 0
    rows = {r.task_id: r for r in table.query(limit=10)}
    assert rows[ok].status == base.SUCCEEDED and rows[ok].result == {"n": 1}
    assert rows[bad].status == base.RETRYING and rows[bad].errors[-1]["error"] == "boom"
    assert rows[waiting].status == base.QUEUED and rows[waiting].params == b"p"
    clock.advance(5)
    b.report(W, (b.pop(W)["task_id"], base.SUCCEEDED, None))  # z, queued before y came back
    b.report(W, (b.pop(W)["task_id"], "failed", {"reason": "error", "error": "again"}))
    w.drain()
    assert table.get(bad).status == base.DEAD and len(table.get(bad).errors) == 2
    assert b._client.xlen(Keys(prefix).name("events")) == 0  # acknowledged and deleted


def test_one_writer_at_a_time_and_the_next_one_takes_over(
    redis_server: RedisServer, prefix: str, table: TaskTable
) -> None:
    clock = FakeClock()
    b = broker(redis_server, prefix, clock)
    first = writer(b, prefix, table, "a", lock_s=0.3, claim_idle_s=0.2)
    second = writer(b, prefix, table, "b", lock_s=0.3, claim_idle_s=0.2)
    b.push({"type": "t", "params": b"", "task_id": "one"})
    assert first.leads() and not second.leads()
    assert second.step(block_ms=1) == 0  # not the writer: nothing read
    # "a" reads a batch and dies before writing it: its entries stay pending in the group.
    first._ensure_group()
    got = b._client.xreadgroup("history", "a", {Keys(prefix).name("events"): ">"}, count=10)
    assert got and got[0][1]
    b.push({"type": "t", "params": b"", "task_id": "two"})
    wait_until(lambda: second.step(block_ms=1) > 0, 10, what="the second writer to take over")
    second.drain()
    assert {r.task_id for r in table.query(limit=10)} == {"one", "two"}


def test_a_failed_upsert_keeps_the_entries_for_the_next_step(
    redis_server: RedisServer, prefix: str, table: TaskTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = broker(redis_server, prefix, FakeClock())
    b.push({"type": "t", "params": b"", "task_id": "kept"})
    w = writer(b, prefix, table, "a")

    def down(rows: Any) -> None:
        raise RuntimeError("the database is unreachable")

    monkeypatch.setattr(table, "upsert", down)
    with pytest.raises(RuntimeError):
        w.step(block_ms=1)
    monkeypatch.undo()
    assert w.drain() == 1
    assert table.get("kept").status == base.QUEUED


def test_finished_records_leave_redis_once_in_the_table_and_the_table_answers(
    redis_server: RedisServer, prefix: str, table: TaskTable
) -> None:
    clock = FakeClock()
    b = broker(redis_server, prefix, clock)
    b._history = table  # what a node's handles get: the table answers for what left Redis
    done_id, live_id = (b.push({"type": "t", "params": b"p", "task_id": i}) for i in "dl")
    m = b.pop(W)
    assert m is not None and m["task_id"] == done_id
    b.report(W, (done_id, base.SUCCEEDED, {"n": 1}))
    w = writer(b, prefix, table, "a", keep_finished_s=60.0, clock=clock)
    w.drain()
    clock.advance(30)
    b.maintain()
    assert b._client.hexists(Keys(prefix).name("task"), done_id)  # within keep_finished_s
    clock.advance(31)
    assert b.maintain()["records_expired"] == 1
    assert not b._client.hexists(Keys(prefix).name("task"), done_id)  # Redis: live state only
    rec = b.get_task(done_id)
    assert rec is not None and rec["status"] == base.SUCCEEDED and rec["result"] == {"n": 1}
    listed = [r["task_id"] for r in b.list_tasks()]
    assert listed == [live_id, done_id]  # newest first, Redis and the table merged
    assert [r["task_id"] for r in b.list_tasks(status=base.SUCCEEDED)] == [done_id]
    assert b.get_task(live_id)["status"] == base.QUEUED  # type: ignore[index]
    assert b.get_task("never") is None


def test_a_record_pushed_again_is_not_cut_short(
    redis_server: RedisServer, prefix: str, table: TaskTable
) -> None:
    clock = FakeClock()
    b = broker(redis_server, prefix, clock)
    b.push({"type": "t", "params": b"p", "task_id": "again"})
    b.report(W, (b.pop(W)["task_id"], base.SUCCEEDED, None))
    b.push({"type": "t", "params": b"p", "task_id": "again"})  # a finished id, reused: live
    w = writer(b, prefix, table, "a", keep_finished_s=1.0, clock=clock)
    w.drain()
    clock.advance(5)
    b.maintain()
    assert b.get_task("again")["status"] == base.QUEUED  # type: ignore[index]
