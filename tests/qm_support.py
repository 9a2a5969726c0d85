"""Helpers of the QueueManager integration tests: services (skip, or fail under CI), a fresh
queue per test with its cleanup, the worker subprocess, a log capture. No fixed sleeps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from supervisor.queuemanager import QueueBackend, QueueManager
from tests.helpers import require_service

RABBITMQ_URL = os.environ.get("SV_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("SV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent
WORKER_SCRIPT = Path(__file__).resolve().parent / "qm_worker_script.py"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    try:
        import pika  # noqa: F401
    except ImportError:
        require_service(False, "pika is not installed (pip install 'supervisor-workers[rabbitmq]')")
    require_service(_reachable("127.0.0.1", 5672), "RabbitMQ is not reachable at 127.0.0.1:5672")


def require_redis() -> None:
    try:
        import redis  # noqa: F401
    except ImportError:
        require_service(False, "redis-py is not installed (pip install redis)")
    require_service(_reachable("127.0.0.1", 6379), "Redis is not reachable at 127.0.0.1:6379")


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QueueSpec:
    """One test's queue: backend, URL, a fresh name (and Redis key prefix)."""

    def __init__(self, backend: QueueBackend) -> None:
        self.backend = backend
        tag = uuid.uuid4().hex[:10]
        self.queue_name = f"qm-test-{tag}"
        self.prefix = f"qmtest{tag}"
        self.url = RABBITMQ_URL if backend is QueueBackend.RABBITMQ else REDIS_URL
        self._made: list[QueueManager] = []

    def manager(self, **kw: Any) -> QueueManager:
        if self.backend is QueueBackend.RABBITMQ:
            qm = QueueManager(
                backend=self.backend, rabbitmq_url=self.url, queue_name=self.queue_name, **kw
            )
        else:
            kw.setdefault("prefix", self.prefix)
            qm = QueueManager(
                backend=self.backend, redis_url=self.url, queue_name=self.queue_name, **kw
            )
        self._made.append(qm)
        return qm

    def worker_args(self, **extra: Any) -> dict[str, Any]:
        return {
            "backend": self.backend.value,
            "url": self.url,
            "queue": self.queue_name,
            "prefix": self.prefix,
            **extra,
        }

    def dead_letter_count(self) -> int:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ok = conn.channel().queue_declare(f"{self.queue_name}.dead", passive=True)
            return int(ok.method.message_count)
        finally:
            conn.close()

    def cleanup(self) -> None:
        for qm in self._made:
            qm.close()
        if self.backend is QueueBackend.RABBITMQ:
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                ch = conn.channel()
                ch.queue_delete(self.queue_name)
                ch.queue_delete(f"{self.queue_name}.dead")
            finally:
                conn.close()
        else:
            import redis

            client = redis.Redis.from_url(self.url)
            try:
                keys = list(client.scan_iter(match="{" + self.prefix + "}*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()


def spec_for(backend: QueueBackend) -> Iterator[QueueSpec]:
    if backend is QueueBackend.RABBITMQ:
        require_rabbitmq()
    else:
        require_redis()
    spec = QueueSpec(backend)
    try:
        yield spec
    finally:
        spec.cleanup()


class LogCapture:
    """The messages the queue package logs (component "queue") while it is installed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._id = logger.add(
            lambda m: self.lines.append(str(m).rstrip("\n")),
            level="DEBUG",
            format="{level} {message}",
            filter=lambda r: r["extra"].get("component") == "queue",
        )

    def text(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        logger.remove(self._id)


class WorkerProc:
    """``tests/qm_worker_script.py`` in a subprocess; its log in a file, its markers in a dir."""

    def __init__(self, tmp: Path, args: dict[str, Any]) -> None:
        self.dir = tmp
        self.log_path = tmp / "worker.log"
        args = {**args, "dir": str(tmp)}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), json.dumps(args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self, task_id: str) -> bool:
        return (self.dir / f"started-{task_id}").exists()

    def finished(self, task_id: str) -> bool:
        return (self.dir / f"finished-{task_id}").exists()

    def release(self) -> None:
        (self.dir / "release").write_text("go")

    def wait(self, timeout_s: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            pytest.fail(f"worker did not exit within {timeout_s} s; log:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
