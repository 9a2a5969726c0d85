"""Checks ``supervisor run`` makes before it forks anything: can the settings work here?

:func:`~supervisor.config.load_settings` checks each value alone (types, ranges, the address's
form). What only this machine can answer is checked here, so that a bad setting is one line
naming it and exit code 2, not a broker that "could not listen" at its socket:

- the database URL opens (its driver is installed, the server or file can be reached);
- the HTTP endpoints' port can be bound on ``metrics_host`` (port 0 always can);
- a TCP broker address's host resolves, and its port is free;
- each ``--ingest`` URL has the form ``amqp://user:pass@host:port/[vhost/]QUEUE`` and pika is
  installed (RabbitMQ itself is not called: it may be down at start, the ingest retries; that
  each queue is a task type of the app is checked once the app is loaded).

Each failure is a :class:`~supervisor.errors.ConfigError` reading
``<setting>: <what is wrong, with the value> (from <flag/env/file>)``; passwords are masked.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from supervisor.config import Settings
from supervisor.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0


def preflight(settings: Settings, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ConfigError for the first setting that cannot work (see the module docstring)."""
    if settings.scheduler or settings.durability == "journal":
        check_database(settings, connect_timeout_s=connect_timeout_s)
    if settings.metrics:
        check_listen(
            settings, "metrics_host", "metrics_port", settings.metrics_host, settings.metrics_port
        )
    if settings.address:
        from supervisor.client.discovery import parse_address

        address = parse_address(settings.address)
        if isinstance(address, tuple):
            check_listen(settings, "address", "address", address[0], address[1])
    if settings.ingest:
        check_ingest(settings)


def source(settings: Settings, name: str) -> str:
    """``(from flag --x)``, ``(from env SUPERVISOR_X)``, ... or ``(the default)``."""
    where = settings.sources.get(name, "default")
    return "(the default)" if where == "default" else f"(from {where})"


def check_database(settings: Settings, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Open one connection to ``settings.database`` and close it."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from supervisor.db import make_engine, mask_url

    url = settings.database
    shown, where = mask_url(url), source(settings, "database")
    try:
        backend = make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"database: expected a SQLAlchemy URL such as sqlite:///supervisor.db, "
            f"got {shown!r} {where}"
        ) from None
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = max(1, int(connect_timeout_s))
    try:
        engine = make_engine(url, busy_timeout_s=connect_timeout_s, connect_args=connect_args)
    except ConfigError as exc:
        text = str(exc).removeprefix("database URL ")
        raise ConfigError(f"database: {text} {where}") from None
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc)
        if "locked" in reason:  # it opens; another process holds it for now
            return
        password = make_url(url).password
        if password:
            reason = reason.replace(str(password), "***")
        raise ConfigError(f"database: cannot open {shown}: {reason} {where}") from None
    except sa.exc.SQLAlchemyError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc)
        raise ConfigError(f"database: cannot open {shown}: {reason} {where}") from None
    finally:
        engine.dispose()


def check_ingest(settings: Settings) -> None:
    """Parse every ``ingest`` URL (ConfigError naming the first bad one, password masked)."""
    from supervisor.ingest import parse_ingest_urls

    parse_ingest_urls(settings.ingest, where=source(settings, "ingest"))


def check_listen(
    settings: Settings, host_setting: str, port_setting: str, host: str, port: int
) -> None:
    """Resolve ``host`` and, unless ``port`` is 0, bind ``(host, port)`` once and close it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(
            f"{host_setting}: host {host!r} cannot be resolved ({why}) "
            f"{source(settings, host_setting)}"
        ) from None
    if port == 0:
        return
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        sock.bind(sockaddr)
    except OSError as exc:
        where = source(settings, port_setting)
        if exc.errno == errno.EADDRINUSE:
            what = f"cannot listen on {host}:{port}: the port is already in use"
        elif exc.errno == errno.EACCES:
            what = f"cannot listen on {host}:{port}: no permission (ports below 1024 need root)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            what = f"{host!r} is not an address of this machine"
            where = source(settings, host_setting)
            port_setting = host_setting
        else:
            what = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ConfigError(f"{port_setting}: {what} {where}") from None
    finally:
        sock.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
