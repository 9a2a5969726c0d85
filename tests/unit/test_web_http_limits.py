"""The HTTP server's limits on a real socket: body, URL and header sizes, read deadlines,
concurrency, JSON errors everywhere, 405 with ``Allow``, and no traceback for a client's fault."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.master import scoreboard as sb
from supervisor.registry import TaskOptions
from supervisor.web.server import Limits, MetricsServer, start_http_server
from tests.helpers import BrokerSpy, wait_until

pytestmark = pytest.mark.timeout(60)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Lines = list[tuple[str, str, bool]]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """(level, message, has a traceback) of every log line, DEBUG and up."""
    out: Lines = []
    logger.enable("supervisor")
    sink = logger.add(
        lambda m: out.append(
            (m.record["level"].name, m.record["message"], m.record["exception"] is not None)
        ),
        level="DEBUG",
    )
    yield out
    logger.remove(sink)
    logger.disable("supervisor")


@pytest.fixture
def board() -> sb.Scoreboard:
    board = sb.Scoreboard(2)
    now = time.monotonic()
    board.reset(board.master_slot, os.getpid(), now)
    board.heartbeat(board.master_slot, now, sb.BUSY)
    return board


def serve(broker: Any, board: sb.Scoreboard, **limits: Any) -> MetricsServer:
    return start_http_server(
        broker=broker, scoreboard=board, host="127.0.0.1", port=0, limits=Limits(**limits)
    )


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(task_types={"ok": TaskOptions()})


@pytest.fixture
def server(broker: MemoryBroker, board: sb.Scoreboard) -> Iterator[MetricsServer]:
    srv = serve(broker, board, read_timeout_s=2.0, linger_s=5.0)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[MetricsServer]:
    """One server for the many requests of parametrized tests (a shutdown takes 0.5 s)."""
    board = sb.Scoreboard(1)
    board.reset(board.master_slot, os.getpid(), time.monotonic())
    srv = serve(MemoryBroker(task_types={"ok": TaskOptions()}), board, read_timeout_s=2.0)
    yield srv
    srv.shutdown()
    srv.server_close()


def connect(srv: MetricsServer) -> socket.socket:
    host, port = srv.server_address[:2]
    sock = socket.create_connection((str(host), int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-case headers, body) read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def raw(srv: MetricsServer, request: bytes) -> tuple[int, dict[str, str], Any]:
    with connect(srv) as sock:
        sock.sendall(request)
        code, headers, body = read_response(sock)
    return code, headers, json.loads(body)


def no_traceback(lines: Lines) -> None:
    assert [m for level, m, tb in lines if tb or level in ("ERROR", "CRITICAL")] == []


def test_a_20_mb_body_gets_413_json_without_being_read_or_a_traceback(
    server: MetricsServer, lines: Lines, capfd: pytest.CaptureFixture[str]
) -> None:
    body = b"x" * (20 << 20)
    req = urllib.request.Request(
        f"http://{server.url_address()}/api/tasks/x/cancel", data=body, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        OPENER.open(req, timeout=20)
    assert info.value.code == 413
    assert info.value.headers["Content-Type"] == "application/json"
    with info.value as answer:  # closes its socket
        assert "over the limit of 65536 bytes" in json.loads(answer.read())["error"]
    # The refusal comes from the declared length, before any of the body is read.
    with connect(server) as sock:
        sock.sendall(b"POST /api/tasks/x/cancel HTTP/1.1\r\nContent-Length: 20971520\r\n\r\n")
        code, headers, _ = read_response(sock)
        assert code == 413 and headers["connection"] == "close"
    no_traceback(lines)
    assert "Traceback" not in capfd.readouterr().err


def test_a_false_content_length_is_refused_or_dropped_within_the_read_timeout(
    broker: MemoryBroker, board: sb.Scoreboard, lines: Lines
) -> None:
    patient = serve(broker, board, read_timeout_s=30.0)
    try:
        started = time.monotonic()
        code, _, doc = raw(
            patient,
            b"POST /api/tasks/x/cancel HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        )
        assert code == 413 and "99999999999 bytes" in doc["error"]
        assert time.monotonic() - started < 15.0  # answered at once, not at the read timeout
    finally:
        patient.shutdown()
        patient.server_close()
    srv = serve(broker, board, read_timeout_s=1.0, linger_s=0.5)
    try:
        with connect(srv) as sock:  # a length within the limit, and a body that never comes
            sock.sendall(b"POST /api/tasks/x/cancel HTTP/1.1\r\nContent-Length: 1000\r\n\r\nab")
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server, no answer owed
            elapsed = time.monotonic() - started
        assert elapsed < 1.0 + 0.5 + 2.0  # read timeout + linger + scheduling slack
        assert any("timed out" in m for _, m, _ in lines)
    finally:
        srv.shutdown()
        srv.server_close()
    no_traceback(lines)


def test_a_client_that_drips_its_headers_is_dropped_at_the_deadline(
    broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    srv = serve(broker, board, read_timeout_s=1.0, linger_s=0.2)
    closed = threading.Event()
    try:
        with connect(srv) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()

            def drip() -> None:  # one header byte every 0.1 s: each read alone is quick
                while not closed.wait(0.1):
                    try:
                        sock.sendall(b"X")
                    except OSError:
                        return

            threading.Thread(target=drip, daemon=True).start()
            sock.settimeout(10)
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
            elapsed = time.monotonic() - started
            closed.set()
        assert elapsed < 1.0 + 0.2 + 2.0
    finally:
        closed.set()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("method", ["DELETE", "TRACE", "PUT", "PATCH", "OPTIONS", "HEAD", "FOO"])
@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/tasks", "GET"),
        ("/api/tasks/abc", "GET"),
        ("/api/tasks/abc/cancel", "POST"),
        ("/metrics", "GET"),
        ("/livez", "GET"),
    ],
)
def test_a_method_the_path_does_not_declare_is_405_json_with_allow(
    shared_server: MetricsServer, method: str, path: str, allow: str
) -> None:
    with connect(shared_server) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        code, headers, body = read_response(sock) if method != "HEAD" else _head(sock)
    assert code == 405 and headers["allow"] == allow
    assert headers["content-type"] == "application/json"
    if method != "HEAD":  # a HEAD answer has no body
        assert f"{method} is not allowed" in json.loads(body)["error"]


def _head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    return int(head[0].split()[1]), headers, b""


def test_get_on_a_post_path_and_unknown_paths_answer_json(server: MetricsServer) -> None:
    code, headers, doc = raw(server, b"GET /api/tasks/x/retry HTTP/1.1\r\n\r\n")
    assert code == 405 and headers["allow"] == "POST" and "error" in doc
    code, headers, doc = raw(server, b"DELETE /nowhere HTTP/1.1\r\n\r\n")
    assert code == 404 and headers["content-type"] == "application/json"
    assert "no such endpoint" in doc["error"]


def test_a_70_kb_url_is_414_json(server: MetricsServer, lines: Lines) -> None:
    url = f"http://{server.url_address()}/api/tasks?type=" + "a" * 70_000
    with pytest.raises(urllib.error.HTTPError) as info:
        OPENER.open(url, timeout=10)
    assert info.value.code == 414
    with info.value as answer:
        assert "longer than 8192 bytes" in json.loads(answer.read())["error"]
    no_traceback(lines)


def test_oversized_or_too_many_headers_are_431_json(server: MetricsServer) -> None:
    big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
    code, _, doc = raw(server, big)
    assert code == 431 and "header block is too large" in doc["error"]
    many = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(80))
    code, _, doc = raw(server, many + b"\r\n")
    assert code == 431 and "more than 64 header lines" in doc["error"]


def test_protocol_errors_are_json(server: MetricsServer, lines: Lines) -> None:
    code, _, doc = raw(server, b"GARBAGE\r\n\r\n")
    assert code == 400 and "error" in doc
    code, _, doc = raw(server, b"GET / HTTP/9.9\r\n\r\n")
    assert code == 505 and "error" in doc
    chunked = b"POST /api/tasks/x/cancel HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    code, _, doc = raw(server, chunked)
    assert code == 501 and "Content-Length" in doc["error"]
    code, _, doc = raw(server, b"GET /api/stats HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n")
    assert code == 400 and "Content-Length" in doc["error"]
    no_traceback(lines)


def test_a_kept_alive_connection_serves_several_requests(server: MetricsServer) -> None:
    with connect(server) as sock:
        for path in (b"/api/stats", b"/livez", b"/api/tasks?limit=5"):
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            code, headers, body = read_response(sock)
            assert code == 200 and json.loads(body)
        assert "Python" not in headers.get("server", "")


def test_past_the_in_flight_limit_requests_get_503_json_and_probes_still_answer(
    broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    release = threading.Event()
    entered: list[int] = []

    def slow_stats() -> dict[str, int]:
        entered.append(1)
        release.wait(30)
        return broker.get_queue_stats()

    srv = serve(BrokerSpy(broker, get_queue_stats=slow_stats), board, max_in_flight=2)
    results: list[int] = []

    def call() -> None:
        with OPENER.open(f"http://{srv.url_address()}/api/stats", timeout=30) as resp:
            results.append(resp.status)

    threads = [threading.Thread(target=call) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(entered) == 2, what="two requests in flight")
        with pytest.raises(urllib.error.HTTPError) as info:
            OPENER.open(f"http://{srv.url_address()}/api/tasks", timeout=10)
        assert info.value.code == 503 and info.value.headers["Retry-After"] == "1"
        with info.value as answer:
            assert json.loads(answer.read()) == {
                "error": "too many requests in flight: retry shortly",
                "retryable": True,
            }
        with OPENER.open(f"http://{srv.url_address()}/livez", timeout=10) as resp:
            assert resp.status == 200  # probes are not counted against the limit
    finally:
        release.set()
        for t in threads:
            t.join(30)
        srv.shutdown()
        srv.server_close()
    assert results == [200, 200]


def test_past_the_connection_limit_a_connection_gets_503_json(
    broker: MemoryBroker, board: sb.Scoreboard
) -> None:
    srv = serve(broker, board, max_connections=1, read_timeout_s=10.0)
    try:
        with connect(srv) as idle:  # holds the only connection slot, sends nothing
            idle.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(idle)[0] == 200  # served: the slot is taken
            code, headers, doc = raw(srv, b"GET /livez HTTP/1.1\r\n\r\n")
            assert code == 503 and headers["retry-after"] == "1" and doc["retryable"] is True
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_bug_in_an_endpoint_logs_its_traceback_and_answers_500_json(
    broker: MemoryBroker, board: sb.Scoreboard, lines: Lines
) -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("a bug")

    srv = serve(BrokerSpy(broker, get_queue_stats=broken), board)
    try:
        code, _, doc = raw(srv, b"GET /api/stats HTTP/1.1\r\n\r\n")
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 500 and doc == {"error": "internal error: RuntimeError"}
    assert [(lvl, tb) for lvl, m, tb in lines if "failed" in m] == [("ERROR", True)]


def test_metrics_refuse_rather_than_report_zeros_when_a_source_is_busy(
    broker: MemoryBroker, board: sb.Scoreboard, lines: Lines
) -> None:
    from supervisor.errors import DatabaseBusy

    def busy() -> dict[str, int]:
        raise DatabaseBusy("the task table is locked")

    srv = serve(BrokerSpy(broker, stats=busy), board)
    try:
        code, headers, doc = raw(srv, b"GET /metrics HTTP/1.1\r\n\r\n")
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 503 and headers["retry-after"] == "1"
    assert doc == {"error": "metrics unavailable: the task table is locked", "retryable": True}
    no_traceback(lines)


def test_an_overload_is_logged_once_per_interval_with_a_count() -> None:
    from supervisor.web.httpd import Throttle

    throttle = Throttle(interval_s=10.0)
    assert throttle.due(100.0) == 0
    assert [throttle.due(t) for t in (101.0, 105.0, 109.9)] == [None, None, None]
    assert throttle.due(110.0) == 3
    assert throttle.due(111.0) is None
