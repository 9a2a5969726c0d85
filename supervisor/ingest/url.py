"""The ``ingest`` setting at the boundary: each value an ``amqp://`` URL naming one queue.

Forms: ``amqp://user:pass@host:port/QUEUE`` (virtual host ``/``) and
``amqp://user:pass@host:port/VHOST/QUEUE``; also ``amqps://`` (TLS). Either segment may be
percent-encoded (``%2F`` for a ``/`` inside a name); a query string (``?heartbeat=30``) is
handed to pika as its connection options, except ``prefetch=N`` (messages in flight, 1 to
:data:`MAX_PREFETCH`; default :data:`DEFAULT_PREFETCH`), which is ours. Pure: parsing opens no
connection (RabbitMQ may be down at start; the ingest child retries), so every error here is a
typo, reported once, naming the value (password masked) and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from supervisor.errors import ConfigError
from supervisor.queuemanager.validate import safe_url

EXPECTED = "amqp://user:pass@host:port/[vhost/]QUEUE (or amqps://)"
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
MAX_QUEUE_NAME = 200  # a task type name's limit (AMQP allows 255 bytes)
DEFAULT_PREFETCH = 256  # messages in flight: priority is restored by our broker, so >1 is safe
MAX_PREFETCH = 65535  # AMQP's prefetch-count is 16 bits (0 would mean no limit: refused)


@dataclass(frozen=True)
class IngestSpec:
    """One ``--ingest`` value, parsed. ``connection_url`` (with the password) is for pika
    only; ``masked`` is for logs, errors and status documents."""

    url: str
    masked: str
    host: str
    port: int
    vhost: str
    queue: str
    tls: bool
    connection_url: str
    prefetch: int = DEFAULT_PREFETCH

    def __repr__(self) -> str:  # never the password, even in a traceback
        return f"IngestSpec({self.masked!r})"


def parse_ingest_url(value: object, *, where: str = "") -> IngestSpec:
    """The parsed URL, or ConfigError ``ingest: <what is wrong> in <masked value>; expected
    ...`` (``where`` is appended, e.g. ``(from flag --ingest)``)."""
    suffix = f" {where}" if where else ""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"ingest: expected {EXPECTED}, got {value!r}{suffix}")
    masked = mask(value)

    def bad(what: str) -> ConfigError:
        return ConfigError(f"ingest: {what} in {masked!r}; expected {EXPECTED}{suffix}")

    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(f"unreadable URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise bad(f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not amqp://")
    if not parts.hostname:
        raise bad("no host")
    if parts.fragment:
        raise bad("a #fragment")
    segments = parts.path.split("/")[1:] if parts.path.startswith("/") else []
    if not segments or segments == [""]:
        raise bad("no queue name")
    if len(segments) > 2:
        raise bad(f"{len(segments)} path segments (at most VHOST/QUEUE; write a '/' as %2F)")
    vhost = unquote(segments[0]) if len(segments) == 2 else "/"
    queue = unquote(segments[-1])
    if len(segments) == 2 and not vhost:
        raise bad("an empty virtual host (for '/', give only the queue, or %2F)")
    if not queue or queue != queue.strip():
        raise bad(f"queue name {queue!r} (empty, or blank at an end)")
    if len(queue) > MAX_QUEUE_NAME:
        raise bad(f"a queue name of {len(queue)} characters (at most {MAX_QUEUE_NAME})")
    if queue.startswith("amq."):
        raise bad(f"queue name {queue!r} (names starting with 'amq.' are RabbitMQ's own)")
    prefetch, options = _prefetch(parts.query, bad)
    connection_url = urlunsplit((scheme, parts.netloc, "/" + quote(vhost, safe=""), options, ""))
    _check_pika(connection_url, bad)
    return IngestSpec(
        url=value,
        masked=masked,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        vhost=vhost,
        queue=queue,
        tls=scheme == "amqps",
        connection_url=connection_url,
        prefetch=prefetch,
    )


def _prefetch(query: str, bad: Callable[[str], ConfigError]) -> tuple[int, str]:
    """(the ``prefetch`` option, the query without it: pika's options)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    ours = [v for k, v in pairs if k == "prefetch"]
    if not ours:
        return DEFAULT_PREFETCH, query
    if len(ours) > 1:
        raise bad("prefetch given twice")
    text = ours[0].strip()
    if not re.fullmatch("[0-9]+", text) or not 1 <= int(text) <= MAX_PREFETCH:
        raise bad(f"prefetch={ours[0]!r} (expected a whole number from 1 to {MAX_PREFETCH})")
    return int(text), urlencode([(k, v) for k, v in pairs if k != "prefetch"])


def mask(url: str) -> str:
    """``url`` with its password as ``***``, even when it does not parse (a bad port)."""
    shown = safe_url(url)
    if shown == "<unparsable URL>":
        shown = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    return shown


def _check_pika(connection_url: str, bad: Callable[[str], ConfigError]) -> None:
    """pika parses the connection part (its query options) as it will in the child."""
    try:
        import pika
    except ImportError:
        raise ConfigError(
            "ingest: needs pika, the RabbitMQ client: pip install 'supervisor-workers[rabbitmq]'"
        ) from None
    try:
        pika.URLParameters(connection_url)
    except Exception as exc:  # pika raises ValueError, TypeError, KeyError... for bad options
        text = str(exc).replace(connection_url, "(the URL)")
        raise bad(f"options pika refuses ({type(exc).__name__}: {text})") from None


def parse_ingest_urls(values: Iterable[object], *, where: str = "") -> list[IngestSpec]:
    """Every value parsed; a queue named twice is refused (one ingest child and one status
    document per queue and node)."""
    specs: list[IngestSpec] = []
    for value in values:
        spec = parse_ingest_url(value, where=where)
        twin = next((s for s in specs if s.queue == spec.queue), None)
        if twin is not None:
            raise ConfigError(
                f"ingest: queue {spec.queue!r} is given twice ({twin.masked!r} and "
                f"{spec.masked!r}); give each queue once{' ' + where if where else ''}"
            )
        specs.append(spec)
    return specs


def check_task_types(specs: Iterable[IngestSpec], task_types: Collection[str]) -> None:
    """ConfigError unless every queue is a registered task type: its handler (registered under
    the queue's name) receives each message's data dict as its params."""
    for spec in specs:
        if spec.queue not in task_types:
            known = ", ".join(sorted(task_types)) or "(none)"
            raise ConfigError(
                f"ingest: queue {spec.queue!r} of {spec.masked!r} is not a task type of the app; "
                f"register its handler under the queue's name (@app.task({spec.queue!r})); "
                f"known task types: {known}"
            )
