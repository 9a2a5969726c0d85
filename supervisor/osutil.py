"""Small POSIX helpers: die with the parent, read with a deadline, describe a wait status, the
set-up of a forked service child and its stop."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

_PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def read_line(fd: int, timeout_s: float) -> str:
    """Read up to a newline from ``fd`` within ``timeout_s``; '' on timeout or EOF."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def describe_status(status: int) -> str:
    """'exit 3' or 'signal 9 (SIGKILL)' for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return f"status {status}"


def exit_code_of(status: int) -> int:
    """Shell convention: the exit code, or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def service_child(on_term: Callable[[int, Any], None]) -> None:
    """In a service process just forked from the master (the broker, the node process): a
    process group of its own (a terminal's ^C is for the master), death with the master,
    ``on_term`` for SIGTERM, the master's other signals ignored, and the mask the master set
    around the fork lifted."""
    os.setpgid(0, 0)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    for sig in (
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGQUIT,
    ):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def kill_and_reap(pid: int) -> None:
    """SIGKILL ``pid`` (a child of ours) and reap it; gone already is fine."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def stop_child(pid: int, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
    """SIGTERM the child ``pid``, reap it within ``wait_s`` (polling), else SIGKILL it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = clock() + wait_s
    while clock() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
    kill_and_reap(pid)


class ServiceStartError(Exception):
    """A forked service process said it could not start, or said nothing in time."""


def fork_service(
    body: Callable[[Callable[[str], None]], None], *, timeout_s: float
) -> tuple[int, str]:
    """Fork a service process (the broker, a Redis node's process) and wait until it serves.

    In the child, ``body(ready)`` runs and never returns normally before it stops serving; it
    calls ``ready(text)`` once, when it serves. The parent returns ``(pid, text)``. An exception
    in the child before ``ready`` is reported to the parent, which kills and reaps the child and
    raises :class:`ServiceStartError` with the reason (or "no answer in time")."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        told = False

        def ready(text: str) -> None:
            nonlocal told
            os.write(wfd, f"ok {text}\n".encode())
            os.close(wfd)
            told = True

        try:
            os.close(rfd)
            body(ready)
        except BaseException as exc:  # say why we could not start (or why we stopped), then go
            if not told:
                with contextlib.suppress(OSError):
                    os.write(wfd, f"error {type(exc).__name__}: {exc}\n".encode())
            elif not isinstance(exc, SystemExit | KeyboardInterrupt):
                with contextlib.suppress(Exception):  # the parent sees only an exit code
                    logger.opt(exception=exc).critical(
                        "service process {} failed: {}", os.getpid(), exc
                    )
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(wfd)
    try:
        answer = read_line(rfd, timeout_s)
    finally:
        os.close(rfd)
    if not answer.startswith("ok "):
        kill_and_reap(pid)
        raise ServiceStartError(answer[6:] if answer.startswith("error ") else "no answer in time")
    return pid, answer[3:]
