"""The embedded broker backend: it forks the broker process, hands back a client, says where
it is without its secret, knows its child, and stops it (a real process, no master)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from supervisor.broker.backend import BrokerBackend, backend_from_settings
from supervisor.broker.embedded.backend import EmbeddedBackend
from supervisor.config import Settings
from supervisor.master.runfiles import RunFiles
from supervisor.master.scoreboard import Scoreboard

pytestmark = pytest.mark.timeout(60)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings.defaults(
        run_dir=str(tmp_path / "run"), durability="none", metrics=False, scheduler=False, **kw
    )


def test_the_settings_give_the_embedded_backend():
    backend = backend_from_settings(Settings.defaults())
    assert isinstance(backend, EmbeddedBackend) and isinstance(backend, BrokerBackend)
    assert backend.pid is None and not backend.running
    backend.stop()  # safe before start


def test_a_redis_url_gives_the_redis_backend_without_connecting():
    pytest.importorskip("redis")
    from supervisor.broker.redis.backend import RedisBackend

    settings = Settings.defaults()
    object.__setattr__(settings, "broker", "redis://:s3cret@127.0.0.1:1/0")  # a future field
    backend = backend_from_settings(settings)
    assert isinstance(backend, RedisBackend)
    assert "s3cret" not in backend.describe()


def test_start_forks_the_broker_and_stop_reaps_it(tmp_path: Path):
    s = _settings(tmp_path, authkey="not-in-the-start-line")
    files = RunFiles.prepare(s.run_dir, s.address, s.authkey)
    backend = EmbeddedBackend(s)
    try:
        client = backend.start(
            run_files=files, scoreboard=Scoreboard(4), task_types={}, default_options=None
        )
        pid = backend.pid
        assert pid is not None and backend.running and backend.owns(pid)
        assert not backend.owns(os.getpid())
        assert client.ping() == "pong"
        assert backend.connector()().ping() == "pong"  # what a worker calls after its fork
        words = backend.describe()
        assert f"broker pid {pid} at " in words and str(files.address) in words
        assert "not-in-the-start-line" not in words
        assert (Path(s.run_dir) / "address").exists()
    finally:
        backend.stop()
    assert backend.pid is None and not backend.running
    assert gone(pid)
    backend.stop()  # twice is fine


def test_a_dead_broker_process_is_explained(tmp_path: Path):
    s = _settings(tmp_path)
    files = RunFiles.prepare(s.run_dir, s.address, s.authkey)
    backend = EmbeddedBackend(s)
    try:
        backend.start(
            run_files=files, scoreboard=Scoreboard(4), task_types={}, default_options=None
        )
        pid = backend.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        what = backend.on_child_exit(pid, status)
        assert what == "the broker process died (signal 9 (SIGKILL)); its queue is gone"
        assert backend.pid is None and not backend.running
    finally:
        backend.stop()
