"""The HTTP endpoints, served by a thread of the broker process: /metrics, /livez, /readyz.

The master passes :func:`make_on_serve`'s closure to ``start_broker_process``; the broker calls
it once its manager listener is bound. It binds the HTTP port there and then (a bind error fails
the broker's start with a message, so the master exits 1 saying why), starts a daemon thread
running a ``ThreadingHTTPServer``, and writes the bound ``host:port`` to ``RUN_DIR/http_address``
(for port 0, and for ``supervisor health``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.cli.health import HTTP_ADDRESS_FILE
from supervisor.errors import SupervisorError
from supervisor.master import scoreboard as sb
from supervisor.observability import probes
from supervisor.observability.collector import SupervisorCollector, build_registry
from supervisor.web.api import Api
from supervisor.web.schedules import ScheduleLister

__all__ = [
    "HTTP_ADDRESS_FILE",
    "MetricsServer",
    "make_on_serve",
    "start_http_server",
    "write_http_address",
]
_log = logger.bind(component="http")


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        broker: MemoryBroker,
        scoreboard: sb.Scoreboard,
        graceful_timeout_s: float = 0.0,
        api: Api | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.broker = broker
        self.scoreboard = scoreboard
        self.api = api or Api(broker)
        self.registry: CollectorRegistry
        self.collector: SupervisorCollector
        self.registry, self.collector = build_registry(
            broker, scoreboard, graceful_timeout_s=graceful_timeout_s
        )

    def liveness(self) -> probes.Probe:
        return probes.liveness(self.collector.heartbeat_age_s())

    def readiness(self) -> probes.Probe:
        ready = 0
        for slot in range(self.scoreboard.slots):
            view = self.scoreboard.read(slot)
            if view.pid > 0 and view.state in (sb.IDLE, sb.BUSY):
                ready += 1
        return probes.readiness(
            heartbeat_age_s=self.collector.heartbeat_age_s(),
            master_state=self.broker.master_status().get("state"),
            dispatching=self.broker.dispatching(),
            ready_workers=ready,
        )

    def url_address(self) -> str:
        """``host:port`` a local client can connect to (a wildcard bind means loopback)."""
        host, port = self.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls mid-request does not hold a thread forever

    def _api(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20)) if length else b""
        try:
            code, doc = self.server.api.handle(
                method, parts.path, parse_qs(parts.query), self.headers.get("Authorization"), body
            )
        except Exception as exc:  # a bad request must not take the thread or the broker down
            _log.opt(exception=exc).error("api {} {} failed: {}", method, parts.path, exc)
            code, doc = 500, {"error": f"internal error: {type(exc).__name__}"}
        self._send(code, json.dumps(doc, default=repr).encode() + b"\n", "application/json")

    def do_POST(self) -> None:
        if urlsplit(self.path).path.startswith("/api/"):
            self._api("POST")
        else:
            self._send(405, b"POST is for /api/ calls only\n", "text/plain")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path.startswith("/api/"):
            self._api("GET")
        elif path == "/metrics":
            try:
                body = generate_latest(self.server.registry)
            except Exception as exc:  # a scrape must not take the thread or the broker down
                _log.opt(exception=exc).error("metrics collection failed: {}", exc)
                self._send(500, f"metrics collection failed: {exc}\n".encode(), "text/plain")
                return
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif path in ("/livez", "/readyz"):
            probe = self.server.liveness() if path == "/livez" else self.server.readiness()
            self._send(
                200 if probe.ok else 503,
                json.dumps(probe.body()).encode() + b"\n",
                "application/json",
            )
        elif path == "/":
            self._send(
                200, b"supervisor: /metrics /livez /readyz /api/openapi.json\n", "text/plain"
            )
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("http {} {}", self.client_address[0], format % args)


def start_http_server(
    *,
    broker: MemoryBroker,
    scoreboard: sb.Scoreboard,
    host: str,
    port: int,
    graceful_timeout_s: float = 0.0,
    api: Api | None = None,
) -> MetricsServer:
    """Bind ``(host, port)`` now (raises SupervisorError) and serve in a daemon thread."""
    try:
        server = MetricsServer(
            (host, port),
            broker=broker,
            scoreboard=scoreboard,
            graceful_timeout_s=graceful_timeout_s,
            api=api,
        )
    except OSError as exc:
        message = (
            f"metrics endpoint: cannot listen on {host}:{port}: "
            f"{exc.strerror or exc} (set --metrics-port, or --no-metrics)"
        )
        _log.error(message)
        raise SupervisorError(message) from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    _log.info("metrics and health endpoints at http://{}/metrics", server.url_address())
    return server


def write_http_address(run_dir: str | os.PathLike[str], address: str) -> Path:
    """Publish where the endpoints listen (``host:port``), atomically, mode 0644."""
    path = Path(run_dir) / HTTP_ADDRESS_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(address + "\n")
    os.replace(tmp, path)
    return path


def make_on_serve(
    *,
    host: str,
    port: int,
    scoreboard: sb.Scoreboard,
    run_dir: str,
    graceful_timeout_s: float,
    api_token: str | None = None,
    schedules_database: str | None = None,
) -> Callable[[MemoryBroker], None]:
    """The ``on_serve`` hook for ``start_broker_process``: runs in the broker process.

    ``schedules_database`` (the scheduler's database URL, when it runs) serves /api/schedules.
    """

    def on_serve(broker: MemoryBroker) -> None:
        lister = ScheduleLister(schedules_database) if schedules_database else None
        api = Api(broker, token=api_token, schedules=lister)
        server = start_http_server(
            broker=broker,
            scoreboard=scoreboard,
            host=host,
            port=port,
            graceful_timeout_s=graceful_timeout_s,
            api=api,
        )
        write_http_address(run_dir, server.url_address())

    return on_serve
