"""Run ``supervisor run`` as a real subprocess and talk to it like a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import connect
from supervisor.client.queue import Queue
from tests.helpers import wait_until
from tests.integration.test_schedule_backends import backend_url
from tests.redisserver import RedisServer

REPO = Path(__file__).resolve().parents[2]


class Master:
    """A running ``supervisor run`` and helpers to observe it."""

    def __init__(
        self,
        tmp_path: Path,
        args: list[str],
        workers: int,
        prefix: list[str],
        database: str | None = None,
    ) -> None:
        self.run_dir = tmp_path / "run"
        self.database = database or f"sqlite:///{tmp_path / 'supervisor.db'}"
        self.log_path = tmp_path / "master.log"
        self.workers = workers
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("SUPERVISOR_CONFIG", None)
        self.cmd = [
            *prefix,
            sys.executable,
            "-m",
            "supervisor",
            "run",
            "--app",
            "tests.e2e.app",
            "--run-dir",
            str(self.run_dir),
            "--workers",
            str(workers),
            "--log-format",
            "json",
            "--log-level",
            "DEBUG",
            "--heartbeat-timeout",
            "30",
            "--database",
            self.database,
            "--metrics-port",
            "0",
            *args,
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._queue: Queue | None = None
        self.seen_pids: set[int] = set()

    # -- observation -------------------------------------------------------------------------
    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = wait_until(
                lambda: connect(run_dir=str(self.run_dir), timeout_s=10),
                timeout_s=20,
                what="the broker to answer",
            )
        return self._queue

    def status(self) -> dict[str, Any]:
        return self.queue.broker.get_status()

    def worker_pids(self) -> list[int]:
        pids = [w["pid"] for w in self.status()["master"].get("workers", [])]
        self.seen_pids.update(pids)
        return pids

    def wait_ready(self, n: int | None = None, timeout_s: float = 20) -> list[int]:
        n = self.workers if n is None else n

        def ready() -> list[int] | None:
            workers = self.status()["master"].get("workers", [])
            idle = [w["pid"] for w in workers if w["state"] in ("idle", "busy")]
            self.seen_pids.update(idle)
            return idle if len(workers) == n and len(idle) == n else None

        return wait_until(ready, timeout_s, what=f"{n} ready workers")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout_s: float = 10) -> None:
        wait_until(lambda: needle in self.log_text(), timeout_s, what=f"log line {needle!r}")

    def task(self, task_id: str) -> dict[str, Any] | None:
        return self.queue.get_task(task_id)

    def wait_status(self, task_id: str, status: str, timeout_s: float = 15) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            rec = self.task(task_id)
            return rec if rec and rec["status"] == status else None

        return wait_until(check, timeout_s, what=f"task {task_id} to be {status}")

    def counter(self, event: str, task_type: str, status: str = "") -> int:
        return int(self.queue.stats()["counters"].get((event, task_type, status), 0))

    # -- control -----------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"master did not exit within {timeout_s:g} s\n{self.log_text()[-3000:]}")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        close_client = getattr(self._queue.broker, "close", None) if self._queue else None
        if close_client is not None:  # a Redis client: its sockets are ours to close
            close_client()
        leftovers = self.descendants()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for p in leftovers:
            try:
                p.kill()
            except psutil.Error:
                pass
        for pid in self.seen_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._log.close()


@pytest.fixture
def start_master(tmp_path: Path) -> Iterator[Any]:
    """``start_master(*args, workers=2)`` -> Master, ready; all of them are killed afterwards."""
    started: list[Master] = []

    def start(
        *args: str,
        workers: int = 2,
        wait: bool = True,
        prefix: list[str] | None = None,
        name: str = "m",
        database: str | None = None,
    ) -> Master:
        d = tmp_path / f"{name}{len(started)}"
        d.mkdir()
        m = Master(d, list(args), workers, prefix or [], database)
        started.append(m)
        if wait:
            m.wait_ready()
        return m

    yield start
    for m in started:
        m.close()


def gone(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    """The URL of this test module's private redis-server (AOF, fsync always)."""
    return redis_server.url


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database for this test (skips on a laptop without one)."""
    with backend_url("postgresql", tmp_path) as url:
        yield url
