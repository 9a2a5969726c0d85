"""The contract suite's brokers: every test in tests/contract runs once per implementation.

A test asks for ``make`` and calls ``make(task_types=..., default_options=..., ...)`` to get a
fresh broker of the implementation named in its id (``[memory]``, ``[durable]``). Every broker
runs on the fake clock ``clock``; ``elapse(seconds)`` moves time for the broker under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.base import Broker
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.broker.embedded.memory import MemoryBroker
from tests.unit.conftest import FakeClock

MakeBroker = Callable[..., Broker]
IMPLEMENTATIONS = ["memory", "durable"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=IMPLEMENTATIONS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, clock: FakeClock, tmp_path: Path) -> Iterator[MakeBroker]:
    made: list[Any] = []

    def make_broker(**options: Any) -> Broker:
        options.setdefault("rng", random.Random(0))
        broker: Broker
        if kind == "memory":
            broker = MemoryBroker(clock=clock, **options)
        elif kind == "durable":
            url = f"sqlite:///{tmp_path / f'tasks-{len(made)}.db'}"
            broker = DurableBroker(
                journal=open_journal(url, run_dir=str(tmp_path), clock=clock),
                clock=clock,
                **options,
            )
        else:  # pragma: no cover - a new implementation must be added above
            raise AssertionError(f"unknown broker implementation {kind!r}")
        made.append(broker)
        return broker

    yield make_broker
    for broker in made:
        close = getattr(broker, "close", None)
        if close is not None:
            close()


@pytest.fixture
def broker(make: MakeBroker) -> Broker:
    return make()
