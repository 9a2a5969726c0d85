"""Fixtures of every layer. The package logs nothing until an application enables it (a
library's manners); the tests are the application here, and read what it logs."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loguru import logger

import supervisor  # noqa: F401  (imported first: importing it disables its log)
from tests.redisserver import RedisServer, private_redis_server

logger.enable("supervisor")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for this test module (a free port, a temp folder, AOF with fsync
    always), so a test may kill or restart it; skipped on a laptop without one, failing in CI."""
    with private_redis_server() as server:
        yield server


@pytest.fixture
def make_redis_broker(redis_server: RedisServer) -> Iterator[Callable[..., Any]]:
    """``make_redis_broker(**kw)``: a RedisBroker on the module's redis-server and this test's
    own key prefix (node ``a``, a seeded rng, unless given); all closed after the test."""
    from supervisor.broker.redis import RedisBroker

    prefix = f"t{uuid.uuid4().hex[:10]}"
    made: list[RedisBroker] = []

    def factory(**kw: Any) -> RedisBroker:
        kw = {"url": redis_server.url, "prefix": prefix, "node": "a", "rng": random.Random(0), **kw}
        b = RedisBroker(**kw)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()
