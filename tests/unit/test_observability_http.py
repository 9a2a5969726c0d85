"""The endpoints (/metrics, /livez, /readyz) on a real socket, and ``supervisor health``."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.cli import health
from supervisor.errors import BrokerError, SupervisorError
from supervisor.master import scoreboard as sb
from supervisor.observability import probes
from supervisor.registry import TaskOptions
from supervisor.web.server import (
    HTTP_ADDRESS_FILE,
    MetricsServer,
    make_on_serve,
    start_http_server,
)
from tests.helpers import BrokerSpy

pytestmark = pytest.mark.timeout(60)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def board() -> sb.Scoreboard:
    board = sb.Scoreboard(4)
    now = time.monotonic()
    board.reset(board.master_slot, os.getpid(), now)
    board.heartbeat(board.master_slot, now, sb.BUSY)
    return board


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(task_types={"ok": TaskOptions()})


@pytest.fixture
def server(broker: MemoryBroker, board: sb.Scoreboard) -> Iterator[MetricsServer]:
    srv = start_http_server(broker=broker, scoreboard=board, host="127.0.0.1", port=0)
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv: MetricsServer, path: str) -> tuple[int, str, dict[str, Any]]:
    try:
        with OPENER.open(f"http://{srv.url_address()}{path}", timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), _json(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket
            return exc.code, exc.headers.get("Content-Type", ""), _json(exc.read())


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {"text": body.decode()}
    return doc if isinstance(doc, dict) else {"value": doc}


def ready_worker(board: sb.Scoreboard, slot: int = 0) -> None:
    board.reset(slot, os.getpid(), time.monotonic())
    board.heartbeat(slot, time.monotonic(), sb.IDLE)


def test_metrics_endpoint_serves_the_text_format(server: MetricsServer) -> None:
    code, ctype, doc = get(server, "/metrics")
    assert code == 200 and ctype == CONTENT_TYPE_LATEST
    assert 'supervisor_tasks_pushed_total{type="ok"} 0.0' in doc["text"]
    assert get(server, "/nope")[0] == 404
    assert get(server, "/")[0] == 200


def test_livez_follows_the_master_heartbeat(server: MetricsServer, board: sb.Scoreboard) -> None:
    code, _, doc = get(server, "/livez")
    assert (code, doc["status"]) == (200, "ok")
    board.heartbeat(board.master_slot, time.monotonic() - 11, sb.BUSY)
    code, _, doc = get(server, "/livez")
    assert code == 503 and "master loop silent" in doc["reason"]


def test_readyz_needs_running_dispatching_and_a_ready_worker(
    server: MetricsServer, broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    def reason() -> str:
        code, _, doc = get(server, "/readyz")
        return "ready" if code == 200 else str(doc["reason"])

    assert reason() == "master status not published yet"
    broker.publish_status({"state": "running"})
    assert reason() == "no worker is ready (idle or busy)"
    board.reset(1, os.getpid(), time.monotonic())  # booting does not count
    assert reason() == "no worker is ready (idle or busy)"
    ready_worker(board, 2)
    assert reason() == "ready"
    broker.set_dispatching(False)
    assert reason() == "broker is not dispatching"
    broker.publish_status({"state": "draining"})
    assert reason() == "master is draining"


def test_bind_error_raises_a_clear_message(broker: MemoryBroker, board: sb.Scoreboard) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SupervisorError, match=rf"cannot listen on 127.0.0.1:{port}: .*in use"):
            start_http_server(broker=broker, scoreboard=board, host="127.0.0.1", port=port)


def test_on_serve_writes_the_bound_address(
    tmp_path: Path, broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    on_serve = make_on_serve(
        host="0.0.0.0", port=0, scoreboard=board, run_dir=str(tmp_path), graceful_timeout_s=25
    )
    on_serve(broker)
    path = tmp_path / HTTP_ADDRESS_FILE
    host, port = path.read_text().strip().rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0  # a wildcard bind is reached on loopback
    assert path.stat().st_mode & 0o777 == 0o644
    assert health.check(run_dir=str(tmp_path)) == 0


def test_health_check_by_run_dir_and_url(
    tmp_path: Path, server: MetricsServer, broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    (tmp_path / HTTP_ADDRESS_FILE).write_text(server.url_address() + "\n")
    assert health.check(run_dir=str(tmp_path)) == 0
    assert health.check(run_dir=str(tmp_path), ready=True) == 1  # no worker yet
    broker.publish_status({"state": "running"})
    ready_worker(board)
    assert health.check(run_dir=str(tmp_path), ready=True) == 0
    assert health.check(url=server.url_address()) == 0
    assert health.check(url=f"http://{server.url_address()}/readyz") == 0
    board.heartbeat(board.master_slot, time.monotonic() - 30, sb.BUSY)
    code, message = health.probe(url=f"http://{server.url_address()}")
    assert code == 1 and "HTTP 503" in message and "silent" in message


def test_health_reports_a_missing_address_or_nothing_listening(tmp_path: Path) -> None:
    code, message = health.probe(run_dir=str(tmp_path))
    assert code == 1 and "http_address" in message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, message = health.probe(url=f"127.0.0.1:{port}", timeout_s=2)
    assert code == 1 and "unreachable" in message


def test_health_command_line(
    tmp_path: Path, server: MetricsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="supervisor")
    health.add_health_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["health", "--url", server.url_address(), "--timeout", "5"])
    assert health.cmd_health(args) == 0
    assert "/livez: master loop ticking" in capsys.readouterr().out
    args = parser.parse_args(["health", "--run-dir", str(tmp_path), "--ready", "-q"])
    assert health.cmd_health(args) == 1
    assert capsys.readouterr() == ("", "")
    with pytest.raises(SystemExit) as refused:  # a timeout that is not positive: usage, 2
        parser.parse_args(["health", "--timeout", "0"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["health", "--url", "x", "--run-dir", "y"])


def test_probe_decisions_are_pure() -> None:
    def ready(age: float = 0.1, state: str | None = "running", workers: int = 1) -> probes.Probe:
        return probes.readiness(
            heartbeat_age_s=age, master_state=state, dispatching=True, ready_workers=workers
        )

    assert probes.liveness(9.9).ok and not probes.liveness(10.0).ok
    assert ready().ok and ready().body()["status"] == "ok"
    assert ready(age=60).reason.startswith("master loop silent")
    assert ready(state="stopping").body() == {
        "status": "fail",
        "reason": "master is stopping",
        "heartbeat_age_s": 0.1,
        "master_state": "stopping",
        "dispatching": True,
        "ready_workers": 1,
    }
    assert not ready(workers=0).ok


def test_a_broker_that_does_not_answer_is_metrics_200_with_broker_up_0_and_not_ready(
    broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    """Redis down, as the node process sees it: /metrics still answers (what the node knows
    alone, and ``supervisor_broker_up`` 0, never the URL's password), /readyz says why not."""

    def unreachable(*_: Any) -> Any:
        raise BrokerError("cannot reach Redis at redis://:***@r:6379/0")

    answers = {n: unreachable for n in ("master_status", "drain_events", "dispatching")}
    srv = start_http_server(
        broker=BrokerSpy(broker, **answers),  # type: ignore[arg-type]
        scoreboard=board,
        host="127.0.0.1",
        port=0,
        node="n1",
    )
    try:
        ready_worker(board)
        code, _, doc = get(srv, "/metrics")
        assert code == 200
        assert 'supervisor_broker_up{node="n1"} 0.0' in doc["text"]
        assert 'supervisor_workers{node="n1",state="idle"} 1.0' in doc["text"]
        assert "supervisor_queue_depth" not in doc["text"] and "***" not in doc["text"]
        code, _, doc = get(srv, "/readyz")
        assert code == 503 and doc["reason"].startswith("the broker does not answer")
        assert get(srv, "/livez")[0] == 200  # the master's loop still ticks
    finally:
        srv.shutdown()
        srv.server_close()
