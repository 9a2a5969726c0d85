"""Task app for the end-to-end tests: handlers that misbehave in every way a real one can."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from supervisor import SoftTimeLimitExceeded, TaskRegistry, current_task, get_queue

app = TaskRegistry()


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.task("noop", timeout_s=30)
def noop(params: dict[str, Any]) -> None:
    return None


@app.task("record", timeout_s=30)
def record(params: dict[str, Any]) -> int:
    """Append this task's id to params['path'] (counts executions)."""
    task = current_task()
    assert task is not None
    if params.get("work_s"):
        time.sleep(params["work_s"])  # stands for real work, so that a test can kill mid-run
    _append(params["path"], task.task_id)
    return os.getpid()


@app.task("hold", timeout_s=120, max_retries=3, backoff_base_s=0.05, backoff_cap_s=0.1)
def hold(params: dict[str, Any]) -> int:
    """Publish our pid under params['key'], then wait until the key 'release' is set.

    On an attempt > 1 it returns at once (the test killed the first attempt's worker)."""
    task = current_task()
    assert task is not None
    q = get_queue()
    q.set_public(params["key"], {"pid": os.getpid(), "attempt": task.attempt})
    if task.attempt > 1 or params.get("once_only") is False:
        return task.attempt
    deadline = time.monotonic() + float(params.get("seconds", 60))
    while time.monotonic() < deadline and not q.get_public("release"):
        time.sleep(0.02)
    return task.attempt


@app.task("sleep", timeout_s=1, max_retries=0)
def sleep(params: dict[str, Any]) -> None:
    """Sleeps far past its hard timeout (1 s) in time.sleep, ignoring nothing."""
    get_queue().set_public(params["key"], os.getpid())
    time.sleep(3600)


@app.task("busy_c", timeout_s=1, max_retries=0)
def busy_c(params: dict[str, Any]) -> None:
    """Catastrophic regex backtracking: a C loop that never returns to the interpreter."""
    get_queue().set_public(params["key"], os.getpid())
    re.match(r"(a+)+$", "a" * 64 + "b")


@app.task("soft", timeout_s=10, soft_timeout_s=0.3, max_retries=0)
def soft(params: dict[str, Any]) -> None:
    """Catches its soft timeout, records that it cleaned up, and re-raises."""
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        get_queue().set_public(params["key"], "cleaned up")
        raise


@app.task("long", timeout_s=300, max_retries=3)
def long(params: dict[str, Any]) -> str:
    """Sleeps params['seconds'] after announcing itself under params['key']."""
    task = current_task()
    assert task is not None
    get_queue().set_public(params["key"], {"pid": os.getpid(), "attempt": task.attempt})
    time.sleep(float(params["seconds"]))
    if params.get("path"):
        _append(params["path"], task.task_id)
    return "done"


@app.task("exit", timeout_s=30, max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.02)
def exit_(params: dict[str, Any]) -> None:
    """Kills its own worker every time (os._exit, SIGKILL or SIGSEGV)."""
    how = params.get("how", "exit")
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(17)


@app.task("fail", timeout_s=30, max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.02)
def fail(params: dict[str, Any]) -> None:
    raise ValueError(f"always fails: {params.get('why', 'no reason')}")


@app.task("hog", timeout_s=30, max_retries=0)
def hog(params: dict[str, Any]) -> int:
    """Keeps params['mib'] MiB alive in this worker (for memory recycling)."""
    _HOARD.append(bytearray(int(params["mib"]) * 1024 * 1024))
    return os.getpid()


_HOARD: list[bytearray] = []


@app.task("orphan", timeout_s=30)
def orphan(params: dict[str, Any]) -> int:
    """Leave behind a grandchild whose parent is gone: it is reparented to PID 1 (or a
    subreaper) and must be reaped there. Returns the grandchild's pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.close(r)
            os.close(w)
            time.sleep(float(params.get("linger", 0.2)))
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 64).decode())
    os.close(r)
    os.waitpid(child, 0)
    return pid


@app.worker_init
def _maybe_fail_boot(slot: int) -> None:
    if os.environ.get("E2E_FAIL_BOOT"):
        raise RuntimeError("E2E_FAIL_BOOT is set: this worker refuses to boot")


@app.task("family", timeout_s=1, max_retries=0)
def family(params: dict[str, Any]) -> None:
    """Spawns a child process, then both hang: the hard timeout must take the whole group."""
    import subprocess

    child = subprocess.Popen(["sleep", "3600"])
    get_queue().set_public(params["key"], {"worker": os.getpid(), "child": child.pid})
    time.sleep(3600)


@app.task("picky", timeout_s=10, max_retries=5)
def picky(params: dict[str, Any]) -> None:
    from supervisor import Reject

    raise Reject(f"params must have 'size', got {sorted(params)}")


@app.task("again", timeout_s=10, max_retries=3)
def again(params: dict[str, Any]) -> int:
    """Asks for a retry after 0.3 s on its first attempt, then succeeds."""
    from supervisor import Retry

    task = current_task()
    assert task is not None
    if task.attempt == 1:
        raise Retry("not yet", delay=0.3)
    return task.attempt


@app.task("big_result", timeout_s=10, max_retries=3)
def big_result(params: dict[str, Any]) -> str:
    return "x" * int(params["size"])


@app.task("coop", timeout_s=120, max_retries=3)
def coop(params: dict[str, Any]) -> str:
    """Runs until cancelled, checking the flag like a well-behaved long task."""
    from supervisor import Cancelled, cancel_requested

    get_queue().set_public(params["key"], os.getpid())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cancel_requested():
            get_queue().set_public(params["key"] + ":cleanup", True)
            raise Cancelled("stopping as asked")
        time.sleep(0.01)
    return "never cancelled"


@app.task("stubborn", timeout_s=120, max_retries=3)
def stubborn(params: dict[str, Any]) -> None:
    """Ignores cancellation: its worker has to be killed."""
    get_queue().set_public(params["key"], os.getpid())
    time.sleep(3600)


@app.task("stamp_due", timeout_s=30, max_retries=3)
def stamp_due(params: dict[str, Any]) -> float | None:
    """Append 'scheduled_at task_id attempt' to params['path'] (fires of a schedule)."""
    task = current_task()
    assert task is not None
    _append(params["path"], f"{task.scheduled_at!r} {task.task_id} {task.attempt}")
    return task.scheduled_at
