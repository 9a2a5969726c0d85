"""The journal's log file: replay after a crash, torn tails, rotation (no processes needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.broker.embedded.journal import Journal, open_journal, read_log
from supervisor.broker.embedded.tasktable import TaskTable, snapshot
from supervisor.broker.records import TaskRecord
from supervisor.db import make_engine
from supervisor.errors import BrokerError

pytestmark = pytest.mark.timeout(30)


def row(task_id: str, status: str = "queued", attempts: int = 0) -> tuple:
    return snapshot(
        TaskRecord(
            task_id=task_id,
            type="t",
            params=b"p",
            priority=5,
            status=status,
            pushed_at=1.0,
            attempts=attempts,
        )
    )


def test_rows_written_before_a_crash_are_folded_at_the_next_start(tmp_path: Path, clock):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    j = open_journal(url, run_dir=str(tmp_path), clock=clock)
    j.migrate()
    j.write(row("a"))
    j.write_many([row("b"), row("a", "running", 1)])
    # no close(): the process "dies" here; the mapped pages are the file's
    again = open_journal(url, run_dir=str(tmp_path), clock=clock)
    again.migrate()
    recs = {r.task_id: r for r in again.load_active()}
    assert recs["a"].status == "running" and recs["a"].attempts == 1 and "b" in recs
    assert list(tmp_path.glob("db.sqlite.tasklog.*")) == [tmp_path / "db.sqlite.tasklog.1"]
    again.close()
    assert list(tmp_path.glob("db.sqlite.tasklog.*")) == []


def test_a_torn_tail_is_ignored_and_reported(tmp_path: Path, clock):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    j = open_journal(url, run_dir=str(tmp_path), clock=clock)
    j.migrate()
    j.write(row("good"))
    at = j._file_bytes
    log = tmp_path / "db.sqlite.tasklog.1"
    with log.open("r+b") as fh:  # a frame header promising more than was written
        fh.seek(at)
        fh.write(b"\x40\x00\x00\x00\x12\x34\x56\x78partial")
    rows, clean = read_log(log)
    assert [r[0] for r in rows] == ["good"] and not clean
    again = open_journal(url, run_dir=str(tmp_path), clock=clock)
    again.migrate()
    assert [r.task_id for r in again.load_active()] == ["good"]
    again.close()


def test_full_files_rotate_and_are_deleted_once_folded(tmp_path: Path, clock):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    j = Journal(
        TaskTable(engine, clock=clock),
        tmp_path / "log",
        rotate_bytes=4096,
        map_bytes=4096,
        clock=clock,
    )
    j.migrate()
    for i in range(200):
        j.write(row(f"t{i}"))
    assert len(list(tmp_path.glob("log.*"))) > 2
    assert j.fold() == 200
    assert [p.name for p in tmp_path.glob("log.*")] == [f"log.{j._file_no}"]
    assert j.get("t7") is not None and len(j.table.load_active()) == 200
    j.close()
    with pytest.raises(BrokerError, match="shutting down"):
        j.write(row("late"))
