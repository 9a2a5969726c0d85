"""A task table locked by another process (a backup, a migration) never gives a wrong answer.

Another process holds ``BEGIN EXCLUSIVE`` on the SQLite file: pushes and work go on (they only
append to the journal), reads of live records are answered from memory, and the queries over
every record refuse with a retryable ``DatabaseBusy`` naming the lock instead of answering from
a table that is behind. Once the lock is gone the same calls answer correctly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.errors import DatabaseBusy
from tests.helpers import sqlite_locked

pytestmark = pytest.mark.timeout(60)
W = "worker:0:1"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DurableBroker]:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    b = DurableBroker(journal=open_journal(url, run_dir=str(tmp_path), busy_timeout_s=0.3))
    yield b
    b.close()


def test_queries_refuse_while_another_process_holds_the_lock(
    broker: DurableBroker, tmp_path: Path
) -> None:
    done = broker.push({"type": "t", "params": b"p"})
    broker.report(W, (broker.pop(W)["task_id"], base.SUCCEEDED, 1))
    assert broker.get_queue_stats() == {"succeeded": 1}
    with sqlite_locked(tmp_path / "tasks.db"):
        queued = [broker.push({"type": "t", "params": b"p"}) for _ in range(3)]  # work goes on
        m = broker.pop(W)
        broker.report(W, (m["task_id"], base.SUCCEEDED, 2))
        assert broker.get_task(m["task_id"])["status"] == base.SUCCEEDED  # live: from memory
        with pytest.raises(DatabaseBusy, match="locked"):
            broker.list_tasks()
        with pytest.raises(DatabaseBusy, match="retry"):
            broker.get_queue_stats()
    assert broker.get_queue_stats() == {"succeeded": 2, "queued": 2}
    assert {r["task_id"] for r in broker.list_tasks()} == {done, *queued}
