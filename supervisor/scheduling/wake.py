"""Waking the sleeping scheduler when another process changes a schedule.

The scheduler sleeps until the next due time, and at most a second (so that it always notices
changes). A schedule added by the CLI or the API with a due time closer than that would fire
late; so every management call also *pokes* the scheduler:

* **PostgreSQL**: ``NOTIFY supervisor_schedules`` in the changing transaction (delivered on
  commit, to every node); the scheduler ``LISTEN``\\ s on a connection of its own and adds its
  socket to its ``select``.
* **SQLite** (one machine): a datagram to an abstract Unix socket (Linux; no file to clean up)
  named after the database file's real path, which the scheduler binds. Only one scheduler per
  file gets the poke (a second one keeps its one-second look).

Everything here is best effort: a failed poke or listener only falls back to the one-second
look, never to an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Engine

CHANNEL = "supervisor_schedules"
_log = logger.bind(component="scheduler")


def _sqlite_address(engine: Engine) -> bytes | None:
    database = engine.url.database
    if (
        engine.dialect.name != "sqlite"
        or not database
        or database == ":memory:"
        or not sys.platform.startswith("linux")
    ):
        return None
    digest = hashlib.sha1(os.path.realpath(database).encode(), usedforsecurity=False)
    return b"\0supervisor-scheduler-" + digest.hexdigest()[:20].encode()


def notify_in(conn: sa.Connection) -> None:
    """Inside a changing transaction: PostgreSQL's NOTIFY (a no-op on other databases)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def notify_after(engine: Engine) -> None:
    """After a committed change: poke a scheduler on the same SQLite file, if one listens."""
    address = _sqlite_address(engine)
    if address is None:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(b"!", address)


class Listener:
    """The scheduler's end: :meth:`fileno` for ``select``, :meth:`drain` once it is readable."""

    def __init__(self, fd: int, drain: Any, close: Any) -> None:
        self._fd = fd
        self._drain = drain
        self._close = close

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        """Consume the pokes; False when the channel broke (stop selecting on it)."""
        try:
            self._drain()
        except Exception as exc:
            _log.warning(
                "lost the schedule-change listener ({}); noticing changes within a "
                "second from now on",
                exc,
            )
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._close()


def listen(engine: Engine) -> Listener | None:
    """Start listening for pokes on ``engine``'s database; None when not possible."""
    try:
        if engine.dialect.name == "postgresql":
            return _listen_postgres(engine)
        address = _sqlite_address(engine)
        if address is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
        except OSError:  # another scheduler on this file has it: keep the one-second look
            sock.close()
            _log.info(
                "another scheduler listens for changes to this SQLite file; this one "
                "notices them within a second"
            )
            return None
        sock.setblocking(False)

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(64):
                    pass

        return Listener(sock.fileno(), drain, sock.close)
    except Exception as exc:  # best effort: the one-second look still works
        _log.warning("cannot listen for schedule changes ({}); noticing them within a second", exc)
        return None


def _listen_postgres(engine: Engine) -> Listener | None:
    raw = engine.raw_connection()
    pg = raw.driver_connection
    pgconn = getattr(pg, "pgconn", None)
    if pg is None or pgconn is None:  # not psycopg 3
        raw.close()
        return None
    pg.autocommit = True
    pg.execute(f"LISTEN {CHANNEL}")

    def drain() -> None:
        pgconn.consume_input()
        while pgconn.notifies() is not None:
            pass

    def close() -> None:
        raw.invalidate()  # never hand a LISTENing connection back to the pool

    return Listener(pg.fileno(), drain, close)
