"""Folding the journal's log files into the task table, in a process of its own.

The broker appends each state change to a mapped log file
(:mod:`supervisor.broker.embedded.journal`);
something must then write those rows into ``task_record``. Doing it in a thread of the broker
cost the broker a fifth of its CPU at full speed (SQLite upserts, and the GIL handed back and
forth with the connection threads at every statement), and the broker's single core is what
bounds throughput. So the fold runs here, in a child process the broker spawns (``python -m
supervisor.broker.embedded.fold``, a fresh interpreter: the broker has threads and must not fork).

It reads the log files from the disk (the broker's writes are in the page cache, so they are
visible here at once), in order, from where it stopped the last time, keeps the latest row of
each task, upserts them in one transaction, and deletes every file that is complete (a file is
complete once a later one exists: the broker never writes an older file again). A frame whose
checksum does not match at the end of the live file is one being written: it is read next time.

Protocol (lines on stdin/stdout): the broker writes the database URL and its own pid first (the
URL is secret-bearing: never on the command line), then ``fold`` whenever it wants the table up
to date (at least once a second), answered ``ok N`` (rows written) or ``error TEXT``; ``exit`` or
the end of stdin stops the process: that is how it learns that the broker died, even by
``kill -9`` (``PR_SET_PDEATHSIG`` would follow the thread that started it, not the broker).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from supervisor import osutil
from supervisor.broker.embedded.frames import Row, log_files, parse
from supervisor.errors import BrokerError


class LogFolder:
    """Reads the log files from where it stopped and upserts their rows into ``table``."""

    def __init__(self, table: Any, base: Path) -> None:
        self.table = table
        self.base = base
        self._no = 0  # the file read last, and how far
        self._at = 0
        self._map: mmap.mmap | None = None
        self.log = logger.bind(component="journal")

    def _mapping(self, number: int, path: Path) -> mmap.mmap | None:
        if self._map is not None and self._no == number:
            return self._map
        self._drop_map()
        try:
            with path.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    return None
                self._map = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        except (FileNotFoundError, ValueError):
            return None
        self._no, self._at = number, 0
        return self._map

    def _drop_map(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def fold(self) -> int:
        """Upsert every complete frame written since the last fold; return how many rows."""
        files = log_files(self.base)
        latest: dict[str, Row] = {}
        done: list[Path] = []
        for i, (number, path) in enumerate(files):
            if number < self._no:  # complete and folded, but its deletion failed: again
                done.append(path)
                continue
            last = i == len(files) - 1
            data = self._mapping(number, path)
            if data is None:
                continue
            rows, at, why = parse(data, self._at)
            for row in rows:
                latest[row[0]] = row
            self._at = at
            if not last:
                if why == "torn":
                    self.log.error(
                        "journal {}: a corrupt frame at offset {}; the rest of the file is skipped",
                        path.name,
                        at,
                    )
                done.append(path)
        if latest:
            try:
                self.table.upsert(list(latest.values()))
            except BaseException:
                self._drop_map()  # read every file again next time (later rows still win)
                self._no = self._at = 0
                raise
        for path in done:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return len(latest)

    def close(self) -> None:
        self._drop_map()


class FoldProcess:
    """The broker's side of the child process: start it, ask it to fold, restart it if it died.

    ``fold()`` raises BrokerError when the child cannot be started, answers an error, dies or
    does not answer within ``timeout_s`` (it is then killed, and started again next time).
    If it cannot be started ``MAX_START_FAILURES`` times in a row (no usable interpreter at
    ``sys.executable``, say), folds run in this process from then on, as they did before."""

    MAX_START_FAILURES = 3

    def __init__(self, database_url: str, base: Path, *, timeout_s: float = 60.0) -> None:
        self.database_url = database_url
        self.base = base
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_failures = 0
        self._local: LogFolder | None = None  # the fallback

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _start(self) -> subprocess.Popen[bytes]:
        import supervisor

        root = str(Path(supervisor.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.broker.embedded.fold", str(self.base)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            raise BrokerError(f"cannot start the journal folder process: {exc}") from None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{self.database_url}\n{os.getpid()}\n".encode())
            proc.stdin.flush()
        except OSError:
            pass  # it died at once: the answer below says so
        answer = osutil.read_line(proc.stdout.fileno(), self.timeout_s)
        if answer != "ready":
            self._discard(proc)
            raise BrokerError(
                f"the journal folder process did not start ({self._status(proc)}; "
                "its error is in the log above)"
            )
        return proc

    @staticmethod
    def _status(proc: subprocess.Popen[bytes]) -> str:
        code = proc.returncode
        if code is None:
            return "still running"
        return f"exit {code}" if code >= 0 else f"signal {-code}"

    def fold(self) -> int:
        if self._proc is not None and self._proc.poll() is not None:
            logger.bind(component="journal").warning(
                "the journal folder process ended ({}); starting a new one",
                self._status(self._proc),
            )
            self._discard(self._proc)
            self._proc = None
        if self._local is not None:
            return self._local.fold()
        if self._proc is None:
            try:
                self._proc = self._start()
            except BrokerError:
                self._start_failures += 1
                if self._start_failures < self.MAX_START_FAILURES:
                    raise
                return self._fold_here()
            self._start_failures = 0
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"fold\n")
            proc.stdin.flush()
        except OSError:
            pass
        answer = osutil.read_line(proc.stdout.fileno(), self.timeout_s)
        if answer.startswith("ok "):
            return int(answer[3:])
        if answer.startswith("error "):
            raise BrokerError(answer[6:])
        self._discard(proc)
        self._proc = None
        raise BrokerError(
            f"the journal folder process stopped answering ({self._status(proc)}); "
            "a new one is started at the next fold"
        )

    def _fold_here(self) -> int:
        from supervisor.broker.embedded.tasktable import TaskTable
        from supervisor.db import make_engine

        logger.bind(component="journal").error(
            "the journal folder process failed to start {} times; folding in the broker "
            "process from now on",
            self._start_failures,
        )
        self._local = LogFolder(TaskTable(make_engine(self.database_url)), self.base)
        return self._local.fold()

    @staticmethod
    def _discard(proc: subprocess.Popen[bytes]) -> None:
        """Kill (if need be), reap, and close the pipes of ``proc``."""
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local.table.close()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(b"exit\n")
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        self._discard(proc)


# -- the child process -----------------------------------------------------------------------
def _serve(folder: LogFolder, stdin: Any, stdout: Any) -> None:
    for line in stdin:
        command = line.strip()
        if command == "exit":
            return
        if command != "fold":
            stdout.write(f"error unknown command {command[:40]!r}\n")
        else:
            try:
                stdout.write(f"ok {folder.fold()}\n")
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
                stdout.write(f"error {text}\n")
        stdout.flush()


def main() -> int:
    from supervisor.broker.embedded.tasktable import TaskTable
    from supervisor.db import make_engine

    logger.enable("supervisor")  # a fresh interpreter: the package's log starts disabled
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)  # the broker decides when we stop
    # No PR_SET_PDEATHSIG: it fires when the *thread* that started us ends (a connection
    # thread of the broker, say), not the broker. The end of stdin is the broker's death.
    url = sys.stdin.readline().strip()
    parent = sys.stdin.readline().strip()
    base = Path(sys.argv[1])
    if not url or parent != str(os.getppid()):
        return 2  # not started by a broker, or it is gone already
    table = TaskTable(make_engine(url))
    folder = LogFolder(table, base)
    print("ready", flush=True)
    try:
        _serve(folder, sys.stdin, sys.stdout)
    finally:
        folder.close()
        table.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
