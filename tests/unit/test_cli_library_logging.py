"""A library is silent until the application enables its log: a user's script that pushes a task
or adds a schedule gets nothing on stderr; ``supervisor run`` (``setup_logging``) turns it on,
and forked children keep it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
import supervisor
from loguru import logger

mode = sys.argv[1]
if mode == "enable":
    logger.enable("supervisor")
elif mode in ("setup", "fork"):
    from supervisor import logs
    logs.setup_logging("text", "INFO")

def work(name):
    q = supervisor.MemoryQueue()
    tid = q.push_task({"type": "t", "params": {}})
    q.pop_task(timeout=0)
    q.task_done(tid)
    s = supervisor.get_scheduler(sys.argv[2])
    s.add_scheduler_task(name, "t", "interval", interval_seconds=5)
    s.pause_task(s.list_tasks()[0]["task_id"])

if mode == "fork":
    pid = os.fork()
    if pid == 0:
        try:
            work("in-child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
else:
    work("in-" + mode)
print("done")
"""


def run_script(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in list(env):
        if name.startswith("SUPERVISOR_"):
            del env[name]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, f"sqlite:///{tmp_path / 'lib.db'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "done\n"
    return out


def test_a_users_script_gets_no_log_lines(tmp_path: Path) -> None:
    assert run_script(tmp_path, "quiet").stderr == ""


def test_a_script_that_enables_the_log_gets_it(tmp_path: Path) -> None:
    err = run_script(tmp_path, "enable").stderr
    assert "INFO" in err and "schedule" in err and "added" in err


def test_setup_logging_enables_it_and_forked_children_keep_it(tmp_path: Path) -> None:
    err = run_script(tmp_path, "setup").stderr
    assert "| INFO     | schedule " in err and "('in-setup', interval) added" in err
    err = run_script(tmp_path, "fork").stderr
    assert "('in-child', interval) added" in err
