"""Client commands against a fake queue: strict JSON, push's checks, a locked task table."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from supervisor.cli import main as cli_main
from supervisor.cli.main import main
from supervisor.cli.output import to_json
from supervisor.errors import DatabaseBusy

pytestmark = pytest.mark.timeout(30)

BUSY = (
    "task records cannot be read now: the task table in sqlite:///x.db is locked or "
    "unreachable (database is locked); retry once it is released"
)
BUSY_RAISED = BUSY.replace(" (database", "\n  (database")  # a cause can span lines


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


class FakeBroker:
    def get_status(self) -> dict[str, Any]:
        return {
            "master": {"pid": 1, "workers": [{"slot": 0, "running_s": math.inf}]},
            "stats": {"counters": {("done", "t", "succeeded"): 2}, "oldest_age_s": math.nan},
            "scheduler": {"next_fire_in_s": -math.inf},
        }


class FakeQueue:
    """What the CLI calls; ``busy`` makes the table-reading calls raise DatabaseBusy."""

    def __init__(self, *, busy: bool = False) -> None:
        self.busy = busy
        self.broker = FakeBroker()
        self.pushed: list[tuple[dict[str, Any], Any, Any]] = []

    def _check(self) -> None:
        if self.busy:
            raise DatabaseBusy(BUSY_RAISED)

    def list_tasks(self, **_: Any) -> list[dict[str, Any]]:
        self._check()
        return [{"task_id": "a", "result": math.inf, "params": {"x": math.nan}}]

    def get_queue_stats(self) -> dict[str, int]:
        self._check()
        return {"queued": 1}

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        self._check()
        return {"task_id": task_id, "duration_s": math.inf}

    def get_public(self, key: str) -> Any:
        return {"v": math.inf}

    def push_task(self, task: dict[str, Any], *, priority: Any, delay: Any) -> str:
        self.pushed.append((task, priority, delay))
        return str(task.get("task_id", "new-id"))


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    q = FakeQueue()
    monkeypatch.setattr(cli_main, "_connect", lambda args: q)
    return q


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--json"],
        ["tasks", "list", "--json"],
        ["tasks", "show", "a"],
        ["tasks", "stats", "--json"],
        ["store", "get", "k"],
    ],
)
def test_json_output_is_strict(
    queue: FakeQueue, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out
    strict_loads(out)


def test_status_json_writes_non_finite_numbers_as_null(
    queue: FakeQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--json"]) == 0
    doc = strict_loads(capsys.readouterr().out)
    assert doc["master"]["workers"][0]["running_s"] is None
    assert doc["stats"]["oldest_age_s"] is None
    assert doc["stats"]["counters"] == {"done:t:succeeded": 2}


def test_to_json_refuses_nothing_and_writes_no_nan() -> None:
    text = to_json({"a": [1.5, math.inf, (math.nan, 2)], ("k", 1): {"b": -math.inf}}, indent=None)
    assert strict_loads(text) == {"a": [1.5, None, [None, 2]], "k:1": {"b": None}}


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks", "list"],
        ["tasks", "list", "--json"],
        ["tasks", "stats"],
        ["tasks", "stats", "--json"],
        ["tasks", "show", "a"],
    ],
)
def test_a_locked_task_table_is_one_line_and_exit_1(
    queue: FakeQueue, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    queue.busy = True
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no empty table, no [] or {} that looks like an answer
    assert err == f"supervisor: {BUSY}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--delay", "1e12"],
            "--delay: delay must be a number of seconds >= 0 and <= 315360000 (10 years), "
            "got '1e12'",
        ),
        (["--delay", "nan"], "--delay: delay must be a number of seconds >= 0"),
        (["--delay", "-1"], "--delay: delay must be a number of seconds >= 0"),
        (["--task-id", ""], "--task-id: must not be empty, got ''"),
        (["--task-id", "  "], "--task-id: must not be empty, got '  '"),
        (
            ["--params", '{"a": NaN}'],
            "--params: NaN is not a JSON number (use null, or a number): '{\"a\": NaN}'",
        ),
        (["--params", '{"a": [Infinity]}'], "--params: Infinity is not a JSON number"),
        (["--params", '{"a": -Infinity}'], "--params: -Infinity is not a JSON number"),
        (["--params", "[1]"], "--params: expected a JSON object, got list"),
    ],
)
def test_push_refuses_bad_flags_naming_them(
    queue: FakeQueue, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", "t", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("supervisor: ") and message in err and len(err.splitlines()) == 1
    assert queue.pushed == []


def test_push_passes_good_values(queue: FakeQueue, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["push", "t", "--params", '{"a": 1.5}', "--delay", "3600", "--task-id", "mine"]
    assert main([*argv, "--priority", "7"]) == 0
    assert capsys.readouterr().out == "mine\n"
    assert queue.pushed == [({"type": "t", "params": {"a": 1.5}, "task_id": "mine"}, 7, 3600.0)]


def test_a_malformed_client_address_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--address", "notahost:abc"]) == 2
    assert capsys.readouterr().err == (
        "supervisor: --address: broker address 'notahost:abc': port 'abc' is not a number; "
        "expected a socket path or HOST:PORT\n"
    )


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://u:s3cret@h/0", "scheme http:// is not redis:// or rediss://"),
        ("redis://u:s3cret@h:port/0", "a port that is not a number from 0 to 65535"),
    ],
)
def test_a_malformed_client_broker_url_is_a_usage_error_without_the_password(
    capsys: pytest.CaptureFixture[str], url: str, what: str
) -> None:
    assert main(["status", "--broker", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"supervisor: --broker: {what} in '") and "u:***@h" in err
    assert "s3cret" not in err and err.count("\n") == 1


STATS = {"queued": 3, "scheduled": 0, "retrying": 0, "running": 1, "store_keys": 0}


@pytest.mark.parametrize(
    ("master", "nodes", "expect"),
    [
        ({"pid": 7, "workers": [], "desired_workers": 2}, None, ("master pid 7", 0)),  # one box
        ({"pid": 7, "workers": [], "desired_workers": 2}, {"a": {"pid": 7}}, ("master pid 7", 0)),
        ({}, {"a": {"pid": 7}, "b": {"pid": 8}}, ("cluster of 2 node(s)", 2)),  # a client
        ({}, {"a": {"pid": 7}}, ("cluster of 1 node(s)", 1)),
        ({}, {}, ("no node has published its status (none runs, or they use another", 0)),
    ],
)
def test_status_says_what_it_sees_a_master_a_cluster_or_nothing(
    queue: FakeQueue,
    capsys: pytest.CaptureFixture[str],
    master: dict[str, Any],
    nodes: dict[str, Any] | None,
    expect: tuple[str, int],
) -> None:
    doc = {"master": master, "stats": STATS, "scheduler": None}
    if nodes is not None:
        doc["nodes"] = nodes
    queue.broker.get_status = lambda: doc  # type: ignore[method-assign]
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first, node_lines = expect
    assert lines[0].startswith(first), lines
    assert sum(line.startswith("node ") for line in lines) == node_lines
    assert "queue: 3 ready, 0 scheduled, 0 retrying, 1 running" in "\n".join(lines)


def test_status_of_a_cluster_gives_each_nodes_scheduler(
    queue: FakeQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {
        "master": {},
        "nodes": {"a": {"pid": 7}, "b": {"pid": 8}},
        "stats": STATS,
        "scheduler": {"node": "a", "pid": 70, "state": "running", "counters": {"fired": 4}},
        "schedulers": {"a": {"state": "running", "counters": {"fired": 4}}},
    }
    queue.broker.get_status = lambda: doc  # type: ignore[method-assign]
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "node a: master pid 7  state ?  workers 0/?  scheduler running, fired 4" in out
    assert "node b: master pid 8  state ?  workers 0/?\n" in out  # run without one
    assert "scheduler of node a pid 70  state running" in out
