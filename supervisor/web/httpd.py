"""A bounded HTTP/1.1 server on the standard library, served by threads of the broker process.

The server (connections, lingering close) and its socket streams are here; the request handler
(request limits, JSON errors, routing to 405) is :mod:`supervisor.web.handler`.

Why the standard library and not a server package: it runs as plain threads inside the broker
process (the master must stay single-threaded, and the broker process must not fork), it adds
no dependency to the core install, and ``http.server``'s parser is sound once it is bounded.
What ``ThreadingHTTPServer`` lacks, and this module adds (see :class:`Limits`):

* a bounded number of connections (threads); past it a connection gets a 503 at once;
* a bounded number of requests in flight in endpoint code; past it 503 with ``Retry-After``;
* limits on the request line (414), the header block (431) and the body (413; a body over the
  limit is never read into memory: its declared length is refused up front);
* one read deadline per request: the request line, headers and body must all arrive within
  ``read_timeout_s``, so a slow or lying client (a false ``Content-Length``) is dropped;
* JSON bodies on every error (``{"error": "..."}``), 405 with ``Allow`` for a method a path does
  not serve, and one log line (DEBUG) for a client's bad request instead of a traceback;
  a bug in an endpoint still logs its traceback at ERROR and answers 500 JSON;
* a lingering close: after an error the server stops writing and discards what the client still
  sends for a moment, so the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from loguru import logger

_log = logger.bind(component="http")


@dataclass(frozen=True)
class Limits:
    """Bounds of the HTTP server. Sizes in bytes, times in seconds.

    ``max_connections``: connections served at once (one thread each; past it: 503 at once).
    ``max_in_flight``: requests in endpoint code at once (past it: 503, ``Retry-After: 1``;
    the health probes do not count). ``request_line_bytes``: the method, URL and version (414).
    ``header_bytes`` / ``header_count``: the header block (431). ``body_bytes``: a declared
    ``Content-Length`` over it is refused unread (413). ``read_timeout_s``: the whole request
    must arrive within it, and an idle kept-alive connection is closed after it.
    ``write_timeout_s``: a client that does not read its answer. ``linger_s`` /
    ``linger_bytes``: what is discarded after an error before closing.
    """

    max_connections: int = 64
    max_in_flight: int = 16
    request_line_bytes: int = 8192
    header_bytes: int = 32768
    header_count: int = 64
    body_bytes: int = 65536
    read_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    linger_s: float = 1.0
    linger_bytes: int = 64 << 20


class DeadlineIO(io.RawIOBase):
    """The socket as a raw stream whose reads fail with TimeoutError once ``deadline``
    (monotonic seconds) passed, however the client spreads its bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = float("inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its request in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class Reader:
    """``rfile``: a buffered reader that, while the header block is read, counts its bytes
    and lines (``http.client.parse_headers`` reads it line by line)."""

    def __init__(self, raw: DeadlineIO) -> None:
        self._buf = io.BufferedReader(raw, 8192)
        self._budget: int | None = None
        self._lines = 0
        self._max_lines = 0

    def start_headers(self, max_bytes: int, max_lines: int) -> None:
        self._budget, self._max_lines = max_bytes, max_lines
        self._lines = max_lines + 1  # + the blank line that ends the block

    def end_headers(self) -> None:
        self._budget = None

    def readline(self, limit: int = -1) -> bytes:
        budget = self._budget
        if budget is None:
            return self._buf.readline(limit)
        if self._lines <= 0:
            raise http.client.HTTPException(f"more than {self._max_lines} header lines")
        cap = budget + 1 if limit < 0 else min(limit, budget + 1)
        line = self._buf.readline(cap)
        self._budget = budget - len(line)
        self._lines -= 1
        if self._budget < 0:
            raise http.client.HTTPException("the request's header block is too large")
        return line

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)

    def close(self) -> None:
        self._buf.close()


class Writer(io.BufferedIOBase):
    """``wfile``: every write is one ``sendall`` bounded by the write timeout."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout_s = timeout_s

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._timeout_s)
        self._sock.sendall(data)
        return len(data)


class Throttle:
    """At most one log line per ``interval_s`` for a repeated event (an overload must not
    flood the log): :meth:`due` returns how many were passed over since the last line, or
    None while the line is not due."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def due(self, now: float) -> int | None:
        with self._lock:
            if now < self._next:
                self._skipped += 1
                return None
            skipped, self._skipped, self._next = self._skipped, 0, now + self.interval_s
            return skipped


def json_bytes(doc: Any) -> bytes:
    """Strict JSON (no NaN or Infinity), one line."""
    return json.dumps(doc, default=repr, allow_nan=False).encode() + b"\n"


class BoundedHTTPServer(socketserver.TCPServer):
    """A TCP server that serves each connection in a thread of its own, at most
    ``limits.max_connections`` at once, with a
    :class:`~supervisor.web.handler.JsonRequestHandler` subclass."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        *,
        limits: Limits | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.limits = limits or Limits()
        self._connections = threading.BoundedSemaphore(self.limits.max_connections)
        self.in_flight = threading.BoundedSemaphore(self.limits.max_in_flight)
        self.refusals = Throttle()  # one log line per 10 s for each kind of overload
        self.overloads = Throttle()
        super().__init__(address, handler)

    def allowed_methods(self, path: str) -> tuple[str, ...] | None:
        """The methods ``path`` serves (None: no such path). Subclasses route."""
        return None

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self._refuse(request)
            return
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), name="http-conn", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread: answer as for too many connections
            self._connections.release()
            self._refuse(request)

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._connections.release()

    def _refuse(self, request: socket.socket) -> None:
        """Too many connections: answer 503 without a thread (best effort) and close."""
        skipped = self.refusals.due(time.monotonic())
        if skipped is not None:
            _log.warning(
                "http: {} connections open (the limit): refusing more with 503 "
                "({} more refused since the last line)",
                self.limits.max_connections,
                skipped,
            )
        body = json_bytes({"error": "too many connections: retry shortly", "retryable": True})
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(0.1)
            request.sendall(head.encode() + body)
            request.shutdown(socket.SHUT_WR)
            _discard_pending(request)
        self.close_request(request)

    def shutdown_request(self, request: Any) -> None:
        """Lingering close: stop writing, discard what the client still sends until it closes
        (or ``linger_s`` / ``linger_bytes``), then close, so that the client reads our answer
        instead of a connection reset."""
        limits = self.limits
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + limits.linger_s
            left = limits.linger_bytes
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                request.settimeout(wait)
                chunk = request.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed outside a handler: one line for a client that went away, the
        traceback for anything else (never the stdlib's print to stderr)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            _log.debug("http {}: connection ended: {}", peer(client_address), exc)
        else:
            _log.opt(exception=exc).error("http {}: connection failed", peer(client_address))


def _discard_pending(sock: socket.socket) -> None:
    """Read away what has already arrived (a close with unread bytes sends a reset)."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        while sock.recv(65536):
            pass


def peer(client_address: Any) -> str:
    return str(client_address[0]) if client_address else "?"


def short(text: Any, limit: int = 100) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
