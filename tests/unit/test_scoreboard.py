"""The shared-memory scoreboard: per-slot records, field-wise writes, survival across fork."""

from __future__ import annotations

import os

import pytest

from supervisor.master import scoreboard as sb
from supervisor.master.scoreboard import Scoreboard

pytestmark = pytest.mark.timeout(30)


def test_record_layout_is_256_bytes() -> None:
    assert sb._FMT.size == 256
    offsets = [sb._FIELDS[n][0] for n in sb._NAMES]
    assert offsets == sorted(offsets) and offsets[0] == 0
    ends = [sb._FIELDS[n][0] + sb._FIELDS[n][1].size for n in sb._NAMES]
    assert all(end <= nxt for end, nxt in zip(ends, offsets[1:], strict=False))
    assert ends[-1] <= 256


def test_new_slots_are_empty() -> None:
    board = Scoreboard(3)
    for slot in range(3):
        v = board.read(slot)
        assert (v.pid, v.state, v.task_id, v.task_type, v.tasks_done) == (0, sb.EMPTY, "", "", 0)
        assert v.state_name == "empty"


def test_worker_lifecycle_round_trips_every_field() -> None:
    board = Scoreboard(2)
    board.reset(1, pid=4242, now=100.0)
    v = board.read(1)
    assert (v.slot, v.pid, v.state, v.heartbeat) == (1, 4242, sb.BOOTING, 100.0)
    board.heartbeat(1, 101.0)
    assert board.read(1).state_name == "idle"
    board.begin_task(1, "task-123", "resize", now=102.0, deadline=132.0)
    v = board.read(1)
    assert (v.state, v.task_id, v.task_type, v.task_started, v.deadline, v.heartbeat) == (
        sb.BUSY,
        "task-123",
        "resize",
        102.0,
        132.0,
        102.0,
    )
    board.heartbeat(1, 103.0, state=sb.BUSY)
    assert board.read(1).task_id == "task-123"  # a heartbeat does not clear the task
    board.end_task(1, now=104.0, tasks_done=1)
    v = board.read(1)
    assert (v.state, v.task_id, v.task_type, v.deadline, v.tasks_done) == (sb.IDLE, "", "", 0.0, 1)
    board.exiting(1, sb.EXIT_RECYCLE_TASKS)
    v = board.read(1)
    assert v.state_name == "exiting"
    assert sb.EXIT_REASONS[v.exit_reason] == "recycle-tasks"
    assert v.pid == 4242  # untouched by the field writes
    assert board.read(0).pid == 0  # the neighbour slot too
    board.clear(1)
    assert board.read(1).state == sb.EMPTY and board.read(1).pid == 0


def test_writes_of_one_side_do_not_undo_the_others() -> None:
    board = Scoreboard(1)
    board.reset(0, pid=7, now=1.0)
    board.begin_task(0, "t1", "x", now=2.0, deadline=9.0)
    board.request_recycle(0)  # the master
    board.end_task(0, now=3.0, tasks_done=1)  # the worker, after
    board.heartbeat(0, 4.0)
    v = board.read(0)
    assert v.recycle_request == 1
    assert v.tasks_done == 1 and v.heartbeat == 4.0


def test_long_and_unicode_ids_are_truncated_not_corrupting_neighbours() -> None:
    board = Scoreboard(2)
    board.reset(0, pid=1, now=0.0)
    board.reset(1, pid=2, now=0.0)
    board.begin_task(0, "é" * 80, "t" * 300, now=1.0, deadline=2.0)
    v = board.read(0)
    assert v.task_id == "é" * 50  # 160 bytes cut to 100
    assert v.task_type == "t" * 100
    assert board.read(1).pid == 2 and board.read(1).task_id == ""


@pytest.mark.parametrize("slot", [-1, 3, 100])
def test_slots_out_of_range_raise(slot: int) -> None:
    board = Scoreboard(2)  # worker slots 0 and 1, then the master's record
    assert board.master_slot == 2
    board.reset(1, pid=9, now=0.0)
    board.heartbeat(board.master_slot, 5.0)
    with pytest.raises(IndexError, match=f"slot {slot} out of range 0..2"):
        board.read(slot)
    with pytest.raises(IndexError):
        board.request_recycle(slot)
    with pytest.raises(IndexError):
        board.reset(slot, pid=1, now=0.0)
    assert board.read(1).recycle_request == 0 and board.read(1).pid == 9
    assert board.read(board.master_slot).heartbeat == 5.0


def test_a_forked_child_writes_what_the_parent_reads() -> None:
    board = Scoreboard(2)
    board.reset(1, pid=0, now=0.0)
    pid = os.fork()
    if pid == 0:  # child: write and leave at once, without running pytest's teardown
        try:
            board.begin_task(1, "from-child", "t", now=5.0, deadline=6.0)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    v = board.read(1)
    assert (v.task_id, v.state, v.deadline) == ("from-child", sb.BUSY, 6.0)


def test_a_cancel_request_is_cleared_by_the_next_task() -> None:
    board = Scoreboard(2)
    board.reset(0, 10, 1.0)
    board.begin_task(0, "a", "t", 1.0, 5.0)
    board.request_cancel(0)
    assert board.field(0, "cancel_request") == 1 and board.read(0).task_id == "a"
    board.end_task(0, 2.0, 1)
    board.begin_task(0, "b", "t", 2.0, 5.0)
    assert board.field(0, "cancel_request") == 0
