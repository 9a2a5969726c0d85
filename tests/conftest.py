"""Fixtures of every layer. The package logs nothing until an application enables it (a
library's manners); the tests are the application here, and read what it logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger

import supervisor  # noqa: F401  (imported first: importing it disables its log)
from tests.redisserver import RedisServer, require_redis_server

logger.enable("supervisor")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for this test module (a free port, a temp folder, AOF with fsync
    always), so a test may kill or restart it; skipped on a laptop without one, failing in CI."""
    require_redis_server()
    server = RedisServer()
    server.start()
    yield server
    server.stop()
