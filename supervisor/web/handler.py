"""The request handler of :class:`~supervisor.web.httpd.BoundedHTTPServer`: one request at a
time under the server's :class:`~supervisor.web.httpd.Limits`, every error answered in JSON.

A request goes: request line (414 past its limit) → headers (431) → body by its declared length
(413 past the limit, unread; 501 for ``Transfer-Encoding``) → 404 for an unknown path, 405 with
``Allow`` for a method the path does not serve → 503 past the in-flight limit → :meth:`respond`.
All of it within one read deadline. A client's fault is one DEBUG line; an endpoint's bug is its
traceback at ERROR and a 500 in JSON.
"""

from __future__ import annotations

import contextlib
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from loguru import logger

from supervisor.web.httpd import (
    BoundedHTTPServer,
    DeadlineIO,
    Reader,
    Writer,
    json_bytes,
    peer,
    short,
)

_log = logger.bind(component="http")


class JsonRequestHandler(BaseHTTPRequestHandler):
    """Reads one request at a time under the server's :class:`Limits` and answers errors in
    JSON. Subclasses implement :meth:`respond` (called for a method the path allows, with the
    body read) and may mark paths :meth:`exempt_from_in_flight` (the health probes)."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # a request line too bad to parse is answered in 1.1
    server_version = "supervisor"
    sys_version = ""
    error_content_type = "application/json"
    body: bytes = b""

    # -- connection set-up -------------------------------------------------------------------
    def setup(self) -> None:
        self.connection = self.request
        self._raw = DeadlineIO(self.connection)
        self.rfile = Reader(self._raw)  # type: ignore[assignment]
        self.wfile = Writer(self.connection, self.server.limits.write_timeout_s)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()

    # -- one request -------------------------------------------------------------------------
    def handle_one_request(self) -> None:
        limits = self.server.limits
        self._raw.deadline = time.monotonic() + limits.read_timeout_s
        self.command, self.request_version, self.requestline, self.path = "", "HTTP/1.1", "", ""
        reader: Reader = self.rfile  # type: ignore[assignment]
        try:
            line = reader.readline(limits.request_line_bytes + 1)
            if not line:
                self.close_connection = True
                return
            self.raw_requestline = line
            if len(line) > limits.request_line_bytes:
                self.send_error(
                    414, f"the request line is longer than {limits.request_line_bytes} bytes"
                )
                return
            reader.start_headers(limits.header_bytes, limits.header_count)
            try:
                parsed = self.parse_request()
            finally:
                reader.end_headers()
            if not parsed:
                return
            if self._read_body():
                self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            _log.debug("http {}: request timed out: dropped", peer(self.client_address))
            self.close_connection = True
        except (ConnectionError, OSError) as exc:
            _log.debug("http {}: connection ended: {}", peer(self.client_address), exc)
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it; else invite it."""
        if self._body_length() is None:
            return False
        return super().handle_expect_100()

    def _body_length(self) -> int | None:
        """The declared body length, or None after answering an error (and closing)."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.send_error(501, "Transfer-Encoding is not supported: send Content-Length")
            return None
        values = self.headers.get_all("Content-Length") or []
        if len(values) > 1:
            self.send_error(400, "Content-Length: given more than once")
            return None
        text = values[0].strip() if values else "0"
        if not (text.isascii() and text.isdigit()):
            self.send_error(400, f"Content-Length: expected a number of bytes, got {text[:40]!r}")
            return None
        length = int(text)
        if length > self.server.limits.body_bytes:
            self.send_error(
                413,
                f"the request body ({length} bytes) is over the limit of "
                f"{self.server.limits.body_bytes} bytes",
            )
            return None
        return length

    def _read_body(self) -> bool:
        length = self._body_length()
        if length is None:
            return False
        self.body = self.rfile.read(length) if length else b""
        if len(self.body) < length:  # the client closed mid-body
            self.close_connection = True
            return False
        return True

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        allowed = self.server.allowed_methods(path)
        if allowed is None:
            self.send_json(404, {"error": f"no such endpoint: {short(path)}"})
            return
        if self.command not in allowed:
            self.send_json(
                405,
                {
                    "error": f"{short(self.command)} is not allowed on {short(path)}; "
                    f"allowed: {', '.join(allowed)}"
                },
                headers={"Allow": ", ".join(allowed)},
            )
            return
        if self.exempt_from_in_flight(path):
            self._respond_guarded()
            return
        if not self.server.in_flight.acquire(blocking=False):
            skipped = self.server.overloads.due(time.monotonic())
            if skipped is not None:
                _log.warning(
                    "http: {} requests in flight (the limit): {} {} refused with 503 "
                    "({} more refused since the last line)",
                    self.server.limits.max_in_flight,
                    self.command,
                    short(path),
                    skipped,
                )
            self.send_json(
                503,
                {"error": "too many requests in flight: retry shortly", "retryable": True},
                headers={"Retry-After": "1"},
            )
            return
        try:
            self._respond_guarded()
        finally:
            self.server.in_flight.release()

    def _respond_guarded(self) -> None:
        try:
            self.respond()
        except (TimeoutError, ConnectionError):
            raise
        except Exception as exc:  # a bug in an endpoint: its traceback, and a 500 in JSON
            _log.opt(exception=exc).error(
                "http {} {} failed: {}", self.command, short(self.path), exc
            )
            self.close_connection = True
            self.send_json(500, {"error": f"internal error: {type(exc).__name__}"})

    # -- for subclasses ----------------------------------------------------------------------
    def respond(self) -> None:
        """Answer the request (``self.command``, ``self.path``, ``self.headers``, ``self.body``)."""
        raise NotImplementedError

    def exempt_from_in_flight(self, path: str) -> bool:
        """True for cheap paths that must answer under load (health probes)."""
        return False

    # -- answers -----------------------------------------------------------------------------
    def send_json(self, code: int, doc: Any, *, headers: dict[str, str] | None = None) -> None:
        self.send_body(code, json_bytes(doc), "application/json", headers=headers)

    def send_body(
        self,
        code: int,
        body: bytes,
        content_type: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every protocol-level error, in JSON, and the connection closed after it."""
        phrase, long = self.responses.get(code, ("Error", "Error"))
        text = explain or message or long
        _log.debug("http {}: {} {} ({})", peer(self.client_address), code, phrase, short(text, 200))
        self.close_connection = True
        self.send_json(code, {"error": text}, headers={"Connection": "close"})

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        _log.debug(
            "http {} {} {} {}",
            peer(self.client_address),
            short(self.command or "-"),
            short(self.path or "-", 200),
            code,
        )

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("http {}: {}", peer(self.client_address), short(format % args, 200))
