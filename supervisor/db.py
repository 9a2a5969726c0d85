"""Database plumbing shared by the scheduler and the task journal: engines and upgrades."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from supervisor.errors import ConfigError

# Database backends whose driver comes with an extra of ours: ``pip install 'pkg[extra]'``.
_EXTRAS = {"postgresql": ("postgres", "postgresql+psycopg://")}
DISTRIBUTION = "supervisor-workers"


def make_engine(url: str, *, busy_timeout_s: float = 5.0, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; for SQLite, with WAL, a busy timeout and real BEGINs.

    SQLite connections get ``journal_mode=WAL`` (readers never block the writer),
    ``busy_timeout`` (a locked database is waited for, not an instant error) and
    ``synchronous=NORMAL``. pysqlite's own transaction handling is turned off so that
    SQLAlchemy's ``begin`` emits ``BEGIN`` itself -- ``BEGIN IMMEDIATE`` when the connection
    has the execution option ``sqlite_immediate=True``, which takes the write lock up front so
    that two schedulers on one file are serialized instead of failing on a stale snapshot.

    A URL whose driver is not installed, or that names no known database, raises
    :class:`~supervisor.errors.ConfigError` naming the URL (password masked) and, for a driver
    we ship as an extra, the ``pip install`` line. A malformed URL raises SQLAlchemy's
    ``ArgumentError``.
    """
    try:
        engine = sa.create_engine(url, **kwargs)
    except (ImportError, NoSuchModuleError) as exc:
        raise ConfigError(missing_driver_message(url, exc)) from None
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


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to log or print)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return "<unparsable URL>"


def missing_driver_message(url: str, exc: BaseException) -> str:
    """One line: which database URL cannot be used, why, and what to install."""
    shown = mask_url(url)
    try:
        backend, _, driver = make_url(url).drivername.partition("+")
    except (ArgumentError, ValueError, TypeError):
        return f"database URL {shown}: not a SQLAlchemy URL"
    if isinstance(exc, NoSuchModuleError) and backend not in _EXTRAS and backend != "sqlite":
        return f"database URL {shown}: unknown database {backend!r} (expected sqlite or postgresql)"
    missing = getattr(exc, "name", None) or driver or backend
    if backend in _EXTRAS:
        extra, scheme = _EXTRAS[backend]
        hint = f"pip install '{DISTRIBUTION}[{extra}]'"
        if not url.startswith(scheme):
            hint += f" and write the URL as {scheme}..."
        return f"database URL {shown}: its driver {missing!r} is not installed; install it: {hint}"
    return f"database URL {shown}: its driver {missing!r} is not installed"


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
