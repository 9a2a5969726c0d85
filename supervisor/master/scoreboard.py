"""Shared memory the workers write and the master reads, with no IPC call and no lock.

One fixed-size record per worker slot in an anonymous ``MAP_SHARED`` mapping made before the
workers are forked (Apache's scoreboard). A worker stamps its heartbeat, and the task it runs with
its deadline; the master reads them every tick to enforce hard timeouts and find hung workers, even
when a worker is stuck in C code or its broker call. Times are ``time.monotonic()`` (one clock
for every process on the machine).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

EMPTY, BOOTING, IDLE, BUSY, EXITING = 0, 1, 2, 3, 4
STATE_NAMES = {EMPTY: "empty", BOOTING: "booting", IDLE: "idle", BUSY: "busy", EXITING: "exiting"}

NO_REASON, EXIT_SHUTDOWN, EXIT_RECYCLE_TASKS, EXIT_RECYCLE_MEMORY, EXIT_PARENT_GONE = 0, 1, 2, 3, 4
EXIT_REASONS = {
    NO_REASON: "",
    EXIT_SHUTDOWN: "shutdown",
    EXIT_RECYCLE_TASKS: "recycle-tasks",
    EXIT_RECYCLE_MEMORY: "recycle-memory",
    EXIT_PARENT_GONE: "parent-gone",
}

# pid, state, exit_reason, heartbeat, task_started, deadline, tasks_done, recycle_request,
# task_id, task_type, cancel_request
_FMT = struct.Struct("@qiidddqi100s100si")  # 256 bytes: records stay 8-aligned
_NAMES = (
    "pid",
    "state",
    "exit_reason",
    "heartbeat",
    "task_started",
    "deadline",
    "tasks_done",
    "recycle_request",
    "task_id",
    "task_type",
    "cancel_request",
)
_CODES = ("q", "i", "i", "d", "d", "d", "q", "i", "100s", "100s", "i")
# name -> (offset in the record, a compiled struct for that one field)
_FIELDS = {
    name: (
        struct.calcsize("@" + "".join(_CODES[:i]) + code) - struct.calcsize("@" + code),
        struct.Struct("@" + code),
    )
    for i, (name, code) in enumerate(zip(_NAMES, _CODES, strict=True))
}
assert _FMT.size == 256


def clip_id(task_id: str) -> str:
    """``task_id`` as the scoreboard stores it (its first 100 bytes)."""
    return task_id.encode()[:100].decode(errors="replace")


@dataclass(frozen=True)
class SlotView:
    slot: int
    pid: int
    state: int
    exit_reason: int
    heartbeat: float
    task_started: float
    deadline: float
    tasks_done: int
    recycle_request: int
    task_id: str
    task_type: str
    cancel_request: int = 0

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "?")


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._size = _FMT.size
        # One record more than the worker slots: the master's own (its pid and loop heartbeat).
        self.master_slot = slots
        self._mm = mmap.mmap(-1, self._size * (slots + 1), flags=mmap.MAP_SHARED)

    def _offset(self, slot: int) -> int:
        # a negative slot would index from the end of the mapping: another worker's record
        if not 0 <= slot <= self.master_slot:
            raise IndexError(f"scoreboard slot {slot} out of range 0..{self.master_slot}")
        return slot * self._size

    def _write(self, slot: int, values: tuple[object, ...]) -> None:
        _FMT.pack_into(self._mm, self._offset(slot), *values)

    def read(self, slot: int) -> SlotView:
        v = _FMT.unpack_from(self._mm, self._offset(slot))
        return SlotView(
            slot,
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            v[8].rstrip(b"\0").decode(errors="replace"),
            v[9].rstrip(b"\0").decode(errors="replace"),
            v[10],
        )

    def field(self, slot: int, name: str) -> object:
        """One field, without decoding the whole record (the worker's per-task checks)."""
        offset, fmt = _FIELDS[name]
        return fmt.unpack_from(self._mm, self._offset(slot) + offset)[0]

    def reset(self, slot: int, pid: int, now: float) -> None:
        self._write(slot, (pid, BOOTING, NO_REASON, now, 0.0, 0.0, 0, 0, b"", b"", 0))

    def clear(self, slot: int) -> None:
        self._write(slot, (0, EMPTY, NO_REASON, 0.0, 0.0, 0.0, 0, 0, b"", b"", 0))

    def _update(self, slot: int, **changes: object) -> None:
        # Field by field, never the whole record: the master writes recycle_request while the
        # worker writes the rest, and neither may undo the other's write.
        base = self._offset(slot)
        for name, value in changes.items():
            offset, fmt = _FIELDS[name]
            fmt.pack_into(self._mm, base + offset, value)

    def heartbeat(self, slot: int, now: float, state: int = IDLE) -> None:
        self._update(slot, heartbeat=now, state=state)

    def begin_task(
        self, slot: int, task_id: str, task_type: str, now: float, deadline: float
    ) -> None:
        self._update(
            slot,
            state=BUSY,
            heartbeat=now,
            task_started=now,
            deadline=deadline,
            task_id=task_id.encode()[:100],
            task_type=task_type.encode()[:100],
            cancel_request=0,
        )

    def end_task(self, slot: int, now: float, tasks_done: int) -> None:
        self._update(
            slot,
            state=IDLE,
            heartbeat=now,
            task_started=0.0,
            deadline=0.0,
            tasks_done=tasks_done,
            task_id=b"",
            task_type=b"",
        )

    def exiting(self, slot: int, reason: int) -> None:
        self._update(slot, state=EXITING, exit_reason=reason)

    def request_recycle(self, slot: int) -> None:
        self._update(slot, recycle_request=1)

    def request_cancel(self, slot: int) -> None:
        """Ask the task running in ``slot`` to stop (it reads this with cancel_requested())."""
        self._update(slot, cancel_request=1)
