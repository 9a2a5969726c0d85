"""What a user types wrong gets one line naming it, and exit code 2, before anything forks; a
locked task table is one line and exit code 1, never an empty answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO
from tests.helpers import sqlite_locked

pytestmark = pytest.mark.timeout(120)

# Runs the CLI as if psycopg were not installed (without uninstalling it).
NO_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = None; "
    "from supervisor.cli.main import main; sys.argv[0] = 'supervisor'; sys.exit(main())"
)


def cli(
    *args: str, cwd: Path, prefix: tuple[str, ...] = ("-m", "supervisor"), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--app",
        "tests.e2e.app",
        "--run-dir",
        str(tmp_path / "run"),
        "--database",
        f"sqlite:///{tmp_path / 'ok.db'}",
        "--metrics-port",
        "0",
        *extra,
    ]


def assert_usage_line(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("supervisor: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in out.stderr and "broker.sock" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--metrics-port", "70000"], ["metrics_port: expected a value <= 65535, got '70000'"]),
        (["--address", "notahost:abc"], ["address: ", "port 'abc' is not a number"]),
        (["--address", "nosuchhost.invalid:5000"], ["address: host 'nosuchhost.invalid'"]),
        (
            ["--database", "sqlite:////nonexistent/dir/x.db"],
            ["database: cannot open sqlite:////nonexistent/dir/x.db", "(from flag --database)"],
        ),
        (
            ["--database", "postgresql+psycopg://nobody:pw@127.0.0.1:1/x"],
            ["database: cannot open postgresql+psycopg://nobody:***@127.0.0.1:1/x"],
        ),
        (["--graceful-timeout", "-1"], ["graceful_timeout: expected a value >= 0, got '-1'"]),
        (["--default-timeout", "-1"], ["default_timeout: expected a value >= 0.01"]),
        (["--heartbeat-timeout", "1e400"], ["heartbeat_timeout: expected a number"]),
        (["--workers", "-2"], ["workers: expected a value >= 1, got '-2' (from flag --workers)"]),
    ],
)
def test_run_refuses_a_bad_setting_before_forking(
    tmp_path: Path, extra: list[str], needles: list[str]
) -> None:
    out = cli(*run_args(tmp_path, *extra), cwd=tmp_path)
    line = assert_usage_line(out, *needles)
    assert ":pw@" not in line
    assert not (tmp_path / "run").exists()  # no master, broker or worker was started


def test_run_refuses_a_metrics_port_in_use(tmp_path: Path, busy_port: int) -> None:
    out = cli(*run_args(tmp_path, "--metrics-port", str(busy_port)), cwd=tmp_path)
    assert_usage_line(
        out,
        f"metrics_port: cannot listen on 127.0.0.1:{busy_port}: the port is already in use",
        "(from flag --metrics-port)",
    )


def test_without_psycopg_run_and_schedules_name_the_extra(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody:pw@127.0.0.1:1/x"
    hint = "pip install 'supervisor-workers[postgres]'"
    out = cli(*run_args(tmp_path, "--database", url), cwd=tmp_path, prefix=("-c", NO_PSYCOPG))
    assert_usage_line(out, "database: ", "driver 'psycopg' is not installed", hint)
    out = cli("schedules", "list", "--database", url, cwd=tmp_path, prefix=("-c", NO_PSYCOPG))
    assert_usage_line(out, "driver 'psycopg' is not installed", hint)


def test_a_dash_value_reaches_the_flags_own_check(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    out = cli(
        "schedules", "add", "n", "--type", "t", "--every", "-30s", "--database", db, cwd=tmp_path
    )
    assert "expected one argument" not in out.stderr
    assert_usage_line(out, "positive")
    out = cli("tasks", "purge", "--status", "dead", "--older-than", "-1d", cwd=tmp_path)
    assert_usage_line(out, "--older-than: must be positive, got '-1d'")


def test_argparse_errors_are_one_line_and_a_hint(tmp_path: Path) -> None:
    out = cli("push", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "supervisor: error: the following arguments are required: type",
        "try 'supervisor push --help'",
    ]


def test_a_locked_task_table_is_an_error_not_an_empty_answer(start_master, tmp_path: Path) -> None:
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "noop", "params": {}})
    m.wait_status(task_id, "succeeded")
    rd = ("--run-dir", str(m.run_dir), "--timeout", "40")
    listed = cli("tasks", "list", "--json", *rd, cwd=tmp_path)
    assert listed.returncode == 0 and task_id in listed.stdout
    path = m.database.removeprefix("sqlite:///")
    with sqlite_locked(path):  # a backup or a migration in another process
        # Pushes go on; the table cannot take them now, so no read can be up to date.
        later = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)
        for action in (("list", "--json"), ("stats",)):  # each one waits out the busy timeout
            out = cli("tasks", *action, *rd, cwd=tmp_path)
            assert out.returncode == 1, (action, out.stdout, out.stderr)
            assert out.stdout == ""  # no table, no [] or {} that looks like an answer
            assert len(out.stderr.splitlines()) == 1 and "locked" in out.stderr
            assert out.stderr.startswith("supervisor: ")
    listed = cli("tasks", "list", "--json", *rd, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {r["task_id"] for r in json.loads(listed.stdout)} == {task_id, later}
    stats = cli("tasks", "stats", "--json", *rd, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout).get("succeeded") == 1
