"""Signals to the master: shutdown (graceful, fast), scaling, reload, stack dumps, death."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import gone
from tests.helpers import require_service, wait_until

pytestmark = pytest.mark.timeout(120)


def _start_long(m, n: int, seconds: float, path: Path | None = None) -> list[str]:
    params = {"seconds": seconds, **({"path": str(path)} if path else {})}
    ids = [
        m.queue.push_task({"type": "long", "params": {**params, "key": f"long{i}"}})
        for i in range(n)
    ]
    wait_until(
        lambda: all(m.queue.get_public(f"long{i}") for i in range(n)),
        what=f"{n} long tasks to start",
    )
    return ids


def test_term_drains_running_tasks_then_exits_zero(start_master, tmp_path: Path):
    m = start_master("--graceful-timeout", "10", workers=2)
    path = tmp_path / "done.log"
    ids = _start_long(m, 2, 1.5, path)
    pids = m.worker_pids()
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(10 + 2) == 0
    assert time.monotonic() - t0 < 10 + 2
    assert sorted(path.read_text().split()) == sorted(ids)  # both finished, not killed
    assert all(gone(p) for p in pids)
    assert m.descendants() == []
    assert not (m.run_dir / "broker.sock").exists()


def test_term_past_graceful_timeout_kills_and_exits_zero(start_master):
    m = start_master("--graceful-timeout", "1", workers=2)
    _start_long(m, 2, 60)
    pids = m.worker_pids()
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(1 + 2) == 0
    assert time.monotonic() - t0 < 1 + 2
    assert all(gone(p) for p in pids)
    text = m.log_text()
    assert "graceful timeout passed; killing 2 worker(s)" in text


def test_second_term_is_fast(start_master):
    m = start_master("--graceful-timeout", "60", workers=2)
    _start_long(m, 2, 60)
    m.signal(signal.SIGTERM)
    m.wait_log("graceful shutdown")
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(5) == 0
    assert time.monotonic() - t0 < 3
    assert "fast shutdown" in m.log_text()


def test_quit_is_fast(start_master):
    m = start_master("--graceful-timeout", "60", workers=1)
    _start_long(m, 1, 60)
    m.signal(signal.SIGQUIT)
    assert m.wait_exit(5) == 0


def test_ttin_and_ttou_change_the_worker_count(start_master):
    m = start_master(workers=2)
    m.signal(signal.SIGTTIN)
    m.wait_ready(3)
    m.signal(signal.SIGTTOU)
    m.wait_ready(2)  # one at a time: the kernel merges a signal sent while one is pending
    m.signal(signal.SIGTTOU)
    m.wait_ready(1)
    m.signal(signal.SIGTTOU)  # never below one worker
    wait_until(
        lambda: m.log_text().count("SIGTTOU: 1 worker(s) wanted") == 2,
        what="the third SIGTTOU to be handled",
    )
    m.wait_ready(1)


def test_hup_replaces_every_worker(start_master):
    m = start_master(workers=2)
    old = set(m.wait_ready())
    m.signal(signal.SIGHUP)

    def replaced() -> bool:
        pids = set(m.wait_ready())
        return pids.isdisjoint(old)

    wait_until(replaced, 20, what="every worker to be replaced")
    assert all(gone(p) for p in old)
    assert "SIGHUP: configuration reloaded" in m.log_text()


def test_usr2_logs_the_stack_of_master_and_workers(start_master):
    m = start_master(workers=2)
    pids = m.wait_ready()
    m.signal(signal.SIGUSR2)
    m.wait_log("stack of master")
    for pid in pids:
        m.wait_log(f"(pid {pid}):")
    assert m.proc.poll() is None
    assert set(m.wait_ready()) == set(pids)  # nobody died of it


def test_no_worker_survives_a_kill9_of_the_master(start_master):
    m = start_master(workers=2)
    _start_long(m, 1, 60)
    children = m.descendants()
    assert len(children) >= 3  # broker + 2 workers
    m.signal(signal.SIGKILL)
    m.wait_exit(5)
    wait_until(
        lambda: all(gone(p.pid) for p in children),
        10,
        what="the broker and every worker to die with the master",
    )


def test_app_that_fails_to_import_exits_4_without_respawning(tmp_path: Path):
    out = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "supervisor",
            "run",
            "--app",
            "tests.e2e.no_such_module",
            "--run-dir",
            str(tmp_path / "run"),
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 4
    assert "cannot import task app module 'tests.e2e.no_such_module'" in out.stderr


def test_worker_that_fails_to_boot_stops_the_master_with_3(start_master, monkeypatch):
    monkeypatch.setenv("E2E_FAIL_BOOT", "1")
    m = start_master(workers=2, wait=False)
    assert m.wait_exit(20) == 3
    text = m.log_text()
    assert "worker failed to boot" in text and "E2E_FAIL_BOOT is set" in text
    assert text.count("worker failed to boot") <= 2  # no respawn loop


def test_crash_loop_breaker_stops_the_master_with_5(start_master):
    m = start_master("--crash-limit", "3", "--crash-window", "60", workers=2)
    m.queue.push_tasks([{"type": "exit", "params": {}} for _ in range(3)])
    assert m.wait_exit(30) == 5
    assert "crash-loop breaker tripped" in m.log_text()


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def test_as_pid1_reaps_orphans_and_exits_zero_on_term(start_master):
    require_service(_unshare_works(), "unshare --pid needs root and a kernel that allows it")
    m = start_master(workers=1, prefix=["unshare", "--pid", "--fork", "--mount-proc"], wait=False)
    m.wait_ready()
    task_id = m.queue.push_task({"type": "orphan", "params": {"linger": 0.2}})
    rec = m.wait_status(task_id, "succeeded")
    grandchild = rec["result"]  # its pid inside the namespace
    m.wait_log(f"reaped orphan pid {grandchild}")
    master = psutil.Process(m.proc.pid).children()[0]  # unshare's child: PID 1 inside
    assert not [c for c in master.children() if c.status() == psutil.STATUS_ZOMBIE]
    master.send_signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(master.pid).status()


def test_usr1_reopens_the_log_file(start_master, tmp_path: Path):
    log_file = tmp_path / "supervisor.log"
    m = start_master("--log-file", str(log_file), workers=1)
    wait_until(
        lambda: log_file.exists() and "master started" in log_file.read_text(),
        what="the log file to be written",
    )
    rotated = tmp_path / "supervisor.log.1"
    log_file.rename(rotated)
    m.signal(signal.SIGUSR1)
    wait_until(
        lambda: log_file.exists() and "log files reopened" in log_file.read_text(),
        what="a new log file after USR1",
    )
    assert "log files reopened" not in rotated.read_text()
