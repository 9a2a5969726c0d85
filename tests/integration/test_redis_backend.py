"""The Redis backend as the master uses it, without a master: start (checks, the node process),
lease renewal and recovery on tick, stop; Redis that cannot be reached is a clear error."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import supervisor
from supervisor.broker import base
from supervisor.broker.embedded.tasktable import TaskTable
from supervisor.broker.redis.backend import RedisBackend
from supervisor.db import make_engine
from supervisor.errors import BrokerError
from supervisor.master.runfiles import RunFiles
from supervisor.master.scoreboard import Scoreboard
from supervisor.registry import TaskOptions
from tests.helpers import wait_until
from tests.redisserver import RedisServer, free_port, private_redis_server

pytestmark = pytest.mark.timeout(60)
OPTS = TaskOptions(timeout_s=30.0, max_retries=2, backoff_base_s=0.0, backoff_cap_s=0.0)


def settings(tmp_path: Path, url: str, **kw: Any) -> Any:
    base_settings = dict(
        broker=url,
        key_prefix=f"b{uuid.uuid4().hex[:8]}",
        node_name=None,
        lease=0.6,
        database=f"sqlite:///{tmp_path / 'tasks.db'}",
        max_payload_bytes=1 << 20,
        finished_records=1000,
        result_ttl=3600.0,
        failure_ttl=3600.0,
        metrics=False,
        scheduler=False,
        run_dir=str(tmp_path / "run"),
    )
    base_settings.update(kw)
    return SimpleNamespace(**base_settings)


def start(backend: RedisBackend, tmp_path: Path) -> Any:
    run = RunFiles.prepare(str(tmp_path / "run"), None, None)
    return backend.start(
        run_files=run, scoreboard=Scoreboard(4), task_types={"t": OPTS}, default_options=OPTS
    )


def test_unreachable_redis_is_a_clear_error_naming_the_url(tmp_path: Path) -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    backend = RedisBackend(settings(tmp_path, url))
    with pytest.raises(BrokerError) as err:
        start(backend, tmp_path)
    assert "127.0.0.1" in str(err.value) and "secret" not in str(err.value)
    assert backend.pid is None
    backend.stop()


def test_the_node_process_writes_history_and_stops(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    s = settings(tmp_path, redis_server.url, node_name="n1")
    backend = RedisBackend(s)
    broker = start(backend, tmp_path)
    try:
        assert backend.pid is not None and "n1" in backend.describe()
        tid = broker.push({"type": "t", "params": pickle.dumps({"n": 1})})
        table = TaskTable(make_engine(s.database))
        wait_until(lambda: table.get(tid) is not None, 10, what="the history writer")
        assert table.get(tid).status == base.QUEUED
        local = supervisor.connect(run_dir=s.run_dir)  # found through the run folder
        assert local.get_task_state(tid)["status"] == base.QUEUED
    finally:
        backend.stop()
    assert backend.pid is None


def test_tick_renews_this_nodes_leases_and_recovers_a_dead_nodes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    s = settings(tmp_path, redis_server.url, node_name="alive")
    alive = RedisBackend(s)
    broker = start(alive, tmp_path)
    dead = RedisBackend(
        settings(tmp_path, redis_server.url, node_name="dead", key_prefix=s.key_prefix)
    )
    dead._options = ({"t": OPTS}, OPTS)
    dead_broker = dead.make_broker()
    try:
        mine = broker.push({"type": "t", "params": b"", "task_id": "mine"})
        theirs = broker.push({"type": "t", "params": b"", "task_id": "theirs"})
        assert broker.pop("worker:0:1")["task_id"] == mine
        assert dead_broker.pop("worker:0:2")["task_id"] == theirs  # then its node dies
        clock = [0.0]

        def recovered() -> bool:
            clock[0] += 0.25
            alive.tick(clock[0], ["worker:0:1"])
            return broker.get_task(theirs)["status"] != base.RUNNING

        wait_until(recovered, 10, what="the dead node's task to be recovered")
        rec = broker.get_task(theirs)
        assert rec["errors"][-1]["reason"] == base.REASON_WORKER_LOST
        assert broker.get_task(mine)["status"] == base.RUNNING  # renewed all along
        assert alive.recovered == 1
    finally:
        alive.stop()
        dead_broker.close()


def test_a_redis_that_may_lose_tasks_gets_a_loud_warning(tmp_path: Path) -> None:
    """Eviction on, persistence off: the node warns at start (and runs: a warning, not a
    refusal, so a developer's plain local Redis still works)."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        with private_redis_server() as srv:
            import redis

            admin = redis.Redis.from_url(srv.url)
            admin.config_set("appendonly", "no")
            admin.config_set("maxmemory-policy", "allkeys-lru")
            admin.close()
            backend = RedisBackend(settings(tmp_path, srv.url))
            start(backend, tmp_path)
            backend.stop()
    finally:
        logger.remove(sink)
    warned = " ".join(lines)
    assert "may lose tasks" in warned and "noeviction" in warned and "appendonly" in warned


def test_the_history_connector_answers_for_tasks_that_left_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    s = settings(tmp_path, redis_server.url)
    backend = RedisBackend(s)
    table = TaskTable(make_engine(s.database))
    table.migrate()
    from supervisor.broker.embedded.tasktable import snapshot
    from supervisor.broker.records import TaskRecord

    gone = TaskRecord(
        task_id="old", type="t", params=b"", priority=5, status=base.SUCCEEDED, pushed_at=1.0
    )
    table.upsert([snapshot(gone)])  # written by the history writer, then forgotten by Redis
    plain, with_history = backend.connector()(), backend.history_connector()()
    try:
        assert plain.get_task("old") is None
        rec = with_history.get_task("old")
        assert rec is not None and rec["status"] == base.SUCCEEDED
    finally:
        plain.close()  # type: ignore[attr-defined]
        with_history.close()  # type: ignore[attr-defined]
        table.close()
