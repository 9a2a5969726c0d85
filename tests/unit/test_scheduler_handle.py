"""The master's handle of the scheduler process: respawned with a growing delay after a crash,
given up on a configuration it cannot work with, replaced at once on HUP, never respawned once
stopping. Fake forks and a fake kill: no process."""

from __future__ import annotations

import signal

import pytest

from supervisor.errors import ExitCode
from supervisor.master.scheduler_handle import SchedulerChild

pytestmark = pytest.mark.timeout(30)


def exited(code: int) -> int:
    return code << 8  # a wait status as os.waitpid reports an exit with ``code``


class Rig:
    def __init__(self) -> None:
        self.pids = iter(range(700, 800))
        self.kills: list[tuple[int, int]] = []
        self.child = SchedulerChild(self.make, kill=lambda pid, sig: self.kills.append((pid, sig)))

    def make(self) -> Rig:
        return self

    def start(self) -> int:
        return next(self.pids)


def test_a_crashed_scheduler_is_forked_again_after_a_growing_delay() -> None:
    rig = Rig()
    assert rig.child.start(0.0) == 700
    rig.child.on_exit(signal.SIGKILL, 1.0)
    assert rig.child.pid == 0 and rig.child.restarts == 1
    assert rig.child.next_wake(1.0) == pytest.approx(0.5)
    rig.child.tick(1.4)
    assert rig.child.pid == 0  # not yet
    rig.child.tick(1.5)
    assert rig.child.pid == 701 and rig.child.next_wake(1.5) is None
    rig.child.on_exit(exited(1), 2.0)  # again soon: twice the delay
    assert rig.child.next_wake(2.0) == pytest.approx(1.0)
    rig.child.tick(3.0)
    rig.child.on_exit(signal.SIGKILL, 20.0)  # it ran 17 s: the delay starts over
    assert rig.child.next_wake(20.0) == pytest.approx(0.5)


def test_a_configuration_it_cannot_work_with_is_not_respawned() -> None:
    rig = Rig()
    rig.child.start(0.0)
    rig.child.on_exit(exited(ExitCode.USAGE), 0.1)
    assert rig.child.given_up and rig.child.next_wake(0.1) is None
    rig.child.tick(100.0)
    assert rig.child.pid == 0


def test_hup_replaces_it_at_once_and_quietly() -> None:
    rig = Rig()
    rig.child.start(0.0)
    rig.child.restart()
    assert rig.kills == [(700, signal.SIGTERM)]
    rig.child.on_exit(exited(0), 0.2)
    assert rig.child.restarts == 0 and rig.child.next_wake(0.2) == 0.0
    rig.child.tick(0.2)
    assert rig.child.pid == 701


def test_once_stopping_it_is_signalled_and_never_forked_again() -> None:
    rig = Rig()
    rig.child.start(0.0)
    rig.child.on_exit(signal.SIGKILL, 1.0)  # a respawn is pending
    rig.child.stop()  # no child to signal; the pending respawn is dropped
    assert rig.child.next_wake(1.0) is None
    rig.child.tick(100.0)
    assert rig.child.pid == 0 and rig.kills == []
    again = Rig()
    again.child.start(0.0)
    again.child.stop()
    again.child.stop(kill=True)
    assert again.kills == [(700, signal.SIGTERM), (700, signal.SIGKILL)]
    again.child.on_exit(signal.SIGTERM, 2.0)
    again.child.tick(100.0)
    assert again.child.pid == 0 and again.child.next_wake(100.0) is None
