"""A task table locked by another process, seen over HTTP: the JSON API answers 503 (retryable,
``Retry-After``), ``/metrics`` keeps answering with the right figures (it reads the broker's
memory, never the table), and both answer correctly once the lock is gone."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker import base
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.master import scoreboard as sb
from supervisor.registry import TaskOptions
from supervisor.web.server import MetricsServer, start_http_server
from tests.helpers import sqlite_locked
from tests.unit.test_api import check

pytestmark = pytest.mark.timeout(60)
W = "worker:0:1"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DurableBroker]:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    b = DurableBroker(
        journal=open_journal(url, run_dir=str(tmp_path), busy_timeout_s=0.3),
        task_types={"t": TaskOptions()},
    )
    yield b
    b.close()


@pytest.fixture
def server(broker: DurableBroker) -> Iterator[MetricsServer]:
    board = sb.Scoreboard(1)
    board.reset(board.master_slot, os.getpid(), time.monotonic())
    srv = start_http_server(broker=broker, scoreboard=board, host="127.0.0.1", port=0)
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv: MetricsServer, path: str) -> tuple[int, Any, bytes]:
    try:
        with OPENER.open(f"http://{srv.url_address()}{path}", timeout=20) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket
            return exc.code, exc.headers, exc.read()


def test_the_api_says_503_and_metrics_stay_right_while_the_table_is_locked(
    broker: DurableBroker, server: MetricsServer, tmp_path: Path
) -> None:
    done = broker.push({"type": "t", "params": b"p"})
    broker.report(W, (broker.pop(W)["task_id"], base.SUCCEEDED, 1))
    with sqlite_locked(tmp_path / "tasks.db"):
        queued = [broker.push({"type": "t", "params": b"p"}) for _ in range(3)]
        for path, spec_path in (("/api/tasks", "/api/tasks"), ("/api/stats", "/api/stats")):
            code, headers, body = get(server, path)
            doc = json.loads(body)
            assert code == 503 and headers["Retry-After"] == "1", (path, doc)
            assert check(code, doc, spec_path)["retryable"] is True
            assert "locked" in doc["error"]
        code, _, body = get(server, "/metrics")
        text = body.decode()
        assert code == 200
        assert 'supervisor_tasks_pushed_total{type="t"} 4.0' in text
        assert 'supervisor_queue_depth{priority="5"} 3.0' in text
        assert 'supervisor_tasks_finished_total{status="succeeded",type="t"} 1.0' in text
    code, _, body = get(server, "/api/stats")
    assert code == 200 and json.loads(body)["by_status"] == {"succeeded": 1, "queued": 3}
    code, _, body = get(server, "/api/tasks")
    assert {t["task_id"] for t in json.loads(body)["tasks"]} == {done, *queued}
