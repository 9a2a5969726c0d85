"""The metrics, probes and JSON API serve any broker that answers :class:`BrokerView`: here a
plain object with only those methods (no embedded broker), as a Redis-backed view will be."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import pytest

from supervisor.master import scoreboard as sb
from supervisor.observability.view import BrokerView
from supervisor.web.server import start_http_server

pytestmark = pytest.mark.timeout(30)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OnlyTheView:
    """Exactly the methods of BrokerView, answering fixed figures."""

    def stats(self) -> dict[str, Any]:
        return {
            "queued": 2,
            "by_priority": {7: 2},
            "oldest_age_s": {7: 1.5},
            "scheduled": 1,
            "retrying": 0,
            "running": 0,
            "by_status": {"queued": 2, "scheduled": 1},
            "store_keys": 4,
            "dispatching": True,
            "counters": {("pushed", "mail", ""): 3},
        }

    def drain_events(self) -> list[tuple[str, str, str, float]]:
        return [("finished", "mail", "succeeded", 0.2)]

    def master_status(self) -> dict[str, Any]:
        return {"pid": 1, "state": "running", "workers": []}

    def dispatching(self) -> bool:
        return True

    def known_task_types(self) -> list[str]:
        return ["mail"]

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        return {}, None

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        return None

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return []

    def get_queue_stats(self) -> dict[str, int]:
        return {"queued": 2, "scheduled": 1}

    def cancel(self, task_id: str) -> str:
        return "unknown"

    def retry_task(self, task_id: str) -> bool:
        return False


def test_the_endpoints_need_nothing_but_the_view() -> None:
    view = OnlyTheView()
    assert isinstance(view, BrokerView)
    board = sb.Scoreboard(1)
    board.reset(board.master_slot, os.getpid(), time.monotonic())
    srv = start_http_server(broker=view, scoreboard=board, host="127.0.0.1", port=0, node="n")
    base = f"http://{srv.url_address()}"
    try:
        with OPENER.open(base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'supervisor_queue_depth{priority="7"} 2.0' in text
        assert 'supervisor_tasks_pushed_total{type="mail"} 3.0' in text
        assert 'supervisor_task_duration_seconds_count{node="n",type="mail"} 1.0' in text
        with OPENER.open(base + "/api/stats", timeout=10) as resp:
            assert json.loads(resp.read())["by_status"] == {"queued": 2, "scheduled": 1}
        with OPENER.open(base + "/api/tasks?type=mail", timeout=10) as resp:
            assert json.loads(resp.read()) == {"tasks": []}
    finally:
        srv.shutdown()
        srv.server_close()
