"""A private ``redis-server`` for tests: a free port, a temp folder, AOF with fsync always.

It can be killed with SIGKILL and started again on the same port and folder (the AOF replays),
and every wait is a poll against a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")


def redis_server_path() -> str | None:
    """The redis-server binary, or None when it is missing."""
    if os.path.isfile(REDIS_SERVER) and os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    return shutil.which("redis-server")


def require_redis_server() -> None:
    """Skip without redis-server on a laptop; fail under CI (``CI`` set)."""
    from tests.helpers import require_service

    require_service(
        redis_server_path() is not None, "redis-server is not installed (apt install redis-server)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; :meth:`start`, :meth:`kill` (-9), :meth:`restart`, :meth:`stop`."""

    def __init__(self, binary: str | None = None, *, port: int | None = None) -> None:
        found = binary or redis_server_path()
        if found is None:
            raise FileNotFoundError("redis-server not found")
        self.binary = found
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="sv-redis-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait (deadline poll) until it answers PING."""
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.dir),
                "--maxmemory-policy", "noeviction",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer in time")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        return ""

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """kill -9, then start again on the same port and folder (the AOF is replayed)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        self._tmp.cleanup()


@contextlib.contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped at the end; skipped on a laptop without
    redis-server, failing under CI (the ``redis_server`` fixtures of each scope use it)."""
    require_redis_server()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
