"""Test helpers: poll with a deadline (never a fixed sleep), services that skip or fail in CI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline.

    ``what`` names the wait in the failure; a callable is asked at the deadline, so the message
    can say where things stood."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            named = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {named}{detail}")
        time.sleep(interval_s)


def require_service(ok: bool, reason: str) -> None:
    """Skip on a laptop without the service; fail in CI (CI=true) so CI cannot pass by skipping."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: integration tests must not be skipped)")
    pytest.skip(reason)


class BrokerSpy:
    """Wraps a broker for a test: records the name of each call made through it; a keyword
    argument ``name=function`` answers that call instead of the broker."""

    def __init__(self, broker: Any, **answers: Callable[..., Any]) -> None:
        self._broker = broker
        self._answers = answers
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = self._answers.get(name) or getattr(self._broker, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return target(*args, **kwargs)

        return call


_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def sqlite_locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Another process holds ``BEGIN EXCLUSIVE`` on the SQLite file at ``path`` (as a backup or
    a migration would) for the duration of the ``with`` block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
