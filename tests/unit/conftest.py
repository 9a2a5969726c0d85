"""Fixtures of the unit layer: a fake wall clock that tests move by hand (never sleep)."""

from __future__ import annotations

import pytest


class FakeClock:
    """A wall clock (epoch seconds) that only moves when a test calls :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
