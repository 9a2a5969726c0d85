"""The journal: an append-only log in front of the task table, so a push costs one write().

Why a log and not a commit per push: a push must not return before the task is safe, and a
SQLite commit costs 40-60 µs of the broker's single core (three B-trees to update, WAL frames,
checkpoints), which halved the push rate. Appending a framed, pickled batch of row snapshots to a
file is one ``write()`` of a few microseconds; the rows are then folded into ``task_record`` in
large transactions by a background thread, off every request's path.

Each state change is appended as it happens, under the broker's lock (so the log's order is the
broker's order), by the thread that made it: no hand-off to a writer thread, whose wake-ups cost
more than the write itself. Folds into the table are the grouped part: one transaction every
``fold_interval_s`` for every task that changed since the last.

What it promises: an appended batch survives the process being killed (``kill -9``, OOM): it is
in the kernel's page cache. Like SQLite's ``synchronous=NORMAL`` it does not fsync, so a power
cut or kernel crash can lose the last moments. Each frame carries its length and CRC32; replay
stops at the first torn or corrupt frame.

Files: ``LOG.N`` for N = 1, 2, ... next to each other; a fold that finds the current file large
switches to a new one, folds everything the old one holds, then deletes it. At start, every log
file is replayed into the table (later snapshots win) and deleted before anything else runs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loguru import logger

from supervisor.broker.journal import TaskTable, record_from_row
from supervisor.broker.records import TaskRecord
from supervisor.errors import BrokerError
from supervisor.policy import compute_backoff

_FRAME = struct.Struct("<II")  # payload length, crc32
Row = tuple[Any, ...]


def _frame(rows: list[Row]) -> bytes:
    payload = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_log(path: Path) -> tuple[list[Row], bool]:
    """Every row in the log file at ``path``, in order; and whether it ended cleanly."""
    data = path.read_bytes()
    rows: list[Row] = []
    at = 0
    while at < len(data):
        if at + _FRAME.size > len(data):
            return rows, False
        size, crc = _FRAME.unpack_from(data, at)
        if size == 0 and crc == 0:
            return rows, True  # the zero-filled rest of a mapped file: nothing more was written
        payload = data[at + _FRAME.size : at + _FRAME.size + size]
        if len(payload) != size or zlib.crc32(payload) != crc:
            return rows, False
        try:
            batch = pickle.loads(payload)
        except Exception:
            return rows, False
        rows.extend(batch)
        at += _FRAME.size + size
    return rows, True


class Journal:
    """The log and its fold into :class:`TaskTable` (see the module docstring)."""

    def __init__(
        self,
        table: TaskTable,
        log_path: str | os.PathLike[str],
        *,
        fold_interval_s: float = 1.0,
        rotate_bytes: int = 8 << 20,
        map_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.engine = table.engine
        self.clock = clock
        self.base = Path(log_path)
        self.fold_interval_s = fold_interval_s
        self.rotate_bytes = rotate_bytes
        self._cond = threading.Condition()
        self._unfolded: dict[str, Row] = {}  # in the log, not yet in the table (latest per task)
        # _cond guards the file descriptor, _unfolded and the counters
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self.map_bytes = max(map_bytes, rotate_bytes)
        self._mm: mmap.mmap | None = None
        self._size = 0  # bytes mapped in the current file
        self._file_no = 0
        self._file_bytes = 0  # bytes written in the current file
        self._retired: list[Path] = []  # full files whose rows are not all folded yet
        self.log = logger.bind(component="journal")
        self.appends = 0
        self.folds = 0

    # -- start: replay what a previous run left ---------------------------------------------
    def _files(self) -> list[Path]:
        pattern = re.compile(re.escape(self.base.name) + r"\.(\d+)$")
        found = [
            (int(m[1]), p)
            for p in self.base.parent.glob(self.base.name + ".*")
            if (m := pattern.match(p.name))
        ]
        return [p for _, p in sorted(found)]

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
                if isinstance(row, tuple) and row and isinstance(row[0], str):
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
        """Map a new, zero-filled log file; the current one (if any) is retired until folded."""
        size = max(self.map_bytes, at_least + _FRAME.size)
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
            self._retired.append(self._path(self._file_no))
        self._mm, self._size, self._file_no, self._file_bytes = mm, size, number, 0

    # -- reading (the table, with what is not folded yet laid over it) ----------------------
    def load_active(self) -> list[TaskRecord]:
        return self.table.load_active()

    def get(self, task_id: str) -> TaskRecord | None:
        with self._cond:
            row = self._unfolded.get(task_id)
        if row is not None:
            try:
                return record_from_row(row)
            except (ValueError, TypeError, KeyError) as exc:
                self.log.error("task snapshot {!r} is corrupt: {}", task_id, exc)
        return self.table.get(task_id)

    def query(self, **filters: Any) -> list[TaskRecord]:
        self.fold()
        return self.table.query(**filters)

    def counts(self) -> dict[str, int]:
        self.fold()
        return self.table.counts()

    def delete(self, where: Any) -> int:
        self.fold()
        return self.table.delete(where)

    # -- writing ----------------------------------------------------------------------------
    def write(self, row: Row) -> None:
        """Append one snapshot now: it is safe when this returns. Raises BrokerError if the log
        cannot be written (the change is then not safe, and the caller says so)."""
        self.write_many((row,))

    def write_many(self, rows: Iterable[Row]) -> None:
        batch = list(rows)
        data = _frame(batch)
        with self._cond:
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
            for row in batch:
                self._unfolded[row[0]] = row

    # -- folding into the table -------------------------------------------------------------
    def fold(self) -> int:
        """Write every appended snapshot to the table now; return how many rows."""
        with self._fold_lock:
            with self._cond:
                if self._file_bytes >= self.rotate_bytes:
                    self._open(self._file_no + 1)
                # Every row of a retired file is in ``rows`` (or was folded before).
                rows = dict(self._unfolded)
                retired, self._retired = self._retired, []
            if rows:
                try:
                    self.table.upsert(list(rows.values()))
                except Exception:
                    with self._cond:
                        self._retired[:0] = retired  # kept until a fold succeeds
                    raise
                self.folds += 1
                with self._cond:
                    for task_id, row in rows.items():
                        if self._unfolded.get(task_id) is row:
                            del self._unfolded[task_id]
            for path in retired:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return len(rows)

    # -- threads ----------------------------------------------------------------------------
    def start(self) -> None:
        t = threading.Thread(target=self._folder, name="journal-fold", daemon=True)
        t.start()
        self._threads.append(t)

    def _folder(self) -> None:
        failures = 0
        while True:
            pause = (
                compute_backoff(failures, base_s=0.5, cap_s=30.0, jitter=False)
                if failures
                else self.fold_interval_s
            )
            if self._stop.wait(pause):
                return  # close() does the final fold
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new snapshots, append and fold everything, stop the threads, delete the log."""
        with self._cond:
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
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            for path in self._files():
                path.unlink()
        self.table.close()


def open_journal(
    database_url: str, *, run_dir: str, clock: Callable[[], float] = time.time, **options: Any
) -> Journal:
    """The journal for a database URL: the log sits next to a SQLite file, else in ``run_dir``."""
    from sqlalchemy.engine import make_url

    from supervisor.db import make_engine

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        log_path = Path(str(url.database) + ".tasklog")
    else:
        log_path = Path(run_dir) / "tasks.tasklog"
    return Journal(
        TaskTable(make_engine(database_url), clock=clock), log_path, clock=clock, **options
    )
