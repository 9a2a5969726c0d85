"""The worker pool and the watchdog, step by step, with a fake fork, kill, clock and broker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from supervisor.config import Settings
from supervisor.errors import ExitCode
from supervisor.master import scoreboard as sb
from supervisor.master.exits import classify_exit
from supervisor.master.pool import WorkerPool
from supervisor.master.scoreboard import Scoreboard
from supervisor.master.watchdog import Watchdog

pytestmark = pytest.mark.timeout(30)

KILLED_BY_9 = signal.SIGKILL  # a wait status: killed by signal 9


def exited(code: int) -> int:
    """The wait status of a process that exited with ``code``."""
    return code << 8


class FakeBroker:
    def __init__(self) -> None:
        self.released: list[tuple[str, str, str]] = []
        self.cancels: list[tuple[str, str, float]] = []

    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        self.released.append((consumer, reason, error))
        return f"task-of-{consumer}"

    def pending_cancels(self) -> list[tuple[str, str, float]]:
        return self.cancels


class Forks:
    """A fake fork: hands out pids 1000, 1001, ... and never runs the child."""

    def __init__(self) -> None:
        self.next_pid = 1000
        self.fail = False

    def __call__(self, child: Any) -> int:
        if self.fail:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.next_pid += 1
        return self.next_pid - 1


class Kills:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def __call__(self, pid: int, signum: int) -> None:
        self.sent.append((pid, signum))


class Rig:
    def __init__(self, workers: int = 2, **settings: Any) -> None:
        self.broker = FakeBroker()
        self.forks = Forks()
        self.kills = Kills()
        self.halts: list[tuple[ExitCode, str]] = []
        self.board = Scoreboard(16)
        self.pool = WorkerPool(
            settings=Settings.defaults(workers=workers, **settings),
            broker=self.broker,  # type: ignore[arg-type]
            scoreboard=self.board,
            make_worker=lambda slot: object(),
            fork=self.forks,
            kill=self.kills,
            halt=lambda code, why: self.halts.append((code, why)),
        )
        self.watchdog = Watchdog(pool=self.pool, wall_clock=lambda: 5000.0, rss_of=lambda pid: 0)

    def ready(self, now: float) -> None:
        """Every booting worker says it is idle."""
        for w in self.pool.workers.values():
            if self.board.read(w.slot).state == sb.BOOTING:
                self.board.heartbeat(w.slot, now, sb.IDLE)

    def slots(self) -> dict[int, int]:
        return {w.slot: w.pid for w in self.pool.workers.values()}

    def pid_in(self, slot: int) -> int:
        return self.slots()[slot]


@pytest.fixture
def lines() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of every log line while the test runs."""
    out: list[tuple[str, str]] = []
    logger.enable("supervisor")  # the library is quiet until enabled; another test may disable it
    hid = logger.add(lambda m: out.append((m.record["level"].name, m.record["message"])))
    yield out
    logger.remove(hid)


def test_workers_fill_slots_0_to_n_minus_1():
    rig = Rig(workers=3)
    rig.pool.manage(now=10.0)
    assert sorted(rig.slots()) == [0, 1, 2]
    assert [rig.board.read(s).pid for s in range(3)] == [rig.pid_in(s) for s in range(3)]


def test_a_crashed_worker_is_replaced_in_its_own_slot_and_the_log_says_so(lines):
    rig = Rig(workers=2)
    rig.pool.manage(now=10.0)
    rig.ready(10.0)
    old = rig.pid_in(1)
    rig.board.begin_task(1, "t-1", "resize", 11.0, 41.0)
    assert rig.pool.on_exit(old, exited(17), now=12.0)
    assert (
        "WARNING",
        f"worker 1 (pid {old}) died (exit 17) while running task t-1 (resize)",
    ) in lines
    assert rig.broker.released == [(f"worker:1:{old}", "worker_lost", "worker lost (exit 17)")]
    rig.pool.manage(now=12.0)  # backing off: not yet
    assert 1 not in rig.slots()
    rig.pool.manage(now=12.0 + rig.pool.slots[1].spawn_after)
    new = rig.pid_in(1)
    assert sorted(rig.slots()) == [0, 1] and new != old
    assert ("INFO", f"worker 1 replaced: new pid {new} (was {old}, died (exit 17))") in lines
    assert rig.pool.stats.restarts["crash"] == 1


def test_a_killed_worker_holds_its_slot_until_it_is_reaped():
    rig = Rig(workers=2)
    rig.pool.manage(now=10.0)
    victim = rig.pool.workers[rig.pid_in(0)]
    rig.pool.kill_worker(victim, "timeout")
    rig.pool.manage(now=10.1)
    assert len(rig.pool.workers) == 2  # no third worker in slot 2 while slot 0 is not free
    rig.pool.on_exit(victim.pid, KILLED_BY_9, now=10.2)
    rig.pool.manage(now=10.2)
    assert sorted(rig.slots()) == [0, 1] and rig.pid_in(0) != victim.pid


def test_slots_stay_within_0_to_n_minus_1_through_a_crash_storm():
    rig = Rig(workers=2, crash_limit=0)
    now = 10.0
    rig.pool.manage(now)
    for _ in range(20):
        for pid in list(rig.pool.workers):
            rig.pool.on_exit(pid, KILLED_BY_9, now)
        now += 11.0  # past any backoff
        rig.pool.manage(now)
        assert sorted(rig.slots()) == [0, 1]


def test_the_crash_loop_breaker_asks_to_halt_with_crash_loop():
    rig = Rig(workers=2, crash_limit=3, crash_window=60)
    rig.pool.manage(now=10.0)
    now = 10.0
    for _ in range(4):
        pid = next(iter(rig.pool.workers))
        rig.pool.on_exit(pid, exited(1), now)
        now += 1.0
        rig.pool.manage(now + 20)
    assert [code for code, _ in rig.halts] == [ExitCode.CRASH_LOOP]
    assert "crash-loop breaker tripped" in rig.halts[0][1]


def test_a_worker_that_fails_to_boot_halts_without_a_respawn():
    rig = Rig(workers=1)
    rig.pool.manage(now=10.0)
    rig.pool.on_exit(rig.pid_in(0), exited(ExitCode.WORKER_BOOT), now=10.5)
    assert [code for code, _ in rig.halts] == [ExitCode.WORKER_BOOT]
    assert rig.broker.released == []


def test_a_fork_failure_backs_off_and_is_retried_later(lines):
    rig = Rig(workers=1)
    rig.forks.fail = True
    rig.pool.manage(now=10.0)
    assert rig.pool.workers == {}
    due = rig.pool.slots[0].spawn_after
    assert due > 10.0
    assert any(level == "ERROR" and "cannot fork worker 0" in msg for level, msg in lines)
    rig.forks.fail = False
    rig.pool.manage(now=due - 0.01)
    assert rig.pool.workers == {}
    rig.pool.manage(now=due)
    assert list(rig.slots()) == [0]


def test_ttin_adds_slot_n_and_ttou_retires_the_highest():
    rig = Rig(workers=2)
    rig.pool.manage(now=10.0)
    rig.pool.desired = 3
    rig.pool.manage(now=10.0)
    assert sorted(rig.slots()) == [0, 1, 2]
    top = rig.pid_in(2)
    rig.pool.desired = 2
    rig.pool.manage(now=10.0)
    assert rig.pool.workers[top].retiring
    assert (top, signal.SIGTERM) in rig.kills.sent
    assert not any(w.retiring for w in rig.pool.workers.values() if w.slot < 2)
    rig.pool.on_exit(top, exited(0), now=11.0)
    rig.pool.manage(now=11.0)
    assert sorted(rig.slots()) == [0, 1]


def test_a_rolling_replace_uses_one_surge_slot_and_ends_in_slots_0_to_n_minus_1(lines):
    rig = Rig(workers=2)
    pool = rig.pool
    now = 10.0
    pool.manage(now)
    rig.ready(now)
    old = set(pool.workers)
    assert pool.begin_replace() == 2
    seen_slots: set[int] = set()
    for _ in range(40):
        now += 0.5
        pool.manage(now)
        rig.ready(now)
        seen_slots |= set(rig.slots())
        assert len([w for w in pool.workers.values() if not w.retiring]) >= 2  # capacity holds
        for w in list(pool.workers.values()):
            if w.retiring:  # it finishes and exits
                pool.on_exit(w.pid, exited(0), now)
        if not (set(pool.workers) & old) and pool.surge_pid is None and len(pool.workers) == 2:
            break
    assert sorted(rig.slots()) == [0, 1]
    assert not set(pool.workers) & old
    assert seen_slots == {0, 1, 2}  # the surge slot, and no other
    assert any(msg.startswith("worker 2 started: pid ") and "surge slot" in msg for _, msg in lines)
    replaced = [msg for _, msg in lines if msg.startswith("worker 0 replaced: new pid ")]
    assert replaced and "replaced to load the reloaded configuration" in replaced[0]


def test_a_shutdown_release_says_the_task_was_requeued(lines):
    rig = Rig(workers=1)
    rig.pool.manage(now=10.0)
    pid = rig.pid_in(0)
    rig.board.begin_task(0, "t-9", "long", 10.0, 100.0)
    rig.pool.kill_all("shutdown")
    rig.pool.on_exit(pid, KILLED_BY_9, now=11.0)
    assert rig.broker.released[0][1] == "shutdown"
    assert (
        "INFO",
        f"task task-of-worker:0:{pid} (long) requeued after shutdown: worker 0 (pid {pid}) "
        "was stopped before it finished",
    ) in lines
    assert not [m for _, m in lines if "released from" in m and _ != "DEBUG"]


# -- the watchdog ---------------------------------------------------------------------------
def test_a_passed_deadline_kills_the_worker_group_with_reason_timeout(lines):
    rig = Rig(workers=1)
    rig.pool.manage(now=10.0)
    pid = rig.pid_in(0)
    rig.board.begin_task(0, "t-1", "sleep", 10.0, 11.0)
    rig.watchdog.enforce_deadlines(10.99)
    assert rig.kills.sent == []
    rig.watchdog.enforce_deadlines(11.0)
    assert (-pid, signal.SIGKILL) in rig.kills.sent and (pid, signal.SIGKILL) in rig.kills.sent
    assert rig.pool.workers[pid].kill_reason == "timeout"
    assert (
        "WARNING",
        f"worker 0 (pid {pid}) killed: task t-1 (sleep) passed its hard timeout of 1 s",
    ) in lines
    rig.pool.on_exit(pid, KILLED_BY_9, now=11.1)
    assert rig.broker.released[0][1] == "timeout"
    rig.pool.manage(now=11.1)
    new = rig.pid_in(0)
    assert ("INFO", f"worker 0 replaced: new pid {new} (was {pid}, killed for a hard timeout)") in (
        lines
    )
    assert rig.pool.stats.restarts["timeout"] == 1


def test_a_silent_heartbeat_kills_the_worker_as_hung():
    rig = Rig(workers=1, heartbeat_timeout=5)
    rig.pool.manage(now=10.0)
    rig.ready(10.0)
    pid = rig.pid_in(0)
    rig.watchdog.check_liveness(15.0)
    assert rig.kills.sent == []
    rig.watchdog.check_liveness(15.01)
    assert rig.pool.workers[pid].kill_reason == "hung"
    rig.pool.on_exit(pid, KILLED_BY_9, now=15.1)
    assert rig.pool.stats.restarts["hung"] == 1


def test_a_busy_worker_is_not_hung_however_long_its_task():
    rig = Rig(workers=1, heartbeat_timeout=5)
    rig.pool.manage(now=10.0)
    rig.board.begin_task(0, "t", "long", 10.0, 1000.0)
    rig.watchdog.check_liveness(500.0)
    assert rig.kills.sent == []


def test_a_cancel_is_relayed_then_enforced_after_the_grace():
    rig = Rig(workers=1, cancel_grace=10)
    rig.pool.manage(now=10.0)
    pid = rig.pid_in(0)
    rig.board.begin_task(0, "t-5", "stubborn", 10.0, 1000.0)
    rig.broker.cancels = [(f"worker:0:{pid}", "t-5", 4995.0)]  # asked 5 s ago (wall clock)
    rig.watchdog.enforce_cancels(11.0)
    assert rig.board.read(0).cancel_request == 1 and rig.kills.sent == []
    rig.broker.cancels = [(f"worker:0:{pid}", "t-5", 4990.0)]
    rig.watchdog.enforce_cancels(12.0)
    assert rig.pool.workers[pid].kill_reason == "cancelled"


# -- exits ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kill_reason", "exit_reason", "expect"),
    [
        (KILLED_BY_9, "timeout", 0, ("killed", "timeout", "timeout", "killed for a hard timeout")),
        (KILLED_BY_9, "hung", 0, ("killed", "hung", "worker_lost", "killed as hung")),
        (KILLED_BY_9, "shutdown", 0, ("killed", "shutdown", "shutdown", "killed by the shutdown")),
        (exited(0), None, sb.EXIT_RECYCLE_TASKS, ("clean", "recycle-tasks", "worker_lost", None)),
        (exited(3), None, 0, ("boot_failed", "boot", "worker_lost", "failed to boot")),
        (
            signal.SIGSEGV,
            None,
            0,
            ("crash", "crash", "worker_lost", "died (signal 11 (SIGSEGV))"),
        ),
    ],
)
def test_an_exit_is_classified(status, kill_reason, exit_reason, expect):
    ex = classify_exit(status, kill_reason=kill_reason, exit_reason=exit_reason)
    got = (ex.kind, ex.restart_reason, ex.broker_reason, ex.why)
    assert got[:3] == expect[:3]
    if expect[3] is not None:
        assert got[3] == expect[3]
    assert os.WIFSIGNALED(status) == ("signal" in ex.how)


def test_a_worker_whose_task_lost_its_lease_is_killed(lines):
    rig = Rig(workers=2)
    rig.pool.manage(now=10.0)
    held_by: list[dict[str, str]] = []

    def lost(held: dict[str, str]) -> list[str]:
        held_by.append(held)
        return [c for c, t in held.items() if t == "t-lost"]

    watchdog = Watchdog(pool=rig.pool, lost_consumers=lost)
    rig.board.begin_task(0, "t-lost", "long", 10.0, 1000.0)
    rig.board.begin_task(1, "t-kept", "long", 10.0, 1000.0)
    watchdog.enforce_leases(11.0)
    p0, p1 = rig.pid_in(0), rig.pid_in(1)
    assert held_by == [{f"worker:0:{p0}": "t-lost", f"worker:1:{p1}": "t-kept"}]
    assert rig.pool.workers[p0].kill_reason == "lease_lost"
    assert rig.pool.workers[p1].kill_reason is None
    assert (
        "WARNING",
        f"worker 0 (pid {p0}) killed: task t-lost (long) lost its lease to another node",
    ) in lines


def test_the_first_fill_is_quiet_and_a_ttin_slot_is_said_at_info(lines):
    rig = Rig(workers=1)
    rig.pool.manage(now=10.0)
    assert [lvl for lvl, msg in lines if msg.startswith("worker 0 started: pid ")] == ["DEBUG"]
    rig.pool.desired = 2
    rig.pool.manage(now=11.0)
    assert ("INFO", f"worker 1 started: pid {rig.pid_in(1)}") in lines
