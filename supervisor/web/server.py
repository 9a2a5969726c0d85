"""The HTTP endpoints, served by threads of the broker process (a Redis node: of its node
process): /metrics, /livez, /readyz, /api/.

The master passes :func:`make_on_serve`'s closure to ``start_broker_process``; the broker calls
it once its manager listener is bound. It binds the HTTP port there and then (a bind error fails
the broker's start with a message, so the master exits 1 saying why), starts a daemon thread
running a :class:`~supervisor.web.httpd.BoundedHTTPServer` (limits, read deadlines, JSON errors:
see that module), and writes the bound ``host:port`` to ``RUN_DIR/http_address`` (for port 0,
and for ``supervisor health``). Everything here reads the broker through
:class:`~supervisor.observability.view.BrokerView`, never an implementation.

While the broker does not answer (Redis down or cut off), ``/metrics`` still answers 200 with
``supervisor_broker_up`` 0 and what the node knows alone, and ``/readyz`` answers 503 saying so.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from loguru import logger
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from supervisor.cli.health import HTTP_ADDRESS_FILE
from supervisor.errors import BrokerError, ConfigError
from supervisor.master import scoreboard as sb
from supervisor.observability import probes
from supervisor.observability.collector import SupervisorCollector, build_registry
from supervisor.observability.view import BrokerView
from supervisor.web.api import Api, public_message
from supervisor.web.handler import JsonRequestHandler
from supervisor.web.httpd import BoundedHTTPServer, Limits
from supervisor.web.schedules import ScheduleLister

__all__ = [
    "HTTP_ADDRESS_FILE",
    "Limits",
    "MetricsServer",
    "make_on_serve",
    "start_http_server",
    "write_http_address",
]
_log = logger.bind(component="http")
PLAIN_PATHS = ("/", "/metrics", "/livez", "/readyz")
PROBE_PATHS = ("/livez", "/readyz")
MAX_QUERY_FIELDS = 32


class MetricsServer(BoundedHTTPServer):
    """/metrics, /livez, /readyz and /api/ over a :class:`BrokerView` and the scoreboard."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        broker: BrokerView,
        scoreboard: sb.Scoreboard,
        graceful_timeout_s: float = 0.0,
        api: Api | None = None,
        limits: Limits | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(address, Handler, limits=limits)
        self.broker = broker
        self.scoreboard = scoreboard
        self.api = api or Api(broker)
        self.registry: CollectorRegistry
        self.collector: SupervisorCollector
        self.registry, self.collector = build_registry(
            broker, scoreboard, graceful_timeout_s=graceful_timeout_s, node=node
        )

    def allowed_methods(self, path: str) -> tuple[str, ...] | None:
        if path.startswith("/api/"):
            return self.api.allowed(path)
        return ("GET",) if (path.rstrip("/") or "/") in PLAIN_PATHS else None

    def liveness(self) -> probes.Probe:
        return probes.liveness(self.collector.heartbeat_age_s())

    def readiness(self) -> probes.Probe:
        ready = 0
        for slot in range(self.scoreboard.slots):
            view = self.scoreboard.read(slot)
            if view.pid > 0 and view.state in (sb.IDLE, sb.BUSY):
                ready += 1
        try:
            master_state = self.broker.master_status().get("state")
            dispatching = self.broker.dispatching()
        except BrokerError as exc:  # Redis down or cut off: not ready, and say why
            return probes.Probe(
                False, f"the broker does not answer: {exc}", {"ready_workers": ready}
            )
        return probes.readiness(
            heartbeat_age_s=self.collector.heartbeat_age_s(),
            master_state=master_state,
            dispatching=dispatching,
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


class Handler(JsonRequestHandler):
    """Routes a request the server's limits let through (method allowed, body read)."""

    server: MetricsServer

    def exempt_from_in_flight(self, path: str) -> bool:
        return path.rstrip("/") in PROBE_PATHS

    def respond(self) -> None:
        path, _, query = self.path.partition("?")  # as the handler routed it
        if path.startswith("/api/"):
            self._api(path, query)
            return
        path = path.rstrip("/") or "/"
        if path == "/metrics":
            self._metrics()
        elif path in PROBE_PATHS:
            probe = self.server.liveness() if path == "/livez" else self.server.readiness()
            self.send_json(200 if probe.ok else 503, probe.body())
        else:
            self.send_body(
                200, b"supervisor: /metrics /livez /readyz /api/openapi.json\n", "text/plain"
            )

    def _api(self, path: str, raw_query: str) -> None:
        try:
            query = parse_qs(
                raw_query,
                keep_blank_values=True,
                strict_parsing=False,
                errors="strict",
                max_num_fields=MAX_QUERY_FIELDS,
            )
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self.send_json(400, {"error": f"query string: {reason}"})
            return
        code, doc = self.server.api.handle(
            self.command, path, query, self.headers.get("Authorization"), self.body
        )
        headers: dict[str, str] = {}
        if code == 405:
            headers["Allow"] = ", ".join(self.server.api.allowed(path) or ())
        elif code == 503:
            headers["Retry-After"] = "1"
        self.send_json(code, doc, headers=headers)

    def _metrics(self) -> None:
        try:
            body = generate_latest(self.server.registry)
        except BrokerError as exc:  # the collector answers broker_up 0 itself; a last resort
            _log.warning("metrics collection failed: {}", public_message(exc))
            self.send_json(
                503,
                {"error": f"metrics unavailable: {public_message(exc)}", "retryable": True},
                headers={"Retry-After": "1"},
            )
            return
        except Exception as exc:  # a scrape must not take the thread or the broker down
            _log.opt(exception=exc).error("metrics collection failed: {}", exc)
            self.send_json(500, {"error": f"metrics collection failed: {type(exc).__name__}"})
            return
        self.send_body(200, body, CONTENT_TYPE_LATEST)


def start_http_server(
    *,
    broker: BrokerView,
    scoreboard: sb.Scoreboard,
    host: str,
    port: int,
    graceful_timeout_s: float = 0.0,
    api: Api | None = None,
    limits: Limits | None = None,
    node: str | None = None,
) -> MetricsServer:
    """Bind ``(host, port)`` now (raises ConfigError naming the setting) and serve in a daemon
    thread. ``node`` labels the per-node metrics (default: see
    :class:`~supervisor.observability.collector.SupervisorCollector`)."""
    try:
        server = MetricsServer(
            (host, port),
            broker=broker,
            scoreboard=scoreboard,
            graceful_timeout_s=graceful_timeout_s,
            api=api,
            limits=limits,
            node=node,
        )
    except OSError as exc:
        message = (
            f"metrics endpoint: cannot listen on {host}:{port}: "
            f"{exc.strerror or exc} (set --metrics-port, or --no-metrics)"
        )
        _log.error(message)
        raise ConfigError(message) from None  # a setting to change: the master exits 2
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
    limits: Limits | None = None,
) -> Callable[[BrokerView], None]:
    """The ``on_serve`` hook for ``start_broker_process``: runs in the broker process.

    ``schedules_database`` (the scheduler's database URL, when it runs) serves /api/schedules;
    ``limits`` bound the HTTP server (default :class:`Limits`).
    """

    def on_serve(broker: BrokerView) -> None:
        lister = ScheduleLister(schedules_database) if schedules_database else None
        api = Api(broker, token=api_token, schedules=lister)
        server = start_http_server(
            broker=broker,
            scoreboard=scoreboard,
            host=host,
            port=port,
            graceful_timeout_s=graceful_timeout_s,
            api=api,
            limits=limits,
        )
        write_http_address(run_dir, server.url_address())

    return on_serve
