"""Fuzz the JSON API against its own OpenAPI description with schemathesis, every check on.

A real HTTP server (the one ``supervisor run`` starts in its broker process) runs in this test's
process over an in-memory broker holding tasks in several statuses and a few schedules; the
schemathesis CLI runs against it as a subprocess, deterministic and bounded (examples, coverage,
fuzzing and stateful phases; positive and negative data). What it proves: no 5xx, every status,
content type and body as described, undeclared methods answered 405 with ``Allow`` and a JSON
body, requests that violate the description answered 400, write calls refused without the token.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.master import scoreboard as sb
from supervisor.registry import TaskOptions
from supervisor.web.api import Api
from supervisor.web.schedules import schedule_doc
from supervisor.web.server import MetricsServer, start_http_server
from tests.helpers import BrokerSpy, require_service

pytestmark = pytest.mark.timeout(150)
TOKEN = "fuzz-token-1"
MAX_EXAMPLES = 10  # per operation and phase: about 250 requests, well under 60 s on 2 cores
W = "worker:0:1"


def populated_broker() -> MemoryBroker:
    b = MemoryBroker(task_types={"ok": TaskOptions(max_retries=0), "slow": TaskOptions()})
    for i in range(4):
        b.push({"type": "ok", "params": pickle.dumps({"n": i}), "task_id": f"t{i}"})
    b.push({"type": "slow", "params": pickle.dumps(object), "delay": 3600, "task_id": "later"})
    done = b.pop(W)
    assert done is not None
    b.report(W, (done["task_id"], "succeeded", {"ok": True}))
    failed = b.pop(W)
    assert failed is not None
    b.report(W, (failed["task_id"], "failed", {"reason": "error", "error": "boom"}))
    running = b.pop(W)
    assert running is not None
    b.publish_status(
        {
            "pid": os.getpid(),
            "state": "running",
            "workers": [
                {"slot": 0, "pid": os.getpid(), "state": "busy", "task_id": running["task_id"]}
            ],
        }
    )
    return b


SCHEDULES = [
    schedule_doc(
        {
            "task_id": "s-1",
            "name": "nightly",
            "task_type": "ok",
            "schedule_type": "cron",
            "enabled": True,
            "next_run_at": 1_800_000_000.0,
            "run_count": 3,
            "cron_expression": "0 3 * * *",
            "timezone": "UTC",
            "priority": 5,
            "max_runs": 0,
        }
    ),
    schedule_doc(
        {
            "task_id": "s-2",
            "name": "every-minute",
            "task_type": "slow",
            "schedule_type": "interval",
            "enabled": False,
            "next_run_at": None,
            "run_count": 0,
            "interval_seconds": 60.0,
        }
    ),
]


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    broker = populated_broker()
    board = sb.Scoreboard(1)
    board.reset(board.master_slot, os.getpid(), time.monotonic())
    api = Api(broker, token=TOKEN, schedules=lambda: [dict(s) for s in SCHEDULES])
    srv = start_http_server(broker=broker, scoreboard=board, host="127.0.0.1", port=0, api=api)
    yield srv
    srv.shutdown()
    srv.server_close()


def schemathesis(
    *args: str, cwd: Any, timeout_s: float = 130.0
) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI, run in ``cwd`` (it leaves nothing in the repository)."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


def test_the_api_conforms_to_its_description_under_fuzzing(
    server: MetricsServer, tmp_path: Any
) -> None:
    require_service(
        importlib.util.find_spec("schemathesis") is not None,
        "schemathesis is not installed (pip install -e '.[test]')",
    )
    started = time.monotonic()
    run = schemathesis(
        "run",
        f"http://{server.url_address()}/api/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        cwd=tmp_path,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-6000:]
    # Every operation but the description itself (schemathesis skips the schema's own URL).
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) >= 7, output[:2000]
    assert time.monotonic() - started < 120


def test_the_fuzzer_finds_a_server_error_when_there_is_one(
    server: MetricsServer, tmp_path: Any
) -> None:
    """The run above can fail: a handler that raises is found and reported (exit code 1)."""
    require_service(
        importlib.util.find_spec("schemathesis") is not None,
        "schemathesis is not installed (pip install -e '.[test]')",
    )

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    server.api.broker = BrokerSpy(server.api.broker, get_queue_stats=broken)  # type: ignore[assignment]
    run = schemathesis(
        "run",
        f"http://{server.url_address()}/api/openapi.json",
        "--checks",
        "not_a_server_error",
        "--include-path",
        "/api/stats",
        "--phases",
        "fuzzing",
        "--max-examples",
        "3",
        "--generation-deterministic",
        "--workers",
        "1",
        "--no-color",
        cwd=tmp_path,
        timeout_s=60,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "Server error" in output, output[-4000:]
