"""External producers and the CLI: auth, seed API from another process, clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import connect
from supervisor.errors import BrokerError
from tests.e2e.conftest import REPO
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)

PRODUCER = """
import json, sys
from supervisor import push_task, set_public, get_public, get_queue_size, list_keys
task_id = push_task({"type": "noop", "params": {"x": 1}, "priority": 9})
set_public("from-producer", {"ok": True}, ttl=60)
print(json.dumps({"task_id": task_id, "value": get_public("from-producer"),
                  "keys": list_keys(), "size": get_queue_size()}))
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )


def test_external_process_uses_the_seed_api_with_the_auth_key(start_master):
    m = start_master(workers=1)
    key = (m.run_dir / "authkey").read_text().strip()
    addr = (m.run_dir / "address").read_text().strip()
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), SUPERVISOR_ADDRESS=addr, SUPERVISOR_AUTHKEY=key),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["value"] == {"ok": True} and "from-producer" in doc["keys"]
    assert m.wait_status(doc["task_id"], "succeeded")["priority"] == 9
    assert m.queue.get_public("from-producer") == {"ok": True}


def test_wrong_auth_key_is_refused(start_master):
    m = start_master(workers=1)
    with pytest.raises(BrokerError, match="refused the auth key"):
        connect(address=str(m.run_dir / "broker.sock"), authkey="not-the-key")
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(
            os.environ,
            PYTHONPATH=str(REPO),
            SUPERVISOR_ADDRESS=str(m.run_dir / "broker.sock"),
            SUPERVISOR_AUTHKEY="wrong",
        ),
    )
    assert out.returncode != 0 and "refused the auth key" in out.stderr
    assert m.queue.get_queue_size() == 0  # nothing got in


def test_socket_and_key_are_private(start_master):
    m = start_master(workers=1)
    assert stat.S_IMODE(os.stat(m.run_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(m.run_dir / "broker.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.run_dir / "authkey").st_mode) == 0o600
    key = (m.run_dir / "authkey").read_text().strip()
    assert key not in m.log_text()


def test_tcp_address_with_explicit_key(start_master):
    m = start_master("--address", "127.0.0.1:0", "--authkey", "s3cret-key", workers=1)
    addr = (m.run_dir / "address").read_text().strip()
    assert addr.startswith("127.0.0.1:") and not addr.endswith(":0")
    q = connect(address=addr, authkey="s3cret-key")
    task_id = q.push_task({"type": "noop", "params": {}})
    assert m.wait_status(task_id, "succeeded")
    assert "s3cret-key" not in m.log_text()
    with pytest.raises(BrokerError, match="refused the auth key"):
        connect(address=addr, authkey="guess")


def test_cli_push_status_store_and_tasks(start_master):
    m = start_master(workers=2)
    rd = ["--run-dir", str(m.run_dir)]
    out = _cli("push", "noop", "--params", '{"a": 1}', "--priority", "7", *rd)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    m.wait_status(task_id, "succeeded")
    shown = _cli("tasks", "show", task_id, *rd)
    assert json.loads(shown.stdout)["status"] == "succeeded"
    status = _cli("status", *rd)
    assert status.returncode == 0 and f"master pid {m.proc.pid}" in status.stdout
    wait_until(
        lambda: "scheduler pid" in _cli("status", *rd).stdout,
        20,
        what="the scheduler's first report (about once a second)",
    )
    doc = json.loads(_cli("status", "--json", *rd).stdout)
    assert len(doc["master"]["workers"]) == 2
    assert _cli("store", "set", "k", '{"v": [1, 2]}', "--json", "--ttl", "60", *rd).returncode == 0
    assert json.loads(_cli("store", "get", "k", *rd).stdout) == {"v": [1, 2]}
    assert _cli("store", "list", *rd).stdout.split() == ["k"]
    assert _cli("store", "delete", "k", *rd).returncode == 0
    missing = _cli("store", "get", "k", *rd)
    assert missing.returncode == 1 and "not set" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push", "noop", "--params", "{not json"], "--params: not valid JSON"),
        (["push", "noop", "--params", "[1]"], "--params: expected a JSON object"),
        (["push", "noop", "--priority", "11"], "priority must be from 0 to 10, got 11"),
        (["push", "noop", "--priority", "high"], "--priority: expected an integer, got 'high'"),
        (["push", "noop", "--delay", "-1"], "delay must be a number of seconds >= 0"),
        (["push", "nope"], "task type 'nope' is not registered"),
        (["store", "set", "k", "v", "--ttl", "0"], "ttl must be a positive number"),
    ],
)
def test_cli_rejects_bad_input_with_a_clear_message(start_master, args, message):
    m = start_master(workers=1)
    out = _cli(*args, "--run-dir", str(m.run_dir))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert m.proc.poll() is None  # the master shrugs it off


def test_cli_without_a_master_says_so(tmp_path: Path):
    out = _cli("status", "--run-dir", str(tmp_path / "nothing"))
    assert out.returncode == 1
    assert "no master is running" in out.stderr and "Traceback" not in out.stderr


def test_bad_setting_names_the_field(tmp_path: Path):
    out = _cli(
        "run", "--app", "tests.e2e.app", "--workers", "many", "--run-dir", str(tmp_path / "r")
    )
    assert out.returncode == 2
    assert "workers: expected an integer, got 'many' (from flag --workers)" in out.stderr


def test_second_master_on_the_same_run_dir_is_refused(start_master):
    m = start_master(workers=1)
    out = _cli("run", "--app", "tests.e2e.app", "--run-dir", str(m.run_dir), "--log-format", "text")
    assert out.returncode == 2
    assert f"a master is already running with pid {m.proc.pid}" in out.stderr
    assert m.queue.get_queue_size() == 0  # the first one is untouched
