"""The task journal: every task the broker accepts, and each change of its state, in SQL.

Why a journal and not a database-backed queue: the queue itself stays in memory (fast, exact
priority order); the journal only has to be good enough to rebuild it after a crash. One writer
thread takes state snapshots in order and commits them in groups (every snapshot waiting at the
time goes into one transaction), so a burst of pushes costs one commit, not one each. A push
returns only once its snapshot is committed; a worker's outcome does not wait (if the master dies
first, the task runs again as a visible extra attempt).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed
(``kill -9``, OOM), not necessarily a power cut. The table is ``task_record``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.broker.records import TaskRecord
from supervisor.errors import SupervisorError
from supervisor.policy import compute_backoff

metadata = sa.MetaData()

task_record = sa.Table(
    "task_record",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("params", sa.LargeBinary, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("eta", sa.Float),
    sa.Column("pushed_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("consumer", sa.String(200)),
    sa.Column("result", sa.Text),
    sa.Column("errors", sa.Text),
    sa.Column("schedule_id", sa.String(64)),
    sa.Column("scheduled_at", sa.Float),
    sa.Column("unique_key", sa.String(200)),
    sa.Column("cancel_requested_at", sa.Float),
    # One secondary index only: each one costs every journal commit (a push waits for it).
    # It serves recovery (active statuses), listing by status and purging by age.
    sa.Index("ix_task_record_status_pushed", "status", "pushed_at"),
)

task_schema = sa.Table(
    "task_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)
# 1: first release. 2: unique_key, cancel_requested_at. Columns added later must be nullable,
# so that an older database is upgraded in place with ALTER TABLE ADD COLUMN.
SCHEMA_VERSION = 2

ACTIVE = ("scheduled", "queued", "running", "retrying")
_COLUMNS = [c.name for c in task_record.columns]


def snapshot(rec: TaskRecord) -> dict[str, Any]:
    """The row for ``rec`` as it is now (taken under the broker's lock)."""
    return {
        "task_id": rec.task_id,
        "type": rec.type,
        "params": rec.params,
        "priority": rec.priority,
        "status": rec.status,
        "attempts": rec.attempts,
        "seq": rec.seq,
        "eta": rec.eta,
        "pushed_at": rec.pushed_at,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "consumer": rec.consumer,
        "result": None if rec.result is None else json.dumps(rec.result),
        "errors": json.dumps(rec.errors) if rec.errors else None,
        "schedule_id": rec.schedule_id,
        "scheduled_at": rec.scheduled_at,
        "unique_key": rec.unique_key,
        "cancel_requested_at": rec.cancel_requested_at,
    }


def record_from_row(row: Any) -> TaskRecord:
    """Rebuild a record; raises ValueError/TypeError on a corrupt row."""
    m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    if not isinstance(m["params"], bytes | bytearray | memoryview):
        raise TypeError(f"params is {type(m['params']).__name__}, expected bytes")
    errors = json.loads(m["errors"]) if m["errors"] else []
    if not isinstance(errors, list):
        raise TypeError("errors is not a list")
    rec = TaskRecord(
        task_id=str(m["task_id"]),
        type=str(m["type"]),
        params=bytes(m["params"]),
        priority=int(m["priority"]),
        status=str(m["status"]),
        pushed_at=float(m["pushed_at"]),
        eta=None if m["eta"] is None else float(m["eta"]),
        attempts=int(m["attempts"]),
        seq=int(m["seq"]),
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        consumer=m["consumer"],
        result=json.loads(m["result"]) if m["result"] else None,
        errors=errors,
        schedule_id=m["schedule_id"],
        scheduled_at=m["scheduled_at"],
        unique_key=m["unique_key"],
        cancel_requested_at=m["cancel_requested_at"],
    )
    if not 0 <= rec.priority <= 10 or rec.attempts < 0:
        raise ValueError(f"priority {rec.priority} or attempts {rec.attempts} out of range")
    return rec


def _upsert(engine: Engine) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(task_record)
    return stmt.on_conflict_do_update(
        index_elements=["task_id"],
        set_={c: stmt.excluded[c] for c in _COLUMNS if c != "task_id"},
    )


class Journal:
    """Ordered, group-committed snapshots of task records (see the module docstring)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._cond = threading.Condition()
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._seq = 0
        self._committed = 0
        self._closing = False
        self._commit_lock = threading.Lock()
        self._wake = threading.Event()
        self._armed = False
        self.flush_window_s = 0.002
        self._thread: threading.Thread | None = None
        self._stmt = _upsert(engine)
        # SQLite: the DBAPI directly, about 7x faster per commit than a Core execute. A push
        # waits for its commit, so this is the durable push rate.
        self._sqlite_sql = (
            f"INSERT INTO task_record ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT(task_id) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "task_id")
            if engine.dialect.name == "sqlite"
            else None
        )
        self._raw: Any = None
        self.log = logger.bind(component="journal")
        self.commits = 0

    def migrate(self) -> int:
        """Create or upgrade the tables; refuse a database written by a newer release."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # serialize concurrent migrations
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7305915)"))
            metadata.create_all(conn)
            current = conn.execute(sa.select(sa.func.max(task_schema.c.version))).scalar()
            if current is not None and current > SCHEMA_VERSION:
                raise SupervisorError(
                    f"the task database has schema version {current}, newer than the "
                    f"{SCHEMA_VERSION} this release supports; upgrade supervisor"
                )
            if current is None or current < SCHEMA_VERSION:
                present = {c["name"] for c in sa.inspect(conn).get_columns("task_record")}
                quote = conn.dialect.identifier_preparer.quote
                for column in task_record.columns:
                    if column.name not in present:
                        conn.exec_driver_sql(
                            f"ALTER TABLE task_record ADD COLUMN {quote(column.name)} "
                            f"{column.type.compile(dialect=conn.dialect)}"
                        )
                        self.log.info("task database: added column {}", column.name)
                conn.execute(
                    task_schema.insert().values(version=SCHEMA_VERSION, applied_at=self.clock())
                )
        return SCHEMA_VERSION

    # -- reading -----------------------------------------------------------------------------
    def load_active(self) -> list[TaskRecord]:
        """Every task that was not finished, oldest first; corrupt rows are logged and skipped."""
        out: list[TaskRecord] = []
        query = sa.select(task_record).where(task_record.c.status.in_(ACTIVE))
        with self.engine.connect() as conn:
            for row in conn.execute(query.order_by(task_record.c.seq)):
                try:
                    out.append(record_from_row(row))
                except (ValueError, TypeError, KeyError) as exc:
                    self.log.error(
                        "skipping corrupt task row {!r}: {}", row._mapping.get("task_id"), exc
                    )
        return out

    def get(self, task_id: str) -> TaskRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(task_record).where(task_record.c.task_id == task_id)
            ).first()
        if row is None:
            return None
        try:
            return record_from_row(row)
        except (ValueError, TypeError, KeyError) as exc:
            self.log.error("task row {!r} is corrupt: {}", task_id, exc)
            return None

    def query(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        q = sa.select(task_record)
        if status:
            q = q.where(task_record.c.status == status)
        if task_type:
            q = q.where(task_record.c.type == task_type)
        if since is not None:
            q = q.where(task_record.c.pushed_at >= since)
        q = q.order_by(task_record.c.pushed_at.desc()).limit(max(1, min(limit, 10_000)))
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                try:
                    out.append(record_from_row(row))
                except (ValueError, TypeError, KeyError) as exc:
                    self.log.error("skipping corrupt task row: {}", exc)
        return out

    def counts(self) -> dict[str, int]:
        q = sa.select(task_record.c.status, sa.func.count()).group_by(task_record.c.status)
        with self.engine.connect() as conn:
            return {str(s): int(n) for s, n in conn.execute(q)}

    # -- writing -----------------------------------------------------------------------------
    def write(self, row: dict[str, Any]) -> int:
        """Queue a snapshot; return its sequence number (pass it to :meth:`wait`)."""
        return self.write_many((row,))

    def write_many(self, rows: Iterable[dict[str, Any]]) -> int:
        with self._cond:
            for row in rows:
                self._seq += 1
                self._pending.append((self._seq, row))
            seq = self._seq
            arm = not self._armed
            self._armed = True
        if arm:  # wake the flusher once per window, not once per write (no GIL ping-pong)
            self._wake.set()
        return seq

    def wait(self, seq: int, timeout_s: float | None = 30.0) -> bool:
        """Block until snapshot ``seq`` is committed; False on timeout.

        Group commit without a hand-off: the first waiter to find the writer free commits every
        pending snapshot itself (its own and everyone else's); the others wait for that commit.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._cond:
                if self._committed >= seq:
                    return True
            if self._commit_lock.acquire(blocking=False):
                try:
                    self._flush()
                finally:
                    self._commit_lock.release()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))

    def sync(self, timeout_s: float | None = 30.0) -> bool:
        with self._cond:
            seq = self._seq
        return self.wait(seq, timeout_s)

    def delete(self, where: Any, batch: int = 500) -> int:
        """Delete rows matching ``where`` in small batches (never a long lock); return count."""
        total = 0
        while True:
            with self.engine.begin() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        sa.select(task_record.c.task_id).where(where).limit(batch)
                    )
                ]
                if not ids:
                    return total
                conn.execute(sa.delete(task_record).where(task_record.c.task_id.in_(ids)))
            total += len(ids)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what is pending, then stop the flusher."""
        with self._cond:
            self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sync(timeout_s)
        self._drop_raw()

    def _flush(self) -> None:
        """Commit every pending snapshot (the caller holds the commit lock)."""
        with self._cond:
            batch, self._pending = self._pending, []
        if not batch:
            return
        latest: dict[str, dict[str, Any]] = {}
        for _, row in batch:  # a later snapshot of a task replaces an earlier one
            latest[row["task_id"]] = row
        try:
            self._commit(list(latest.values()))
        except Exception:
            self._drop_raw()
            with self._cond:
                self._pending[:0] = batch  # keep order: retried by the next flush
            raise
        self.commits += 1
        with self._cond:
            self._committed = batch[-1][0]
            self._cond.notify_all()

    def _run(self) -> None:
        """Commit snapshots nobody waits for (workers' outcomes) within a few milliseconds."""
        failures = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self._closing:
                time.sleep(self.flush_window_s)  # the group-commit window; pushes commit sooner
            with self._cond:
                self._armed = False
                if self._closing and not self._pending:
                    return
            with self._commit_lock:
                try:
                    self._flush()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    delay = compute_backoff(failures, base_s=0.05, cap_s=5.0, jitter=False)
                    self.log.error("journal commit failed (retrying in {:.2f} s): {}", delay, exc)
                    time.sleep(delay)
                    self._wake.set()

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        if self._sqlite_sql is None:
            with self.engine.begin() as conn:
                conn.execute(self._stmt, rows)
            return
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        cur = self._raw.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(self._sqlite_sql, [tuple(r[c] for c in _COLUMNS) for r in rows])
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _drop_raw(self) -> None:
        if self._raw is not None:
            try:
                self._raw.close()
            except Exception:
                pass
            self._raw = None
