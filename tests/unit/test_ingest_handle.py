"""The master's ingest children: one per URL, respawned with backoff, replaced on HUP when the
URLs change, stopped first on shutdown and reaped before the broker stops."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from supervisor.ingest import parse_ingest_urls
from supervisor.master.arbiter import DRAINING, RUNNING, STOPPING
from supervisor.master.ingest_handle import IngestChildren
from supervisor.registry import TaskRegistry
from tests.unit.test_master_arbiter import Rig

pytestmark = pytest.mark.timeout(30)


class FakeProcess:
    def __init__(self, made: list[Any], pid: int, fail: bool = False) -> None:
        self.pid, self.fail = pid, fail
        made.append(self)

    def start(self) -> int:
        if self.fail:
            raise OSError(11, "Resource temporarily unavailable")
        return self.pid


class Children:
    def __init__(self, *urls: str) -> None:
        self.made: list[FakeProcess] = []
        self.kills: list[tuple[int, int]] = []
        self.next_pid = 500
        self.fail_next = False
        self.set = IngestChildren(
            parse_ingest_urls(urls), self.make, kill=lambda pid, sig: self.kills.append((pid, sig))
        )

    def make(self, spec: Any) -> FakeProcess:
        self.next_pid += 1
        fail, self.fail_next = self.fail_next, False
        return FakeProcess(self.made, self.next_pid, fail)


def test_one_child_per_url_and_a_dead_one_is_respawned_with_a_growing_delay() -> None:
    c = Children("amqp://h/a", "amqp://h/b")
    c.set.start(0.0)
    assert c.set.alive == [501, 502] and c.set.owns(501) and not c.set.owns(7)
    assert c.set.on_exit(501, signal.SIGKILL, 1.0) and not c.set.on_exit(7, 0, 1.0)
    assert c.set.alive == [502]
    assert c.set.next_wake(1.0) == pytest.approx(0.5)
    c.set.tick(1.2)
    assert c.set.alive == [502]  # not yet
    c.set.tick(1.5)
    assert sorted(c.set.alive) == [502, 503]
    c.set.on_exit(503, signal.SIGKILL, 2.0)  # again soon: a longer delay
    assert c.set.next_wake(2.0) == pytest.approx(1.0)
    c.set.tick(3.0)
    c.set.on_exit(504, signal.SIGKILL, 20.0)  # ran 17 s: healthy, the delay starts over
    assert c.set.next_wake(20.0) == pytest.approx(0.5)


def test_a_failed_fork_is_tried_again_later() -> None:
    c = Children("amqp://h/a")
    c.fail_next = True
    c.set.start(0.0)
    assert c.set.alive == [] and c.set.next_wake(0.0) == pytest.approx(0.5)
    c.set.tick(0.5)
    assert c.set.alive == [502]


def test_stop_terms_every_child_once_and_nothing_is_respawned() -> None:
    c = Children("amqp://h/a", "amqp://h/b")
    c.set.start(0.0)
    c.set.stop()
    c.set.stop()
    assert c.kills == [(501, signal.SIGTERM), (502, signal.SIGTERM)]
    c.set.on_exit(501, 0, 1.0)
    c.set.tick(100.0)
    assert c.set.alive == [502] and c.set.next_wake(100.0) is None
    c.set.stop(kill=True)
    assert c.kills[-1] == (502, signal.SIGKILL)


def test_hup_stops_the_removed_urls_starts_the_new_and_keeps_the_rest() -> None:
    c = Children("amqp://h/a", "amqp://h/b")
    c.set.start(0.0)
    c.set.reconfigure(parse_ingest_urls(["amqp://h/b", "amqp://h/c"]), 1.0)
    assert c.kills == [(501, signal.SIGTERM)]
    assert [ch.spec.queue for ch in c.set.children] == ["b", "c"]
    assert sorted(c.set.alive) == [501, 502, 503]  # a's child is stopping, still ours
    c.set.on_exit(501, 0, 2.0)
    c.set.tick(10.0)
    assert sorted(c.set.alive) == [502, 503]  # not respawned: it was stopped on purpose


def test_wait_stopped_reaps_real_children_and_kills_one_that_hangs() -> None:
    def child(ignore_term: bool) -> int:
        pid = os.fork()
        if pid == 0:
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(30)
            os._exit(0)
        return pid

    pids = iter([child(False), child(True)])
    procs: list[Any] = []
    handles = IngestChildren(
        parse_ingest_urls(["amqp://h/a", "amqp://h/b"]),
        lambda spec: FakeProcess(procs, next(pids)),
    )
    handles.start(0.0)
    started = time.monotonic()
    handles.wait_stopped(timeout_s=1.0)
    assert handles.alive == [] and time.monotonic() - started < 10
    for p in procs:
        with pytest.raises(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)  # reaped


def test_the_master_starts_stops_and_reaps_its_ingest_children() -> None:
    app = TaskRegistry()
    app.register("jobs", lambda params: None)
    made: list[FakeProcess] = []
    rig = Rig(workers=1)
    m = rig.master
    m.registry = app
    m.ingest = IngestChildren(
        parse_ingest_urls(["amqp://h/jobs"]),
        lambda spec: FakeProcess(made, 777),
        kill=lambda pid, sig: rig.kills.append((pid, sig)),
    )
    m.ingest.start(rig.now)
    rig.reap(777)  # it died: the master's reaper routes it to the ingest handle
    assert m.ingest.alive == [] and m.pool.workers
    rig.step(1.0)  # respawned by the loop's step after its delay
    assert m.ingest.alive == [777] and m.state == RUNNING
    rig.send(signal.SIGTERM)
    assert m.state == DRAINING and (777, signal.SIGTERM) in rig.kills  # first


def test_any_other_way_out_of_running_stops_the_ingest_too() -> None:
    made: list[FakeProcess] = []
    rig = Rig(workers=1)
    m = rig.master
    m.ingest = IngestChildren(
        parse_ingest_urls(["amqp://h/jobs"]),
        lambda spec: FakeProcess(made, 778),
        kill=lambda pid, sig: rig.kills.append((pid, sig)),
    )
    m.ingest.start(rig.now)
    rig.send(signal.SIGQUIT)
    rig.step()
    assert m.state == STOPPING and (778, signal.SIGTERM) in rig.kills
