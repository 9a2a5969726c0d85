"""The durable broker in-process: journal, recovery, result TTL, corrupt rows (fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from loguru import logger

from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.broker.embedded.tasktable import task_record
from supervisor.db import make_engine
from supervisor.registry import TaskOptions

pytestmark = pytest.mark.timeout(30)

W = "worker:0:1"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'journal.db'}"


def open_broker(url: str, clock, **kw) -> DurableBroker:
    opts = TaskOptions(timeout_s=10, max_retries=2, backoff_base_s=1, backoff_cap_s=1)
    return DurableBroker(
        journal=open_journal(url, run_dir="/nonexistent", clock=clock),
        clock=clock,
        default_options=opts,
        **kw,
    )


def push(b: DurableBroker, **kw) -> str:
    return b.push({"type": "t", "params": b"p", **kw})


def test_restart_requeues_waiting_tasks_and_counts_running_ones_as_lost(url, clock):
    b = open_broker(url, clock)
    first, second = push(b), push(b, priority=9)
    delayed = push(b, eta=clock() + 100)
    assert b.pop(W)["task_id"] == second  # running when the "crash" comes
    b.close()  # the journal is all that survives
    b2 = open_broker(url, clock)
    assert b2.recovered == 3
    lost = b2.get_task(second)
    assert lost["status"] == "retrying" and lost["attempts"] == 1
    assert lost["errors"][0]["reason"] == "worker_lost"
    assert b2.get_task(delayed)["status"] == "scheduled"
    assert b2.pop(W)["task_id"] == first
    clock.advance(101)
    got = {b2.pop(f"worker:{i}:9")["task_id"] for i in range(2)}
    assert got == {second, delayed}
    stats = b2.stats()
    assert stats["running"] == 3 and min(stats["by_status"].values()) >= 0
    b2.close()


def test_a_finished_task_stays_finished_and_unknown_ids_are_unknown(url, clock):
    b = open_broker(url, clock, finished_records=0)  # nothing kept in memory: from the database
    t = push(b)
    m = b.pop(W)
    b.report(W, (m["task_id"], "succeeded", {"answer": 42}))
    b.close()
    b2 = open_broker(url, clock, finished_records=0)
    assert b2.recovered == 0
    rec = b2.get_task(t)
    assert rec["status"] == "succeeded" and rec["result"] == {"answer": 42}
    assert b2.get_task("never-pushed") is None
    assert b2.cancel("never-pushed") == "unknown" and b2.cancel(t) == "finished"
    b2.close()


def test_results_expire_after_their_ttl(url, clock):
    b = open_broker(url, clock, result_ttl_s=60, failure_ttl_s=600)
    ok, bad = push(b), push(b)
    for _ in (ok, bad):
        m = b.pop(W)
        b.report(
            W,
            (m["task_id"], "succeeded", 1)
            if m["task_id"] == ok
            else (m["task_id"], "invalid", {"error": "no"}),
        )
    clock.advance(59)
    assert b.expire_results() == 0
    clock.advance(2)
    assert b.expire_results() == 1  # the success; the dead one has a longer ttl
    b.core.finished.clear()
    assert b.get_task(ok) is None and b.get_task(bad)["status"] == "dead"
    clock.advance(600)
    assert b.expire_results() == 1
    b.close()


def test_cancel_of_a_running_task_survives_a_restart(url, clock):
    b = open_broker(url, clock)
    t = push(b)
    b.pop(W)
    assert b.cancel(t) == "cancelling"
    b.close()
    b2 = open_broker(url, clock)
    assert b2.get_task(t)["status"] == "cancelled"  # not retried after the crash
    b2.close()


def test_corrupt_rows_are_logged_and_skipped(url, clock, tmp_path: Path):
    b = open_broker(url, clock)
    good = push(b)
    push(b)
    b.close()
    engine = make_engine(url)
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(sa.select(task_record.c.task_id))]
        bad = next(i for i in ids if i != good)
        conn.execute(
            sa.update(task_record)
            .where(task_record.c.task_id == bad)
            .values(errors="{not json", priority=99)
        )
        conn.exec_driver_sql(  # a row no release of ours would write: text where bytes belong
            "INSERT INTO task_record (task_id, type, params, priority, status, attempts, seq, "
            "pushed_at) VALUES ('garbage', 't', 'not bytes', 5, 'queued', 0, 99, 1.0)"
        )
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR")
    try:
        b2 = open_broker(url, clock)
    finally:
        logger.remove(sink)
    assert b2.recovered == 1 and b2.pop(W)["task_id"] == good
    assert sum("corrupt task row" in line for line in lines) == 2
    b2.close()


def test_unique_key_is_restored_after_a_restart(url, clock):
    b = open_broker(url, clock)
    t = push(b, unique_key="k")
    b.close()
    b2 = open_broker(url, clock)
    assert push(b2, unique_key="k") == t
    b2.close()


def test_an_older_task_database_is_upgraded_in_place(url, clock):
    engine = make_engine(url)
    with engine.begin() as conn:  # the first release's table: no unique_key, no cancel column
        conn.exec_driver_sql(
            "CREATE TABLE task_record (task_id VARCHAR(200) PRIMARY KEY, type VARCHAR(200) "
            "NOT NULL, params BLOB NOT NULL, priority INTEGER NOT NULL, status VARCHAR(16) NOT "
            "NULL, attempts INTEGER NOT NULL, seq BIGINT NOT NULL, eta FLOAT, pushed_at FLOAT "
            "NOT NULL, started_at FLOAT, finished_at FLOAT, consumer VARCHAR(200), result TEXT, "
            "errors TEXT, schedule_id VARCHAR(64), scheduled_at FLOAT)"
        )
        conn.exec_driver_sql(
            "INSERT INTO task_record (task_id, type, params, priority, status, attempts, seq, "
            "pushed_at) VALUES ('old', 't', x'80054e2e', 5, 'queued', 0, 1, 1.0)"
        )
    b = open_broker(url, clock)
    assert b.recovered == 1 and b.pop(W)["task_id"] == "old"
    b.close()


def test_a_newer_task_database_is_refused(url, clock):
    from supervisor.broker.embedded.tasktable import SCHEMA_VERSION, TaskTable, task_schema
    from supervisor.errors import SupervisorError

    table = TaskTable(make_engine(url), clock=clock)
    table.migrate()
    with table.engine.begin() as conn:
        conn.execute(task_schema.insert().values(version=SCHEMA_VERSION + 1, applied_at=1.0))
    with pytest.raises(SupervisorError, match="newer than the"):
        open_broker(url, clock)


def test_purge_keeps_the_status_counts_true(url, clock):
    b = open_broker(url, clock)
    t = push(b)
    m = b.pop(W)
    b.report(W, (m["task_id"], "invalid", {"error": "no"}))
    assert b.stats()["by_status"].get("dead") == 1
    clock.advance(10)
    assert b.purge("dead", 5) == 1
    push(b, task_id=t)  # the same id again, before anything rebuilds the counts
    assert b.stats()["by_status"].get("dead", 0) == 0
    b.close()


def test_a_task_keeps_its_named_queue_across_a_restart(url, clock):
    b = open_broker(url, clock)
    t = push(b, queue="gpu")
    b.close()
    b2 = open_broker(url, clock)
    assert b2.pop(W, 0.0, ["default"]) is None
    m = b2.pop(W, 0.0, ["gpu"])
    assert m["task_id"] == t and m["queue"] == "gpu"
    b2.close()


def test_a_snapshot_written_before_named_queues_is_read_as_the_default_queue():
    from supervisor.broker.embedded.tasktable import COLUMNS, record_from_row, snapshot
    from supervisor.broker.records import TaskRecord

    rec = TaskRecord(task_id="a", type="t", params=b"", priority=5, status="queued", pushed_at=1)
    old = snapshot(rec)[:-1]  # the journal frames of the previous release had no queue field
    assert len(old) == len(COLUMNS) - 1
    assert record_from_row(old).queue == "default"
