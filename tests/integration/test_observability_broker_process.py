"""The HTTP endpoints inside a real broker process (``start_broker_process(on_serve=...)``),
fed by a real scheduler process: the integration the master relies on, without a master."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.server import start_broker_process
from supervisor.client.proxy import BrokerClient
from supervisor.client.queue import Queue
from supervisor.errors import BrokerError
from supervisor.master import scoreboard as sb
from supervisor.scheduling.client import Scheduler
from supervisor.scheduling.process import SchedulerProcess
from supervisor.web.server import make_on_serve
from tests.e2e.test_observability_metrics import get, scrape, total, value
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


class BrokerWithHttp:
    def __init__(self, run_dir: Path, *, port: int = 0) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="obs-")  # short: a socket path has a limit
        self.authkey = secrets.token_bytes(16)
        self.board = sb.Scoreboard(4)
        self.board.reset(self.board.master_slot, os.getpid(), time.monotonic())
        self.run_dir = run_dir
        self.pids: list[int] = []
        self.pid, self.address = start_broker_process(
            address=os.path.join(self.sock_dir, "b.sock"),
            authkey=self.authkey,
            make_broker=lambda: MemoryBroker(task_types=None),
            on_serve=make_on_serve(
                host="127.0.0.1",
                port=port,
                scoreboard=self.board,
                run_dir=str(run_dir),
                graceful_timeout_s=7,
            ),
        )
        self.pids.append(self.pid)
        self.queue = Queue(BrokerClient(self.address, self.authkey, timeout_s=10))
        self.http = (run_dir / "http_address").read_text().strip()

    def close(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerWithHttp]:
    made = BrokerWithHttp(tmp_path)
    yield made
    made.close()


def test_endpoints_run_in_the_broker_process_and_read_the_shared_scoreboard(
    broker: BrokerWithHttp,
) -> None:
    assert get(broker.http, "/livez")[0] == 200
    broker.board.heartbeat(broker.board.master_slot, time.monotonic() - 60, sb.BUSY)
    assert get(broker.http, "/livez")[0] == 503  # the parent's write is seen at once
    broker.board.heartbeat(broker.board.master_slot, time.monotonic(), sb.BUSY)
    broker.board.reset(0, os.getpid(), time.monotonic())
    broker.board.heartbeat(0, time.monotonic(), sb.IDLE)
    assert get(broker.http, "/readyz")[0] == 503  # no master status yet
    broker.queue.broker.publish_status({"state": "running", "desired_workers": 1})
    assert get(broker.http, "/readyz")[0] == 200
    broker.queue.push_task({"type": "x", "params": {}})
    got = scrape(broker.http)
    assert value(got, "supervisor_tasks_pushed_total", type="x") == 1
    assert value(got, "supervisor_queue_depth", priority="5") == 1
    node = socket.gethostname()  # the default node name of the embedded broker's metrics
    assert value(got, "supervisor_workers", state="idle", node=node) == 1
    assert value(got, "supervisor_graceful_timeout_seconds", node=node) == 7


def test_a_taken_port_fails_the_broker_start_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            BrokerError,
            match=f"metrics endpoint: cannot listen on 127.0.0.1:{port}: Address already in use",
        ):
            BrokerWithHttp(tmp_path, port=port)


def test_the_scheduler_process_reports_fires_and_lag(
    broker: BrokerWithHttp, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'schedules.db'}"
    api = Scheduler.from_url(url)
    try:
        api.add_scheduler_task(
            name="tick",
            task_type="t",
            schedule_type="interval",
            interval_seconds=0.2,
            overlap="queue",
        )
        # nothing runs its tasks: from its second due time on, each one overlaps the first
        api.add_scheduler_task(
            name="solo", task_type="s", schedule_type="interval", interval_seconds=0.2
        )
        proc = SchedulerProcess(database_url=url, address=broker.address, authkey=broker.authkey)
        broker.pids.append(proc.start())

        def fired() -> dict[Any, float] | None:
            got = scrape(broker.http)
            return (
                got
                if total(got, "supervisor_scheduler_fires_total") >= 3
                and total(got, "supervisor_scheduler_misfires_total", action="overlapped") >= 1
                else None
            )

        got = wait_until(fired, 30, what="the scheduler's fires in the metrics")
    finally:
        api.close()
    assert total(got, "supervisor_scheduler_fire_lag_seconds_count") >= 3
    assert total(got, "supervisor_scheduler_fire_lag_seconds_bucket", le="+Inf") >= 3
    ages = [v for (n, _), v in got.items() if n == "supervisor_scheduler_last_tick_age_seconds"]
    assert len(ages) == 1 and ages[0] < 5
    assert total(got, "supervisor_scheduler_consecutive_failures") == 0
    assert value(got, "supervisor_tasks_pushed_total", type="t") >= 3
    assert value(got, "supervisor_tasks_pushed_total", type="s") == 1
