"""The supervisor under test: a real ``supervisor run`` subprocess and an external producer.

This process is the external producer: it connects with ``supervisor.connect(run_dir=...)``
like any client. Each figure gets a fresh master (fresh broker, empty records) in a fresh tmp
folder that also holds its SQLite database (``--database sqlite:///<tmp>/bench.db``, never the
repo's working directory), so one figure's leftovers (finished records, journal rows, counters)
cannot slow the next. Every master is started with an explicit ``--durability``: ``journal``
(the product default: each push returns once its snapshot is committed) or ``none`` (in memory).
Nothing waits a fixed time: every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import supervisor
from supervisor.errors import SupervisorError

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
POLL_S = 0.05  # stats() is polled at most this often while waiting for a batch to finish
START_S = 30.0
STOP_S = 30.0
DURABILITIES = ("journal", "none")  # `supervisor run --durability`; journal is the default
DB_NAME = "bench.db"


def supervisor_command(run_dir: str, *, durability: str, database: str) -> list[str]:
    """The master's command line. ``--metrics-port 0``: the HTTP endpoints stay on (the
    product default) but on a free port, so a master of someone else on 9810 does not matter."""
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {DURABILITIES}, got {durability!r}")
    return [
        "supervisor",
        "run",
        "--app",
        "bench.app",
        "--workers",
        str(WORKERS),
        "--run-dir",
        run_dir,
        "--durability",
        durability,
        "--database",
        database,
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "WARNING",
    ]


class BenchError(Exception):
    pass


@dataclass
class StatsProbe:
    """How long the ``stats()`` polls took (they hold the broker's lock)."""

    calls: int = 0
    total_s: float = 0.0
    worst_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.calls += 1
        self.total_s += seconds
        self.worst_s = max(self.worst_s, seconds)

    @property
    def mean_ms(self) -> float:
        return 1000 * self.total_s / self.calls if self.calls else 0.0


class Master:
    """``supervisor run`` as a subprocess in a fresh run folder; a context manager."""

    def __init__(self, durability: str = "journal") -> None:
        self.durability = durability
        self.tmp = tempfile.mkdtemp(prefix="supervisor-bench-")
        self.run_dir = os.path.join(self.tmp, "run")
        self.log_path = os.path.join(self.tmp, "master.log")
        self.db_path = os.path.join(self.tmp, DB_NAME)
        self.command = supervisor_command(
            self.run_dir, durability=durability, database=f"sqlite:///{self.db_path}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.queue: supervisor.Queue | None = None

    def __enter__(self) -> Master:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self.queue = self._connect()
            self._wait_workers_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _alive_or_raise(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"`{' '.join(self.command)}` exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def _connect(self) -> supervisor.Queue:
        deadline = time.monotonic() + START_S
        while True:
            self._alive_or_raise()
            if os.path.exists(os.path.join(self.run_dir, "address")):
                with contextlib.suppress(SupervisorError):
                    return supervisor.connect(run_dir=self.run_dir, timeout_s=30.0)
            if time.monotonic() > deadline:
                raise BenchError(f"no broker answered within {START_S:g} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _wait_workers_idle(self) -> None:
        """Until the master's published status shows every worker idle (it publishes each 1 s)."""
        deadline = time.monotonic() + START_S
        while True:
            self._alive_or_raise()
            status = self.call("get_status")
            workers = (status.get("master") or {}).get("workers") or []
            if len(workers) == WORKERS and all(w["state"] == "idle" for w in workers):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"workers not idle within {START_S:g} s: {workers}")
            time.sleep(0.05)

    def call(self, method: str, *args: Any) -> Any:
        """A broker call the public Queue does not offer (``get_status``), as the CLI makes it."""
        assert self.queue is not None
        return getattr(self.queue.broker, method)(*args)

    def broker_pid(self) -> int | None:
        """The broker process: the master's child listening on the run folder's socket."""
        import psutil

        assert self.proc is not None
        sock = os.path.join(self.run_dir, "broker.sock")
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                if any(c.laddr == sock for c in child.net_connections(kind="unix")):
                    return int(child.pid)
        return None

    def processes(self) -> dict[str, list[Any]]:
        """psutil.Process objects of the broker, its journal folder and the workers (CPU time)."""
        import psutil

        out: dict[str, list[Any]] = {"broker": [], "workers": [], "folder": []}
        with contextlib.suppress(psutil.Error):
            pid = self.broker_pid()
            if pid is not None:
                broker = psutil.Process(pid)
                out["broker"].append(broker)
                out["folder"].extend(broker.children())  # the journal's fold process
            for w in (self.call("get_status").get("master") or {}).get("workers") or []:
                out["workers"].append(psutil.Process(int(w["pid"])))
        return out

    def journal_rows(self) -> int | None:
        """Rows in the journal's task table (None: no journal, or unreadable)."""
        import sqlite3

        if self.durability != "journal" or not os.path.exists(self.db_path):
            return None
        try:
            with contextlib.closing(sqlite3.connect(self.db_path, timeout=5)) as db:
                return int(db.execute("SELECT count(*) FROM task_record").fetchone()[0])
        except sqlite3.Error:
            return None

    def stop(self) -> None:
        """SIGTERM, wait with a deadline, SIGKILL the group if it hangs; remove the folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                print(
                    f"warning: master did not stop within {STOP_S:g} s; killing its group",
                    file=sys.stderr,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_S)
        if self.proc is not None and self.proc.returncode not in (0, None):
            print(
                f"warning: master exited with {self.proc.returncode}:\n{self.log_tail()}",
                file=sys.stderr,
            )
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def finished_count(counters: dict[tuple[str, str, str], int], task_type: str) -> tuple[int, int]:
    """(all finished, finished not succeeded) of ``task_type``."""
    done = bad = 0
    for (event, ttype, status), n in counters.items():
        if event == "finished" and ttype == task_type:
            done += n
            if status != "succeeded":
                bad += n
    return done, bad


def wait_finished(
    queue: supervisor.Queue, task_type: str, count: int, *, timeout_s: float, probe: StatsProbe
) -> float:
    """Poll ``stats()`` (at most every POLL_S) until ``count`` tasks finished; return when."""
    deadline = time.monotonic() + timeout_s
    while True:
        t0 = time.perf_counter()
        counters = queue.stats()["counters"]
        now = time.perf_counter()
        probe.observe(now - t0)
        done, bad = finished_count(counters, task_type)
        if bad:
            raise BenchError(f"{bad} {task_type} task(s) did not succeed")
        if done >= count:
            return now
        if time.monotonic() > deadline:
            raise BenchError(f"only {done}/{count} {task_type} tasks finished in {timeout_s:g} s")
        time.sleep(max(0.0, POLL_S - (time.perf_counter() - t0)))


@dataclass
class Throughput:
    tasks_per_s: float
    elapsed_s: float
    push_s: float  # time spent pushing (the producer's share of elapsed_s)
    stats: StatsProbe = field(default_factory=StatsProbe)
    durability: str = "journal"
    push_call_ms: list[float] = field(default_factory=list)  # round trip of each push call
    journal_rows: int | None = None  # rows in the journal at the end (journal mode)
    cpu_s: dict[str, float] = field(default_factory=dict)  # see cpu_times(), over the run


Profiler = Callable[["Master"], contextlib.AbstractContextManager[Any]]


def throughput(
    count: int,
    *,
    task_type: str = "noop",
    params: dict[str, Any] | None = None,
    batch: int = 0,
    timeout_s: float = 300.0,
    durability: str = "journal",
    profile: Profiler | None = None,
) -> Throughput:
    """Push ``count`` tasks (one by one, or ``batch`` per call) and time until all finished.

    ``profile(master)``, if given, is a context manager entered once the workers are idle and
    left when every task finished (e.g. ``py-spy record`` on the broker process)."""
    task = {"type": task_type, "params": params or {}}
    calls: list[float] = []
    with Master(durability) as master:
        q = master.queue
        assert q is not None
        probe = StatsProbe()
        clock = time.perf_counter
        procs = master.processes()
        with profile(master) if profile is not None else contextlib.nullcontext():
            cpu0 = cpu_times(procs)
            t0 = clock()
            if batch:
                for start in range(0, count, batch):
                    c0 = clock()
                    q.push_tasks([task] * min(batch, count - start))
                    calls.append(clock() - c0)
            else:
                for _ in range(count):
                    c0 = clock()
                    q.push_task(task)
                    calls.append(clock() - c0)
            pushed = clock()
            end = wait_finished(q, task_type, count, timeout_s=timeout_s, probe=probe)
            cpu1 = cpu_times(procs)
        rows = master.journal_rows()
    cpu = {role: cpu1[role] - cpu0.get(role, 0.0) for role in cpu1}
    return Throughput(
        count / (end - t0),
        end - t0,
        pushed - t0,
        probe,
        durability,
        [1000 * c for c in calls],
        rows,
        cpu,
    )


def cpu_times(procs: dict[str, list[Any]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes (psutil.Process): ``ROLE`` (user +
    system) and ``ROLE_sys``; for the broker also ``broker_wchar`` and ``broker_syscw``
    (/proc/PID/io: bytes and write calls, the journal's SQLite writes plus its socket replies)."""
    out: dict[str, float] = {}
    for role, members in procs.items():
        total = system = 0.0
        for p in members:
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
                system += t.system
        out[role] = total
        out[f"{role}_sys"] = system
    for p in procs.get("broker", [])[:1]:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{p.pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
            out["broker_wchar"] = float(io["wchar"])
            out["broker_syscw"] = float(io["syscw"])
    return out


@dataclass
class Latency:
    start_ms: list[float]  # record started_at - producer clock before the push
    handler_ms: list[float]  # handler's own clock at entry - producer clock before the push
    push_ms: list[float] = field(default_factory=list)  # round trip of the push call itself


def latency(samples: int, *, timeout_s: float = 10.0, durability: str = "journal") -> Latency:
    """Push one ``stamp`` task at a time to idle workers; wait for each to finish first."""
    out = Latency([], [])
    with Master(durability) as master:
        q = master.queue
        assert q is not None
        for _ in range(samples):
            before = time.time()
            c0 = time.perf_counter()
            task_id = q.push_task({"type": "stamp", "params": {}})
            out.push_ms.append(1000 * (time.perf_counter() - c0))
            deadline = time.monotonic() + timeout_s
            while True:
                rec = q.get_task(task_id)
                if rec is not None and rec["status"] == "succeeded":
                    break
                if rec is not None and rec["status"] in ("dead", "cancelled"):
                    raise BenchError(f"latency task {task_id} ended {rec['status']}")
                if time.monotonic() > deadline:
                    raise BenchError(f"latency task {task_id} not finished in {timeout_s:g} s")
                time.sleep(0.001)
            out.start_ms.append(1000 * (rec["started_at"] - before))
            out.handler_ms.append(1000 * (rec["result"] - before))
    return out
