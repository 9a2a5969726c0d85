"""What a worker reports and logs for one task: successes at INFO only when asked, failed
attempts never above DEBUG, a result that is not JSON-able is an invalid attempt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from supervisor import payload
from supervisor.master.scoreboard import Scoreboard
from supervisor.registry import TaskOptions, TaskRegistry
from supervisor.worker.loop import Worker

pytestmark = pytest.mark.timeout(30)

app = TaskRegistry()


@app.task("ok", timeout_s=30)
def ok(params: dict[str, Any]) -> dict[str, int]:
    return {"n": params["n"]}


@app.task("a_set", timeout_s=30)
def a_set(params: dict[str, Any]) -> set[int]:
    return {1, 2}


@app.task("boom", timeout_s=30)
def boom(params: dict[str, Any]) -> None:
    raise ValueError("bad input")


def make_worker(**kw: Any) -> Worker:
    options = {name: TaskOptions(timeout_s=30.0) for name in app.names()}
    w = Worker(
        slot=0,
        registry=app,
        options=options,
        scoreboard=Scoreboard(1),
        connect=lambda: None,  # type: ignore[arg-type,return-value]
        master_pid=1,
        **kw,
    )
    w.log = logger.bind(component="worker", worker=0, pid=1)  # what init_process sets
    return w


def message(task_type: str, **params: Any) -> dict[str, Any]:
    return {
        "task_id": f"t-{task_type}",
        "type": task_type,
        "params": payload.dumps(params, what="params"),
        "priority": 5,
        "attempt": 1,
    }


@pytest.fixture
def lines() -> Iterator[list[tuple[str, str]]]:
    out: list[tuple[str, str]] = []
    logger.enable("supervisor")  # the library is quiet until enabled; another test may disable it
    hid = logger.add(lambda m: out.append((m.record["level"].name, m.record["message"])))
    yield out
    logger.remove(hid)


def _successes(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(level, msg) for level, msg in lines if " succeeded in " in msg]


def test_a_success_is_logged_at_debug_by_default(lines):
    report = make_worker().execute(message("ok", n=3))
    assert report == ("t-ok", "succeeded", {"n": 3})
    [(level, msg)] = _successes(lines)
    assert level == "DEBUG"
    assert msg.startswith("task t-ok (ok) succeeded in ") and msg.endswith(" s")
    seconds = msg.removeprefix("task t-ok (ok) succeeded in ").removesuffix(" s")
    assert len(seconds.split(".")[1]) == 3  # d.ddd


def test_a_success_is_logged_at_info_with_log_successes(lines):
    make_worker(log_successes=True).execute(message("ok", n=3))
    [(level, _)] = _successes(lines)
    assert level == "INFO"


def test_a_failed_attempt_logs_nothing_above_debug(lines):
    report = make_worker(log_successes=True).execute(message("boom"))
    assert report[1] == "failed" and report[2]["error"] == "ValueError: bad input"
    assert lines and all(level == "DEBUG" for level, _ in lines)


def test_a_result_that_is_not_json_able_is_an_invalid_attempt(lines):
    report = make_worker(log_successes=True).execute(message("a_set"))
    assert report == (
        "t-a_set",
        "invalid",
        {
            "error": "result of task type 'a_set' is not JSON-able: "
            "Object of type set is not JSON serializable"
        },
    )
    assert _successes(lines) == []  # not a success
    assert all(level == "DEBUG" for level, _ in lines)


def test_an_unknown_task_type_is_invalid_and_logged_at_debug(lines):
    report = make_worker().execute(message("nope"))
    assert report[1] == "invalid" and "'nope' is not registered" in report[2]["error"]
    assert all(level == "DEBUG" for level, _ in lines)
