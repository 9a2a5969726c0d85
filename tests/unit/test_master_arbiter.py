"""The master's steps one at a time: signals through the handler table, the shutdown state
machine, a crash storm, a lost broker. A fake backend, fork, kill and clock; no process."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from supervisor.broker.backend import BrokerBackend, Connector
from supervisor.config import Settings
from supervisor.errors import ExitCode
from supervisor.master import scoreboard as sb
from supervisor.master.arbiter import DRAINING, RUNNING, STOPPED, STOPPING, Master
from supervisor.master.scoreboard import Scoreboard
from supervisor.registry import TaskRegistry

pytestmark = pytest.mark.timeout(30)


class FakeBroker:
    def __init__(self) -> None:
        self.dispatching = True
        self.released: list[tuple[str, str]] = []
        self.published: list[dict[str, Any]] = []

    def release_consumer(self, consumer: str, reason: str, **kw: Any) -> str | None:
        self.released.append((consumer, reason))
        return None

    def set_dispatching(self, on: bool) -> None:
        self.dispatching = on

    def pending_cancels(self) -> list[Any]:
        return []

    def maintain(self) -> dict[str, int]:
        return {}

    def publish_status(self, status: dict[str, Any]) -> None:
        self.published.append(status)


class FakeBackend(BrokerBackend):
    name = "fake"

    def __init__(self) -> None:
        self._pid: int | None = 99
        self.ticks: list[list[str]] = []

    def start(self, **kw: Any) -> Any:
        raise AssertionError("the tests assemble the master themselves")

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None

    def on_child_exit(self, pid: int, status: int) -> str:
        self._pid = None
        return "the fake broker died"

    def connector(self) -> Connector:
        return lambda: None  # type: ignore[return-value,arg-type]

    def tick(self, now: float, consumers: Iterable[str]) -> None:
        self.ticks.append(list(consumers))

    def stop(self) -> None:
        self._pid = None

    def describe(self) -> str:
        return "fake broker"


class FakeSignals:
    def __init__(self) -> None:
        self.pending: list[int] = []

    def drain(self) -> list[int]:
        out, self.pending = self.pending, []
        return out

    def fds(self) -> tuple[int, ...]:
        return ()

    def wait(self, timeout_s: float) -> None:
        return None

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        yield


class Rig:
    def __init__(self, workers: int = 2, **settings: Any) -> None:
        self.now = 100.0
        self.next_pid = 1000
        self.kills: list[tuple[int, int]] = []
        self.broker = FakeBroker()
        self.backend = FakeBackend()
        self.signals = FakeSignals()
        self.board = Scoreboard(16)
        self.master = Master(
            settings=Settings.defaults(workers=workers, scheduler=False, **settings),
            registry=TaskRegistry(),
            backend=self.backend,
            clock=lambda: self.now,
            fork=self.fork,
            kill=lambda pid, sig: self.kills.append((pid, sig)),
        )
        self.master.assemble(
            broker=self.broker,  # type: ignore[arg-type]
            scoreboard=self.board,
            signals=self.signals,  # type: ignore[arg-type]
        )
        self.master.manage_workers(self.now)
        for w in self.master.pool.workers.values():
            self.board.heartbeat(w.slot, self.now, sb.IDLE)

    def fork(self, child: Any) -> int:
        self.next_pid += 1
        return self.next_pid - 1

    def send(self, *signums: int) -> None:
        self.signals.pending.extend(signums)
        self.master.handle_signals(self.now)

    def pids(self) -> list[int]:
        return sorted(self.master.pool.workers)

    def reap(self, pid: int, status: int = signal.SIGKILL) -> None:
        self.master.on_child_exit(pid, status, self.now)

    def step(self, dt: float = 0.5) -> None:
        self.now += dt
        m = self.master
        m.step(self.now)


def test_every_handled_signal_has_a_handler_in_the_table():
    m = Rig().master
    assert set(m.signal_handlers) == {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
    }


def test_term_drains_then_the_graceful_timeout_kills():
    rig = Rig(workers=2, graceful_timeout=10)
    m = rig.master
    rig.send(signal.SIGTERM)
    assert m.state == DRAINING and rig.broker.dispatching is False
    assert all((pid, signal.SIGTERM) in rig.kills for pid in rig.pids())  # asked to finish
    rig.step(5.0)
    assert m.state == DRAINING and not any(sig == signal.SIGKILL for _, sig in rig.kills)
    rig.step(5.0)  # the deadline
    assert m.state == STOPPING
    assert all((-pid, signal.SIGKILL) in rig.kills for pid in rig.pids())
    for pid in rig.pids():
        rig.reap(pid)
    rig.step()
    assert m.state == STOPPED and m.exit_code == ExitCode.OK
    assert {reason for _, reason in rig.broker.released} == {"shutdown"}


def test_a_second_term_during_the_drain_is_a_fast_shutdown():
    rig = Rig(workers=2, graceful_timeout=60)
    rig.send(signal.SIGTERM)
    assert rig.master.state == DRAINING
    assert not any(sig == signal.SIGKILL for _, sig in rig.kills)
    rig.send(signal.SIGTERM)
    assert rig.master.state == STOPPING
    assert all((-pid, signal.SIGKILL) in rig.kills for pid in rig.pids())


def test_quit_is_a_fast_shutdown():
    rig = Rig(workers=1)
    rig.send(signal.SIGQUIT)
    assert rig.master.state == STOPPING
    assert (-rig.pids()[0], signal.SIGKILL) in rig.kills


def test_ttin_and_ttou_during_the_drain_are_ignored():
    rig = Rig(workers=2, graceful_timeout=60)
    rig.send(signal.SIGTERM)
    rig.send(signal.SIGTTIN, signal.SIGTTIN, signal.SIGTTOU)
    assert rig.master.pool.desired == 2
    rig.step()
    assert len(rig.master.pool.workers) == 2  # nothing forked while draining


def test_ttin_and_ttou_while_running_change_the_wanted_count_never_below_one():
    rig = Rig(workers=1)
    rig.send(signal.SIGTTIN)
    rig.step()
    assert sorted(w.slot for w in rig.master.pool.workers.values()) == [0, 1]
    rig.send(signal.SIGTTOU, signal.SIGTTOU, signal.SIGTTOU)
    assert rig.master.pool.desired == 1


def test_hup_without_a_reload_function_changes_nothing():
    rig = Rig(workers=2)
    before = rig.pids()
    rig.send(signal.SIGHUP)
    rig.step()
    assert rig.pids() == before and not rig.master.pool.replace_pids


def test_a_crash_storm_trips_the_breaker_and_the_master_exits_crash_loop():
    rig = Rig(workers=2, crash_limit=3, crash_window=60)
    m = rig.master
    for _ in range(4):
        rig.reap(rig.pids()[0], 1 << 8)  # exit 1
        rig.step(11.0)  # past any respawn backoff: a new worker each time
    assert m.exit_code == ExitCode.CRASH_LOOP
    assert m.state == STOPPING
    for pid in rig.pids():
        rig.reap(pid)
    rig.step()
    assert m.state == STOPPED


def test_crashes_during_a_shutdown_do_not_trip_the_breaker():
    rig = Rig(workers=3, crash_limit=1, crash_window=60, graceful_timeout=60)
    rig.send(signal.SIGTERM)
    for pid in rig.pids():
        rig.reap(pid, 1 << 8)
    rig.step()
    assert rig.master.exit_code == ExitCode.OK and rig.master.state == STOPPED


def test_a_lost_broker_stops_the_master_with_broker_lost():
    rig = Rig(workers=2)
    rig.reap(99, signal.SIGKILL)  # the backend's process
    assert rig.master.exit_code == ExitCode.BROKER_LOST
    assert rig.master.state == STOPPING
    assert all((-pid, signal.SIGKILL) in rig.kills for pid in rig.pids())
    assert not rig.backend.running


def test_the_broker_tick_publishes_the_status_and_ticks_the_backend():
    rig = Rig(workers=2)
    rig.step()
    status = rig.broker.published[-1]
    assert status["state"] == RUNNING and [w["slot"] for w in status["workers"]] == [0, 1]
    assert rig.backend.ticks[-1] == [
        f"worker:{w.slot}:{w.pid}" for w in rig.master.pool.workers.values()
    ]
    victim = rig.master.pool.workers[rig.pids()[0]]
    rig.master.pool.kill_worker(victim, "timeout")
    rig.step(0.1)  # published at once, not a second later: it is not ready any more
    states = {w["pid"]: w["state"] for w in rig.broker.published[-1]["workers"]}
    assert states[victim.pid] == "killed"
