"""Connecting to the broker: where it listens, with which key, and a thin call client.

Clients find the broker like this, first match wins: explicit ``address``/``authkey`` arguments,
``SUPERVISOR_ADDRESS``/``SUPERVISOR_AUTHKEY``, then the files the master writes in its run folder
(``SUPERVISOR_RUN_DIR`` or the default): ``address`` and ``authkey`` (mode 0600).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from multiprocess import AuthenticationError

from supervisor.broker.server import BROKER_IDENT
from supervisor.broker.wire import FastClient
from supervisor.config import default_run_dir
from supervisor.errors import BrokerError

ADDRESS_FILE = "address"
AUTHKEY_FILE = "authkey"
SOCKET_FILE = "broker.sock"
PID_FILE = "master.pid"


def parse_address(text: str) -> Any:
    """``/path/sock`` or ``unix:/path`` -> path; ``host:port`` -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise BrokerError(f"broker address must be a socket path or HOST:PORT, got {text!r}")
    text = text.strip()
    if text.startswith("unix:"):
        return text[5:]
    if "/" in text or ":" not in text:
        return text
    host, _, port = text.rpartition(":")
    try:
        port_no = int(port)
    except ValueError:
        raise BrokerError(f"broker address {text!r}: port {port!r} is not a number") from None
    if not 0 <= port_no <= 65535:
        raise BrokerError(f"broker address {text!r}: port must be 0-65535")
    return (host.strip("[]") or "127.0.0.1", port_no)


def format_address(address: Any) -> str:
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def locate(
    address: str | None = None, authkey: str | bytes | None = None, run_dir: str | None = None
) -> tuple[Any, bytes]:
    """Resolve (address, authkey) as described in the module docstring."""
    run = Path(run_dir or os.environ.get("SUPERVISOR_RUN_DIR") or default_run_dir())
    addr_text = address or os.environ.get("SUPERVISOR_ADDRESS")
    if not addr_text:
        try:
            addr_text = (run / ADDRESS_FILE).read_text().strip()
        except OSError:
            raise BrokerError(
                f"no master is running at {run} (no {run / ADDRESS_FILE}); start one with "
                "`supervisor run`, or give --address / SUPERVISOR_ADDRESS"
            ) from None
    key: str | bytes | None = authkey or os.environ.get("SUPERVISOR_AUTHKEY")
    if not key:
        try:
            key = (run / AUTHKEY_FILE).read_text().strip()
        except OSError as exc:
            raise BrokerError(
                f"cannot read the auth key at {run / AUTHKEY_FILE} ({exc.strerror}); "
                "give --authkey or SUPERVISOR_AUTHKEY"
            ) from None
    return parse_address(addr_text), key.encode() if isinstance(key, str) else key


class BrokerClient:
    """Calls broker methods over the manager connection, one round trip each.

    Safe to share between threads (one connection per thread) and across ``fork`` (the child
    opens its own connection). ``timeout_s`` bounds each answer; past it the call raises
    BrokerError and the connection is dropped.
    """

    def __init__(self, address: Any, authkey: bytes, *, timeout_s: float | None = None) -> None:
        self.address = address
        self._authkey = authkey
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._pid = os.getpid()

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        authkey: str | bytes | None = None,
        run_dir: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> BrokerClient:
        addr, key = locate(address, authkey, run_dir)
        return cls(addr, key, timeout_s=timeout_s)

    def _connection(self) -> Any:
        if self._pid != os.getpid():  # forked: never touch the parent's sockets
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            where = format_address(self.address)
            try:
                conn = FastClient(self.address, authkey=self._authkey)
                conn.send((None, "accept_connection", ("client",), {}))
                kind, _ = conn.recv()
            except AuthenticationError:
                raise BrokerError(f"the broker at {where} refused the auth key") from None
            except (OSError, EOFError) as exc:
                raise BrokerError(f"no broker answers at {where}: {exc}") from None
            if kind != "#RETURN":
                raise BrokerError(f"the broker at {where} did not accept the connection")
            self._local.conn = conn
        return conn

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        conn = self._connection()
        try:
            conn.send((BROKER_IDENT, method, args, kwargs))
            if self.timeout_s is not None and not conn.poll(self.timeout_s):
                raise TimeoutError(f"no answer within {self.timeout_s:g} s")
            kind, result = conn.recv()
        except (OSError, EOFError, TimeoutError) as exc:
            self.close()
            raise BrokerError(f"broker call {method} failed: {exc or type(exc).__name__}") from None
        if kind == "#RETURN":
            return result
        if kind == "#ERROR":
            raise result
        raise BrokerError(f"broker call {method} failed in the broker:\n{result}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except OSError:
                pass
