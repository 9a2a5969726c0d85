"""Converting and checking one setting's raw value (text from a flag or env, or a TOML value).

Split out of :mod:`supervisor.config` to keep that module small. Every error is a
:class:`~supervisor.errors.ConfigError` whose message reads
``<setting>: <what is wrong, with the value> (from <flag/env/file>)``; a secret's value is
shown as ``***``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from supervisor.errors import ConfigError

if TYPE_CHECKING:
    from supervisor.config import Field

# The largest number of seconds any duration setting takes: ten years. Past it a value is a
# typo (or 1e300), and some system calls (select, sleep) would overflow on it.
MAX_SECONDS = 10 * 365 * 86400.0

_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}
_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def convert(f: Field, raw: Any, source: str) -> Any:
    """``raw`` converted to ``f``'s type and checked against its choices and range."""
    if f.kind is tuple:
        return _items(f, raw, source)
    if raw is None or (isinstance(raw, str) and f.nullable and raw.strip().lower() in ("", "none")):
        if f.nullable:
            return None
        raise ConfigError(f"{f.name}: a value is required (from {source})")
    shown = "***" if f.secret else repr(raw)
    try:
        value = _typed(f, raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{f.name}: expected {_EXPECTED[f.kind]}, got {shown} (from {source})"
        ) from None
    if f.kind is str and not value.strip():  # an empty run_dir would quietly mean the cwd
        raise ConfigError(f"{f.name}: a value is required, got {shown} (from {source})")
    if f.kind is bool:
        return value
    if f.choices:
        norm = value.upper() if f.name == "log_level" else value.lower()
        if norm not in f.choices:
            raise ConfigError(
                f"{f.name}: expected one of {', '.join(f.choices)}, got {shown} (from {source})"
            )
        value = norm
    maximum = f.maximum if f.maximum is not None or f.kind is not float else MAX_SECONDS
    if f.minimum is not None and value < f.minimum:
        raise ConfigError(
            f"{f.name}: expected a value >= {f.minimum:g}, got {shown} (from {source})"
        )
    if maximum is not None and value > maximum:
        limit = f"{maximum:.0f} (10 years)" if maximum == MAX_SECONDS else f"{maximum:g}"
        raise ConfigError(f"{f.name}: expected a value <= {limit}, got {shown} (from {source})")
    if f.name == "address":
        _check_address(value, source)
    return value


def _typed(f: Field, raw: Any) -> Any:
    if f.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        return _BOOLS[text] if text in _BOOLS else _bad()
    if f.kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            _bad()
        return int(raw)
    if f.kind is float:
        if isinstance(raw, bool):
            _bad()
        value = float(raw)
        return value if math.isfinite(value) else _bad()
    return raw if isinstance(raw, str) else _bad()


def _items(f: Field, raw: Any, source: str) -> tuple[str, ...]:
    """A list setting: text is comma-separated; a list (TOML, or a repeated flag) holds texts,
    each comma-separated too. Blank items are dropped, duplicates kept once, in order."""
    parts = raw if isinstance(raw, list | tuple) else [raw]
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            shown = "***" if f.secret else repr(part)
            raise ConfigError(
                f"{f.name}: expected text or a list of texts, got {shown} (from {source})"
            )
        for piece in part.split(","):
            item = piece.strip()
            if item and item not in out:
                out.append(item)
    if not out and any(isinstance(p, str) and p.strip() for p in parts):  # "," or " , "
        one = raw[0] if isinstance(raw, list | tuple) and len(raw) == 1 else raw
        shown = "***" if f.secret else repr(one)
        raise ConfigError(
            f"{f.name}: expected comma-separated names, got {shown}, which names none "
            f"(from {source})"
        )
    if f.name == "queues":
        from supervisor.registry import queue_name

        for item in out:
            try:
                queue_name(item)
            except ValueError as exc:
                raise ConfigError(f"queues: {exc} (from {source})") from None
    return tuple(out)


def _bad() -> Any:
    raise ValueError


def _check_address(text: str, source: str) -> None:
    from supervisor.client.discovery import parse_address
    from supervisor.errors import BrokerError

    try:
        parse_address(text)
    except BrokerError as exc:
        raise ConfigError(
            f"address: {exc}; expected a socket path or HOST:PORT (port 0-65535) (from {source})"
        ) from None


REDIS_URL_FORM = "redis://[user:pass@]host:port/db or rediss://"
# A Redis node's consumers are "<node>/<worker>" and '|' separates fields in Redis; control
# characters would reach log lines and label values (and NUL starts the board's own fields).
NODE_NAME_BANNED = "/|"


def node_name_problem(name: str) -> str | None:
    """What is wrong with a node name (None: nothing)."""
    if any(c in name for c in NODE_NAME_BANNED) or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "expected a name without '/', '|' or control characters"
    return None


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis broker URL, read as redis-py will read it (None: nothing).
    Pure: nothing connects (a Redis that is down is not a typo, and has an exit code of its
    own). The scheme is lowercase, as every other part of supervisor compares it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        return f"scheme {scheme + '://' if sep else '(none)'} is not redis:// or rediss://"
    head = rest.split("?", 1)[0]
    if "/" in head and "@" in head.split("/", 1)[1]:  # redis-py would take it for the path
        return "an '@' after the host (write a '/' in the password as %2F)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0-65535)
    except ValueError:
        return "a port that is not a number from 0 to 65535"
    path = unquote(parts.path.strip("/"))
    dbs = [path] if path else []
    dbs += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    for db in dbs:
        if not re.fullmatch("[0-9]+", db):
            return f"database number {db!r} is not a whole number"
    return None  # no host is redis-py's localhost


def mask_redis_url(url: str) -> str:
    """A Redis ``url`` with the password replaced by ``***``. Everything before the last
    ``@`` ahead of the query is taken for the credentials, so a password with a raw ``/`` is
    masked too: on Redis nothing after the host holds an ``@`` (:func:`redis_url_problem`
    refuses one), unlike an AMQP queue name (see :func:`supervisor.ingest.url.mask`)."""
    scheme, sep, rest = url.partition("://")
    head, q, query = rest.partition("?")
    creds, at, tail = head.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{tail}{q}{query}"
