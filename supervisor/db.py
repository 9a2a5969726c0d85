"""Database plumbing shared by the scheduler and the task journal: engines and upgrades."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine


def make_engine(url: str, *, busy_timeout_s: float = 5.0, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; for SQLite, with WAL, a busy timeout and real BEGINs.

    SQLite connections get ``journal_mode=WAL`` (readers never block the writer),
    ``busy_timeout`` (a locked database is waited for, not an instant error) and
    ``synchronous=NORMAL``. pysqlite's own transaction handling is turned off so that
    SQLAlchemy's ``begin`` emits ``BEGIN`` itself -- ``BEGIN IMMEDIATE`` when the connection
    has the execution option ``sqlite_immediate=True``, which takes the write lock up front so
    that two schedulers on one file are serialized instead of failing on a stale snapshot.
    """
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name != "sqlite":
        return engine
    timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit BEGIN; see _on_begin
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def add_missing_columns(conn: sa.Connection, table: sa.Table) -> list[str]:
    """Add ``table``'s columns that an older database lacks (and its missing indexes);
    return the names of the columns added. A column with a server default gets it, NOT NULL."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    quote = conn.dialect.identifier_preparer.quote
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        ddl = (
            f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
            f"{column.type.compile(dialect=conn.dialect)}"
        )
        default = column.server_default
        if isinstance(default, sa.DefaultClause):
            ddl += f" NOT NULL DEFAULT {_default_sql(conn, column, default.arg)}"
        conn.exec_driver_sql(ddl)
        added.append(column.name)
    for index in table.indexes:
        index.create(conn, checkfirst=True)
    return added


def _default_sql(conn: sa.Connection, column: sa.Column[Any], arg: Any) -> str:
    if not isinstance(arg, str):  # a SQL expression such as sa.true()
        return str(arg.compile(dialect=conn.dialect))
    if isinstance(column.type, sa.Integer | sa.Float):
        return arg
    return "'" + arg.replace("'", "''") + "'"
