"""A task table locked by another process (a backup, a migration) never gives a wrong answer.

Another process holds ``BEGIN EXCLUSIVE`` on the SQLite file: pushes and work go on (they only
append to the journal), reads of live records are answered from memory, and the queries over
every record refuse with a retryable ``DatabaseBusy`` naming the lock instead of answering from
a table that is behind. Once the lock is gone the same calls answer correctly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.errors import DatabaseBusy

pytestmark = pytest.mark.timeout(60)
W = "worker:0:1"
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
conn.execute("ROLLBACK")
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DurableBroker]:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path), busy_timeout_s=0.3))
    yield b
    b.close()


def hold_lock(db: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_queries_refuse_while_another_process_holds_the_lock(
    broker: DurableBroker, tmp_path: Path
) -> None:
    done = broker.push({"type": "t", "params": b"p"})
    broker.report(W, (broker.pop(W)["task_id"], base.SUCCEEDED, 1))
    assert broker.get_queue_stats() == {"succeeded": 1}
    locker = hold_lock(tmp_path / "tasks.db")
    try:
        queued = [broker.push({"type": "t", "params": b"p"}) for _ in range(3)]  # work goes on
        m = broker.pop(W)
        broker.report(W, (m["task_id"], base.SUCCEEDED, 2))
        assert broker.get_task(m["task_id"])["status"] == base.SUCCEEDED  # live: from memory
        with pytest.raises(DatabaseBusy, match="locked"):
            broker.list_tasks()
        with pytest.raises(DatabaseBusy, match="retry"):
            broker.get_queue_stats()
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(10)
        assert locker.stdout is not None
        locker.stdout.close()
    assert broker.get_queue_stats() == {"succeeded": 2, "queued": 2}
    assert {r["task_id"] for r in broker.list_tasks()} == {done, *queued}
