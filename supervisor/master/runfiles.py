"""The run folder: where local clients find the broker's address, auth key and master pid.

The folder is made mode 0700 and the key file 0600. A second master on the same folder is
refused while the first one's pid is alive; a stale folder (a master that was ``kill -9``ed) is
taken over.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from supervisor.client.discovery import (
    ADDRESS_FILE,
    AUTHKEY_FILE,
    PID_FILE,
    SOCKET_FILE,
    format_address,
    parse_address,
)
from supervisor.errors import ConfigError


@dataclass
class RunFiles:
    run_dir: Path
    address: Any
    authkey: bytes

    @classmethod
    def prepare(cls, run_dir: str, address: str | None, authkey: str | None) -> RunFiles:
        path = Path(run_dir)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run_dir: cannot create {path}: {exc.strerror}") from None
        other = running_master(path)
        if other is not None:
            raise ConfigError(
                f"a master is already running with pid {other} at {path}; stop it "
                "or give another --run-dir"
            )
        addr = parse_address(address) if address else str(path / SOCKET_FILE)
        if isinstance(addr, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)  # a stale socket of a dead master
        key = authkey.encode() if authkey else secrets.token_hex(32).encode()
        return cls(path, addr, key)

    def publish(self, address: Any) -> None:
        """Write the files clients read, once the broker listens at ``address``."""
        self.address = address
        _write_private(self.run_dir / AUTHKEY_FILE, self.authkey.decode() + "\n")
        _write_private(self.run_dir / ADDRESS_FILE, format_address(address) + "\n")
        _write_private(self.run_dir / PID_FILE, f"{os.getpid()}\n")

    def remove(self) -> None:
        for name in (PID_FILE, ADDRESS_FILE, AUTHKEY_FILE, "http_address"):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()
        if isinstance(self.address, str):
            with contextlib.suppress(OSError):
                os.unlink(self.address)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def running_master(run_dir: Path) -> int | None:
    """The pid of a live master using ``run_dir``, or None."""
    try:
        pid = int((run_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return None
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return None
    return pid if "supervisor" in cmd else None
