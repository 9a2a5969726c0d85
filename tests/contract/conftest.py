"""The contract suite's brokers: every test in tests/contract runs once per implementation.

A test asks for ``make`` and calls ``make(task_types=..., default_options=..., ...)`` to get a
fresh broker of the implementation named in its id (``[memory]``, ``[durable]``, ``[redis]``).
Every broker runs on the fake clock ``clock`` for task times (etas, backoffs, records). The
Redis broker keeps store TTLs with Redis' own expiry, in real time: the store's TTL tests wait
for it with a deadline poll. Redis runs as a private ``redis-server`` (a free port, a temp
folder) for the session; each broker gets a key prefix of its own.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.base import Broker
from supervisor.broker.embedded.durable import DurableBroker
from supervisor.broker.embedded.journal import open_journal
from supervisor.broker.embedded.memory import MemoryBroker
from tests.redisserver import RedisServer, private_redis_server
from tests.unit.conftest import FakeClock

MakeBroker = Callable[..., Broker]
IMPLEMENTATIONS = ["memory", "durable", "redis"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole contract suite (each test has its own prefix)."""
    with private_redis_server() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=IMPLEMENTATIONS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(
    kind: str, clock: FakeClock, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MakeBroker]:
    made: list[Any] = []
    redis_url = request.getfixturevalue("redis_server").url if kind == "redis" else None

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
        elif kind == "redis":
            from supervisor.broker.redis import RedisBroker

            prefix = f"c{uuid.uuid4().hex[:12]}"
            broker = RedisBroker(url=redis_url, prefix=prefix, node="a", clock=clock, **options)
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
