"""The journal: an append-only log in front of the task table, so a push costs one write().

Why a log and not a commit per push: a push must not return before the task is safe, and a
SQLite commit costs 40-60 µs of the broker's single core (three B-trees to update, WAL frames,
checkpoints), which halved the push rate. Appending a framed, pickled batch of row snapshots to a
file is one ``write()`` of a few microseconds; the rows are then folded into ``task_record`` in
large transactions by a background thread, off every request's path.

Each state change is appended as it happens, under the broker's lock (so the log's order is the
broker's order), by the thread that made it: no hand-off to a writer thread, whose wake-ups cost
more than the write itself. Folds into the table are the grouped part: a thread asks once every
``fold_interval_s`` for every row appended since the last fold to be upserted, in one
transaction. The broker's journal runs that fold in a child process of its own
(:mod:`supervisor.broker.embedded.fold`: the broker's single core is what bounds throughput); tests
and tools fold in-process with the same code.

What it promises: an appended batch survives the process being killed (``kill -9``, OOM): it is
in the kernel's page cache. Like SQLite's ``synchronous=NORMAL`` it does not fsync, so a power
cut or kernel crash can lose the last moments. Each frame carries its length and CRC32; replay
stops at the first torn or corrupt frame.

Files: ``LOG.N`` for N = 1, 2, ... next to each other; a fold that finds the current file large
switches to a new one first; the folder deletes each file once it is complete (a later one
exists) and folded. At start, every log file is replayed into the table (later snapshots win)
and deleted before anything else runs.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy import exc as sa_exc

from supervisor.broker.embedded.fold import FoldProcess, LogFolder
from supervisor.broker.embedded.frames import FRAME, Row, frame, log_files, read_log
from supervisor.broker.embedded.tasktable import TaskTable
from supervisor.broker.records import TaskRecord
from supervisor.errors import BrokerError, DatabaseBusy
from supervisor.policy import compute_backoff

T = TypeVar("T")


class Journal:
    """The log and its fold into :class:`TaskTable` (see the module docstring).

    ``folder`` runs the folds: a :class:`~supervisor.broker.embedded.fold.FoldProcess` (the broker's
    choice) or, by default, a :class:`~supervisor.broker.embedded.fold.LogFolder` in this
    process."""

    def __init__(
        self,
        table: TaskTable,
        log_path: str | os.PathLike[str],
        *,
        fold_interval_s: float = 1.0,
        rotate_bytes: int = 8 << 20,
        map_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
        folder: FoldProcess | LogFolder | None = None,
    ) -> None:
        self.table = table
        self.engine = table.engine
        self.clock = clock
        self.base = Path(log_path)
        self.fold_interval_s = fold_interval_s
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()  # guards the mapping, the position and the counters
        self._fold_lock = threading.Lock()  # one fold at a time
        self._folder = folder if folder is not None else LogFolder(table, self.base)
        self._stop = threading.Event()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self.map_bytes = max(map_bytes, rotate_bytes)
        self._mm: mmap.mmap | None = None
        self._size = 0  # bytes mapped in the current file
        self._file_no = 0
        self._file_bytes = 0  # bytes written in the current file
        self.log = logger.bind(component="journal")
        self.appends = 0
        self.folds = 0

    # -- start: replay what a previous run left ---------------------------------------------
    def _files(self) -> list[Path]:
        return [p for _, p in log_files(self.base)]

    def migrate(self) -> int:
        """Create/upgrade the table, then fold every leftover log file into it and delete it."""
        version = self.table.migrate()
        self.base.parent.mkdir(parents=True, exist_ok=True)
        files = self._files()
        latest: dict[str, Row] = {}
        for path in files:
            rows, clean = read_log(path)
            if not clean:
                self.log.warning(
                    "journal {}: stopped at a torn or corrupt frame after {} "
                    "row(s) (the tail of a crash)",
                    path.name,
                    len(rows),
                )
            for row in rows:
                latest[row[0]] = row
        if latest:
            self.table.upsert(list(latest.values()))
            self.log.info(
                "journal: folded {} task snapshot(s) from {} log file(s)", len(latest), len(files)
            )
        for path in files:
            path.unlink()
        self._open(1)
        return version

    def _path(self, number: int) -> Path:
        return self.base.with_name(f"{self.base.name}.{number}")

    def _open(self, number: int, at_least: int = 0) -> None:
        """Map a new, zero-filled log file; the folder deletes the current one once folded."""
        size = max(self.map_bytes, at_least + FRAME.size)
        fd = os.open(self._path(number), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Reserve the blocks now: writing into a sparse mapping on a full disk would kill the
            # broker with SIGBUS; this way a full disk is an OSError here, reported to callers.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        if self._mm is not None:
            self._mm.close()
        self._mm, self._size, self._file_no, self._file_bytes = mm, size, number, 0

    # -- reading (the table, once what was appended is folded) -------------------------------
    def _read(self, read: Callable[[], T]) -> T:
        """``read()`` of the table once every appended change is folded into it. A table that
        cannot be brought up to date (its file locked by another process: a backup, a
        migration) would answer wrong (rows missing, old statuses): refuse instead."""
        try:
            self.fold()
            return read()
        except (BrokerError, sa_exc.SQLAlchemyError, sqlite3.Error) as exc:
            where = self.table.engine.url.render_as_string(hide_password=True)
            cause = getattr(exc, "orig", None) or exc
            self.log.warning("task records not read: the task table is not up to date: {}", cause)
            raise DatabaseBusy(
                f"task records cannot be read now: the task table in {where} is locked or "
                f"unreachable ({cause}); another process may hold a lock on it (a backup, a "
                "migration); nothing is lost: retry once it is released"
            ) from None

    def load_active(self) -> list[TaskRecord]:
        return self.table.load_active()

    def get(self, task_id: str) -> TaskRecord | None:
        return self._read(lambda: self.table.get(task_id))

    def query(self, **filters: Any) -> list[TaskRecord]:
        return self._read(lambda: self.table.query(**filters))

    def counts(self) -> dict[str, int]:
        return self._read(self.table.counts)

    def delete(self, where: Any) -> int:
        # Everything logged so far is folded, and its file completed (and so deleted by the
        # folder) first: a frame folded again after the delete (a restarted folder re-reads the
        # live file from its start) would bring a deleted task back.
        self.fold(rotate=True)
        return self.table.delete(where)

    # -- writing ----------------------------------------------------------------------------
    def write(self, row: Row) -> None:
        """Append one snapshot now: it is safe when this returns. Raises BrokerError if the log
        cannot be written (the change is then not safe, and the caller says so)."""
        self.write_many([row])

    def ensure_room(self, n: int) -> None:
        """Make sure the next ``n`` bytes can be appended without opening a file, opening one
        now if need be; raises BrokerError if that fails (a full disk) or the journal is closing.

        The broker calls it before it changes anything, so that a journal that cannot take the
        change refuses the call cleanly instead of after the change was made in memory."""
        with self._lock:
            if self._closing:
                raise BrokerError("the broker is shutting down; the change was not accepted")
            if self._file_bytes + n <= self._size:
                return
            try:
                self._open(self._file_no + 1, at_least=n)
            except OSError as exc:
                self.log.error("journal cannot grow: {}", exc)
                raise BrokerError(f"the task journal cannot be written: {exc}") from None

    def write_many(self, rows: list[Row]) -> None:
        data = frame(rows)
        with self._lock:
            if self._closing:  # after the final fold nothing would keep it: refuse, loudly
                raise BrokerError("the broker is shutting down; the change was not accepted")
            at, n = self._file_bytes, len(data)
            try:
                if at + n > self._size:  # full: go on in a new file
                    self._open(self._file_no + 1, at_least=n)
                    at = 0
                assert self._mm is not None
                # A copy into the shared mapping: in the page cache (safe from kill -9) with no
                # system call, so the GIL is never given up in the middle of a push.
                self._mm[at : at + n] = data
            except (OSError, ValueError) as exc:
                self.log.error("journal write failed: {}", exc)
                raise BrokerError(f"the task journal cannot be written: {exc}") from None
            self._file_bytes = at + n
            self.appends += 1

    # -- folding into the table -------------------------------------------------------------
    def fold(self, *, rotate: bool = False) -> int:
        """Write every appended snapshot to the table now; return how many rows. ``rotate``:
        start a new log file first if the current one holds anything."""
        with self._fold_lock:
            with self._lock:
                if self._file_bytes >= self.rotate_bytes or (rotate and self._file_bytes):
                    self._open(self._file_no + 1)  # the folder deletes the full one
            n = self._folder.fold()
            self.folds += 1
            return n

    # -- threads ----------------------------------------------------------------------------
    def start(self) -> None:
        t = threading.Thread(target=self._fold_loop, name="journal-fold", daemon=True)
        t.start()
        self._threads.append(t)

    def _fold_loop(self) -> None:
        failures = 0
        pause = 0.0  # the first fold at once: it starts the folder process while we are idle
        while not self._stop.wait(pause):  # close() does the final fold
            try:
                self.fold()
                failures = 0
            except Exception as exc:
                failures += 1
                self.log.error(
                    "folding the journal into the task table failed "
                    "(retrying with backoff; nothing is lost): {}",
                    exc,
                )
            pause = (
                compute_backoff(failures, base_s=0.5, cap_s=30.0, jitter=False)
                if failures
                else self.fold_interval_s
            )

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new snapshots, fold everything, stop the threads, delete the log."""
        with self._lock:
            self._closing = True
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        try:
            self.fold()
        except Exception as exc:
            self.log.error(
                "final fold failed; the journal file is kept for the next start: {}", exc
            )
        else:
            with self._lock:
                if self._mm is not None:
                    self._mm.close()
                    self._mm = None
            for path in self._files():
                path.unlink()
        finally:
            self._folder.close()
            self.table.close()


def open_journal(
    database_url: str,
    *,
    run_dir: str,
    clock: Callable[[], float] = time.time,
    fold_process: bool = False,
    busy_timeout_s: float = 5.0,
    **options: Any,
) -> Journal:
    """The journal for a database URL: the log sits next to a SQLite file, else in ``run_dir``.
    ``fold_process``: fold in a child process (the broker), else in this one; ``busy_timeout_s``:
    how long a locked SQLite file is waited for before a read is refused."""
    from sqlalchemy.engine import make_url

    from supervisor.db import make_engine

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        log_path = Path(str(url.database) + ".tasklog")
    else:
        log_path = Path(run_dir) / "tasks.tasklog"
    table = TaskTable(make_engine(database_url, busy_timeout_s=busy_timeout_s), clock=clock)
    folder = (
        FoldProcess(url.render_as_string(hide_password=False), log_path) if fold_process else None
    )
    return Journal(table, log_path, clock=clock, folder=folder, **options)
