"""Test helpers: poll with a deadline (never a fixed sleep), services that skip or fail in CI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
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
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
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
