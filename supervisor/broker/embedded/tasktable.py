"""The task table: every task record in SQL (``task_record``), and the rows' encoding.

:class:`TaskTable` reads and writes the table; the hot path never waits for it. State changes
first go to the append-only log of :mod:`supervisor.broker.embedded.journal`, which folds them into
this
table in large batches from a background thread (see there for why).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

from supervisor.broker.records import TaskRecord
from supervisor.db import add_missing_columns
from supervisor.errors import SupervisorError
from supervisor.registry import DEFAULT_QUEUE

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
    sa.Column("queue", sa.String(100)),
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
# 1: first release. 2: unique_key, cancel_requested_at. 3: queue. Columns added later must be
# nullable, so that an older database is upgraded in place with ALTER TABLE ADD COLUMN.
SCHEMA_VERSION = 3

ACTIVE = ("scheduled", "queued", "running", "retrying")
FOLD_CHUNK = 64  # rows per executemany call in a fold (about 0.5 ms of GIL at a time)
COLUMNS = [c.name for c in task_record.columns]


def snapshot(rec: TaskRecord) -> tuple[Any, ...]:
    """The row for ``rec`` as it is now, in ``COLUMNS`` order (taken under the broker's lock)."""
    return (
        rec.task_id,
        rec.type,
        rec.params,
        rec.priority,
        rec.status,
        rec.attempts,
        rec.seq,
        rec.eta,
        rec.pushed_at,
        rec.started_at,
        rec.finished_at,
        rec.consumer,
        None if rec.result is None else json.dumps(rec.result),
        json.dumps(rec.errors) if rec.errors else None,
        rec.schedule_id,
        rec.scheduled_at,
        rec.unique_key,
        rec.cancel_requested_at,
        rec.queue,
    )


def record_from_row(row: Any) -> TaskRecord:
    """Rebuild a record from a SQL row, a mapping or a snapshot tuple; raises ValueError,
    TypeError or KeyError on a corrupt row."""
    if isinstance(row, tuple) and not hasattr(row, "_mapping"):
        if len(row) == len(COLUMNS) - 1:  # written before the queue column (schema 2)
            row = (*row, None)
        if len(row) != len(COLUMNS):
            raise ValueError(f"a snapshot has {len(row)} fields, expected {len(COLUMNS)}")
        m = dict(zip(COLUMNS, row, strict=True))
    else:
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
        queue=m.get("queue") or DEFAULT_QUEUE,
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
        set_={c: stmt.excluded[c] for c in COLUMNS if c != "task_id"},
    )


class TaskTable:
    """The ``task_record`` table: migrate, upsert snapshots, read records."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._stmt = _upsert(engine)
        # SQLite: the DBAPI directly, several times cheaper per statement than a Core execute.
        self._sqlite_sql = (
            f"INSERT INTO task_record ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT(task_id) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in COLUMNS if c != "task_id")
            if engine.dialect.name == "sqlite"
            else None
        )
        self._raw: Any = None
        self._lock = threading.Lock()  # the raw connection is used by one thread at a time
        self.log = logger.bind(component="journal")

    def migrate(self) -> int:
        """Create or upgrade the tables; refuse a database written by a newer release.

        On SQLite the transaction takes the write lock first (BEGIN IMMEDIATE): a deferred one
        that read the schema and then found another process (the scheduler, another node's
        history writer) had written since would fail at once, busy timeout or not."""
        with (
            self.engine.connect().execution_options(sqlite_immediate=True) as conn,
            conn.begin(),
        ):
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
                for name in add_missing_columns(conn, task_record):
                    self.log.info("task database: added column {}", name)
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

    def upsert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert or replace ``rows`` (snapshot tuples) in one transaction."""
        with self._lock:
            try:
                self._upsert(rows)
            except Exception:
                self.close()  # a fresh connection next time
                raise

    def _upsert(self, rows: list[tuple[Any, ...]]) -> None:
        if self._sqlite_sql is None:
            with self.engine.begin() as conn:
                conn.execute(self._stmt, [dict(zip(COLUMNS, r, strict=True)) for r in rows])
            return
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        cur = self._raw.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                # In chunks, yielding the GIL between them: a fold runs in the broker process,
                # and one long executemany would hold up every push for its whole duration.
                for at in range(0, len(rows), FOLD_CHUNK):
                    cur.executemany(self._sqlite_sql, rows[at : at + FOLD_CHUNK])
                    time.sleep(0)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()

    def close(self) -> None:
        if self._raw is not None:
            try:
                self._raw.close()
            except Exception:
                pass
            self._raw = None
