"""The processes of the Redis benchmarks: a private ``redis-server``, our nodes, Huey's and
Celery's consumers, and a ``kill -9`` of a process tree.

Every wait polls with a deadline; every process is stopped with SIGTERM then a deadline, then
SIGKILL. Our nodes are ``python -m supervisor run --broker redis://… --key-prefix <unique>``
subprocesses started from the root of the tree this ``bench/`` sits in (``PYTHONPATH`` = that
root, so a copy of the tree benchmarks its own code, not the editable install's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import supervisor  # noqa: E402
from tests.redisserver import free_port, redis_server_path  # noqa: E402

WORKERS = 2
BIN = Path(sys.executable).parent


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, pause_s: float = 0.0005
) -> Any:
    """Poll ``predicate`` until it returns something true; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(pause_s)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every descendant at once (children listed first, so none escapes by
    re-parenting); returns the pids killed."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    return [p.pid for p in procs]


def _answers(call: Callable[[], Any]) -> bool:
    """Whether a no-op task round trip (``call``) returned 1 in time (a timeout is a no)."""
    try:
        return bool(call() == 1)
    except Exception:
        return False


class BenchRedis:
    """A private redis-server on loopback: a free port, a temp folder, AOF on with
    ``appendfsync`` as given (``everysec`` by default here; the deploy files use ``always``)."""

    def __init__(self, appendfsync: str = "everysec") -> None:
        binary = redis_server_path()
        if binary is None:
            raise FileNotFoundError("redis-server not found")
        self.binary, self.appendfsync, self.port = binary, appendfsync, free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", self._tmp.name,
            "--maxmemory-policy", "noeviction", "--slowlog-log-slower-than", "1000",
        ]  # fmt: skip
        log = open(Path(self._tmp.name, "redis.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = self.client()

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with contextlib.suppress(redis.ConnectionError):
                return bool(client.ping())
            return False

        wait_for(answers, 10, "redis-server", pause_s=0.01)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far."""
        if self.proc is None:
            return 0.0
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        self.proc = None
        self._tmp.cleanup()


class Node:
    """One ``supervisor run`` node on the benchmark's Redis (see :func:`supervisor_node`)."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, queue: supervisor.Queue) -> None:
        self.proc, self.name, self.queue = proc, name, queue

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def supervisor_node(
    url: str,
    prefix: str,
    *,
    name: str,
    workers: int = WORKERS,
    extra: tuple[str, ...] = (),
) -> Iterator[Node]:
    """Start a node (``--node-name name``) and yield it once its workers are idle; SIGTERM it
    at the end (unless it was killed)."""
    tmp = tempfile.mkdtemp(prefix=f"bench-{name}-")
    log = open(os.path.join(tmp, "node.log"), "wb")  # noqa: SIM115
    cmd = [
        sys.executable, "-m", "supervisor", "run", "--app", "bench.app", "--workers", str(workers),
        "--run-dir", os.path.join(tmp, "run"), "--broker", url, "--key-prefix", prefix,
        "--node-name", name, "--database", f"sqlite:///{tmp}/bench.db", "--metrics-port", "0",
        "--log-format", "json", "--log-level", "WARNING", "--no-scheduler", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the code beside this bench/, not the install
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    q = supervisor.connect(broker=url, key_prefix=prefix)
    try:

        def idle() -> bool:
            if proc.poll() is not None:
                tail = Path(tmp, "node.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {name} exited with {proc.returncode}: {tail}")
            status = q.broker.node_statuses().get(name) or {}
            states = [w.get("state") for w in status.get("workers") or []]
            return len(states) == workers and all(s == "idle" for s in states)

        wait_for(idle, 60, f"the workers of node {name}", pause_s=0.02)
        yield Node(proc, name, q)
    finally:
        stop_process(proc)
        log.close()
        q.broker.close()
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(tmp)


class Peer:
    """A peer's app module (its tasks as attributes) and its consumer process."""

    def __init__(self, app: Any, proc: subprocess.Popen[bytes]) -> None:
        self.app, self.proc = app, proc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def huey_consumer(url: str, *, notify: bool) -> Iterator[Peer]:
    """``huey_consumer bench.huey_app.huey_plain|huey_notify -w 2 -k process``; yields that app
    (``bench.huey_app.plain`` or ``.notify``) once a task round trip works."""
    os.environ["BENCH_REDIS_URL"] = url
    from bench import huey_app

    app = huey_app.notify if notify else huey_app.plain
    app.huey.storage.flush_all()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    target = "bench.huey_app.huey_notify" if notify else "bench.huey_app.huey_plain"
    proc = subprocess.Popen(
        [str(BIN / "huey_consumer"), target, "-w", str(WORKERS), "-k", "process", "-q"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(lambda: app.noop()(blocking=True, timeout=1)), 30, "huey")
        app.huey.storage.flush_results()
        yield Peer(app, proc)
    finally:
        stop_process(proc)


CELERY_ARGS = (
    "worker", "-c", str(WORKERS), "-P", "prefork", "-O", "fair", "--without-gossip",
    "--without-mingle", "--without-heartbeat", "-l", "WARNING",
)  # fmt: skip


@contextlib.contextmanager
def celery_worker(url: str, queue: str, *, acks_late: bool = False) -> Iterator[Peer]:
    """``celery -A bench.celery_app worker -c 2 -P prefork -O fair …`` on queue ``queue``;
    yields the ``bench.celery_app`` module once a task round trip works."""
    os.environ["BENCH_REDIS_URL"] = url
    os.environ["BENCH_CELERY_ACKS_LATE"] = "1" if acks_late else "0"
    from bench import celery_app

    celery_app.configure(url, queue, acks_late=acks_late)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_CELERY_QUEUE=queue)
    proc = subprocess.Popen(
        [str(BIN / "celery"), "-A", "bench.celery_app", *CELERY_ARGS, "-Q", queue,
         "-n", f"{queue}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(lambda: celery_app.noop.delay().get(timeout=1)), 60, "celery")
        yield Peer(celery_app, proc)
    finally:
        stop_process(proc)
