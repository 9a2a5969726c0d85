"""Finding a running master's broker: where it listens and with which key.

Clients find the broker like this, first match wins: explicit ``address``/``authkey`` arguments,
``SUPERVISOR_ADDRESS``/``SUPERVISOR_AUTHKEY``, then the files the master writes in its run folder
(``SUPERVISOR_RUN_DIR`` or the default): ``address`` and ``authkey`` (mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
KEY_PREFIX_FILE = "key_prefix"
NODE_FILE = "node"


def published_redis(run_dir: str | None = None) -> tuple[str, str, str | None] | None:
    """(URL, key prefix, node name) of the Redis broker a master of this machine uses, as it
    wrote them in its run folder (mode 0600), or None when the folder names no Redis broker."""
    run = Path(run_dir or os.environ.get("SUPERVISOR_RUN_DIR") or default_run_dir())
    try:
        url = (run / ADDRESS_FILE).read_text().strip()
    except OSError:
        return None
    if not url.startswith(REDIS_SCHEMES):
        return None
    try:
        prefix = (run / KEY_PREFIX_FILE).read_text().strip() or "sv"
    except OSError:
        prefix = "sv"
    try:
        node: str | None = (run / NODE_FILE).read_text().strip() or None
    except OSError:
        node = None
    return url, prefix, node
