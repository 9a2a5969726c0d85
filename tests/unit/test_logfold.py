"""The journal's folder: reads the log where it stopped, retries a frame being written, deletes
complete files, and runs as a child process that is restarted when it dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from supervisor.broker.embedded.fold import FoldProcess, LogFolder
from supervisor.broker.embedded.frames import frame
from supervisor.broker.embedded.journal import Journal
from supervisor.broker.embedded.tasktable import TaskTable, snapshot
from supervisor.broker.records import TaskRecord
from supervisor.db import make_engine
from supervisor.errors import BrokerError

pytestmark = pytest.mark.timeout(60)


def row(task_id: str, status: str = "queued", attempts: int = 0) -> tuple:
    rec = TaskRecord(
        task_id=task_id, type="t", params=b"p", priority=5, status=status, pushed_at=1.0
    )
    rec.attempts = attempts
    return snapshot(rec)


@pytest.fixture
def table(tmp_path: Path) -> TaskTable:
    t = TaskTable(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    t.migrate()
    return t


def status_of(table: TaskTable, task_id: str) -> str | None:
    rec = table.get(task_id)
    return None if rec is None else rec.status


def test_a_frame_being_written_is_folded_the_next_time(tmp_path: Path, table: TaskTable):
    log = tmp_path / "log.1"
    log.write_bytes(b"\0" * 4096)  # a mapped, zero-filled file, as the journal makes them
    good, late = frame([row("a")]), frame([row("b"), row("a", "running", 1)])
    with log.open("r+b") as fh:
        fh.write(good)
        fh.write(late[: len(late) // 2])  # the broker is in the middle of this copy
    folder = LogFolder(table, tmp_path / "log")
    assert folder.fold() == 1 and status_of(table, "a") == "queued"
    assert status_of(table, "b") is None
    with log.open("r+b") as fh:
        fh.seek(len(good))
        fh.write(late)  # the copy completes
    assert folder.fold() == 2
    assert status_of(table, "a") == "running" and status_of(table, "b") == "queued"
    assert folder.fold() == 0  # nothing new: nothing written again


def test_complete_files_are_deleted_and_a_corrupt_one_is_skipped(tmp_path: Path, table: TaskTable):
    bad = bytearray(frame([row("x")]) + frame([row("lost")]))
    bad[-3] ^= 0xFF  # the second frame's payload no longer matches its checksum
    (tmp_path / "log.1").write_bytes(bytes(bad) + b"\0" * 64)
    (tmp_path / "log.2").write_bytes(frame([row("y")]) + b"\0" * 64)
    folder = LogFolder(table, tmp_path / "log")
    assert folder.fold() == 2  # x and y; the corrupt frame of a complete file is skipped
    assert [p.name for p in tmp_path.glob("log.*")] == ["log.2"]  # the live file stays
    assert status_of(table, "lost") is None


def test_a_failed_upsert_loses_nothing(tmp_path: Path, table: TaskTable, monkeypatch):
    (tmp_path / "log.1").write_bytes(frame([row("a")]) + b"\0" * 64)
    folder = LogFolder(table, tmp_path / "log")

    def locked(rows):
        raise RuntimeError("database is locked")

    with monkeypatch.context() as m:
        m.setattr(table, "upsert", locked)
        with pytest.raises(RuntimeError):
            folder.fold()
    assert folder.fold() == 1 and status_of(table, "a") == "queued"


def test_the_fold_process_folds_is_restarted_after_a_kill_and_keeps_the_url_secret(
    tmp_path: Path, table: TaskTable
):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    journal = Journal(
        table,
        tmp_path / "db.sqlite.tasklog",
        folder=FoldProcess(url, tmp_path / "db.sqlite.tasklog"),
    )
    journal.migrate()
    try:
        journal.write(row("a"))
        assert journal.fold() == 1 and status_of(table, "a") == "queued"
        pid = journal._folder.pid
        assert pid is not None
        child = psutil.Process(pid)
        assert child.ppid() == os.getpid()
        assert url not in " ".join(child.cmdline())  # the URL travels on stdin, not argv
        os.kill(pid, signal.SIGKILL)
        child.wait(10)
        journal.write(row("a", "running", 1))
        assert journal.fold() == 1 and status_of(table, "a") == "running"  # a new one
        assert journal._folder.pid not in (None, pid)
        os.kill(journal._folder.pid, signal.SIGSTOP)  # alive but silent: killed, then replaced
        journal._folder.timeout_s = 0.5
        with pytest.raises(BrokerError, match="stopped answering"):
            journal.fold()
        journal._folder.timeout_s = 60.0
        journal.write(row("b"))
        assert journal.fold() == 2 and status_of(table, "b") == "queued"
    finally:
        journal.close()
    assert list(tmp_path.glob("db.sqlite.tasklog.*")) == []
    assert journal._folder.pid is None


def test_a_fold_process_that_cannot_open_the_database_says_why(tmp_path: Path):
    folder = FoldProcess("nosuchdialect://x", tmp_path / "log")
    try:
        with pytest.raises(BrokerError, match="did not start"):
            folder.fold()
    finally:
        folder.close()


def test_after_repeated_failed_starts_the_fold_runs_in_this_process(
    tmp_path: Path, table: TaskTable, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "log.1").write_bytes(frame([row("a")]) + b"\0" * 64)
    folder = FoldProcess(url, tmp_path / "log")
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-such-python"))
    try:
        for _ in range(FoldProcess.MAX_START_FAILURES - 1):
            with pytest.raises(BrokerError, match="cannot start"):
                folder.fold()
        assert folder.fold() == 1 and status_of(table, "a") == "queued"
        assert folder.pid is None
    finally:
        folder.close()


def test_a_purged_task_stays_purged_when_the_folder_starts_again(tmp_path: Path):
    import pickle

    from supervisor.broker.embedded.durable import DurableBroker
    from supervisor.broker.embedded.journal import open_journal

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path), fold_process=True))
    try:
        tid = b.push({"type": "t", "params": pickle.dumps({})})
        b.exchange("worker:0:1", None, 0)
        b.exchange("worker:0:1", (tid, "succeeded", 1), 0)
        assert b.purge("succeeded", -10) == 1
        folder = b._journal._folder
        os.kill(folder.pid, signal.SIGKILL)  # the next one reads every log file from the start
        psutil.Process(folder.pid).wait(10)
        assert b.get_queue_stats() == {} and b.get_task(tid) is None
    finally:
        b.close()


def test_the_folder_outlives_the_thread_that_started_it(tmp_path: Path, table: TaskTable):
    import threading

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    folder = FoldProcess(url, tmp_path / "log")
    try:
        t = threading.Thread(target=folder.fold)  # e.g. an HTTP request's thread
        t.start()
        t.join()
        pid = folder.pid
        assert pid is not None
        with pytest.raises(psutil.TimeoutExpired):
            psutil.Process(pid).wait(0.5)  # still there after its starter ended
        assert folder.fold() == 0 and folder.pid == pid
    finally:
        folder.close()
