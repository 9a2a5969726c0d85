"""The JSON API refuses what its description does not allow (400 naming the parameter), takes
``since`` in the CLI's forms, answers 503 (retryable) on a locked database, and is typed against
:class:`BrokerView`, not an implementation."""

from __future__ import annotations

import datetime as dt
import pickle
from typing import Any

import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.errors import BrokerError, DatabaseBusy
from supervisor.observability.view import BrokerView, MetricsSource
from supervisor.registry import TaskOptions
from supervisor.web.api import Api, public_message
from supervisor.web.since import SinceError, parse_since
from tests.helpers import BrokerSpy
from tests.unit.test_api import check

pytestmark = pytest.mark.timeout(30)
NOW = 1_700_000_000.0


@pytest.fixture
def broker(clock: Any) -> MemoryBroker:
    return MemoryBroker(clock=clock, task_types={"ok": TaskOptions(), "slow": TaskOptions()})


def tasks(api: Api, **query: str | list[str]) -> tuple[int, Any]:
    q = {k: v if isinstance(v, list) else [v] for k, v in query.items()}
    return api.handle("GET", "/api/tasks", q)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"status": ""}, "status: expected one of scheduled, queued"),
        ({"status": "pending"}, "got 'pending'"),
        ({"type": ""}, "type: unknown task type ''"),
        ({"type": "nope"}, "type: unknown task type 'nope'; known: ok, slow"),
        ({"limit": ""}, "limit: expected an integer from 1 to 1000, got ''"),
        ({"limit": "0"}, "limit: expected an integer from 1 to 1000"),
        ({"limit": "1001"}, "got '1001'"),
        ({"limit": "-5"}, "got '-5'"),
        ({"limit": "2.5"}, "got '2.5'"),
        ({"limit": "\u0665"}, "limit:"),  # a non-ASCII digit is not an integer here
        ({"since": ""}, "since: expected a duration with its unit"),
        ({"since": "yesterday"}, "got 'yesterday'"),
        ({"since": "-2h"}, "since: must be positive, got '-2h'"),
        ({"since": "-1764750000"}, "since: must be positive"),
        ({"since": "2 h"}, "got '2 h'"),
        ({"since": "1e400"}, "got '1e400'"),
        ({"since": "nan"}, "got 'nan'"),
        ({"since": "2026-13-45T10:00"}, "got '2026-13-45T10:00'"),
        ({"statuz": "dead"}, "unknown query parameter 'statuz'; it takes: limit, since"),
        ({"status": ["dead", "queued"]}, "status: given 2 times, expected once"),
    ],
)
def test_a_query_that_violates_the_description_is_400_naming_the_parameter(
    broker: MemoryBroker, query: dict[str, Any], named: str
) -> None:
    code, doc = tasks(Api(broker), **query)
    assert code == 400 and named in check(code, doc, "/api/tasks")["error"]


def test_operations_without_parameters_refuse_any(broker: MemoryBroker) -> None:
    code, doc = Api(broker).handle("GET", "/api/stats", {"x": ["1"]})
    assert code == 400 and "it takes none" in check(code, doc, "/api/stats")["error"]


def test_since_takes_the_cli_forms(broker: MemoryBroker, clock: Any) -> None:
    api = Api(broker, clock=clock)
    old = broker.push({"type": "ok", "params": pickle.dumps({})})
    clock.advance(3 * 3600)
    new = broker.push({"type": "ok", "params": pickle.dumps({})})
    cut = NOW + 3600
    iso = dt.datetime.fromtimestamp(cut, dt.UTC).isoformat()
    for since in ("2h", "120m", "0.5d", "7200s", str(cut), iso, iso.replace("+00:00", "Z")):
        code, doc = tasks(api, since=since)
        ids = [t["task_id"] for t in check(code, doc, "/api/tasks")["tasks"]]
        assert ids == ([new] if since != "0.5d" else [new, old]), since
    code, doc = tasks(api, type="ok", status="queued", limit="1")
    assert [t["task_id"] for t in doc["tasks"]] == [new]


def test_parse_since_is_exact_about_its_forms() -> None:
    assert parse_since("90s", now=NOW) == NOW - 90
    assert parse_since("1.5w", now=NOW) == NOW - 1.5 * 604800
    assert parse_since("1764750000.25", now=NOW) == 1764750000.25
    assert parse_since("2026-12-03T10:00:00+01:00", now=NOW) == 1796288400.0
    local = dt.datetime(2026, 12, 3, 10, 0).astimezone().timestamp()
    assert parse_since("2026-12-03T10:00", now=NOW) == local  # no offset: local time
    for bad in ("", " 2h", "2h ", "+5", "1_000", "inf", "2026-12", "2h30m", "١٢"):
        with pytest.raises(SinceError, match="--since: expected"):
            parse_since(bad, now=NOW, name="--since")


def test_the_served_description_lists_the_known_task_types(broker: MemoryBroker) -> None:
    spec = Api(broker).handle("GET", "/api/openapi.json", {})[1]
    (param,) = [p for p in spec["paths"]["/api/tasks"]["get"]["parameters"] if p["name"] == "type"]
    assert param["schema"]["enum"] == ["ok", "slow"]
    anything = MemoryBroker()  # no registered types: any type is accepted
    spec = Api(anything).handle("GET", "/api/openapi.json", {})[1]
    (param,) = [p for p in spec["paths"]["/api/tasks"]["get"]["parameters"] if p["name"] == "type"]
    assert "enum" not in param["schema"]
    assert tasks(Api(anything), type="whatever")[0] == 200


def test_schedule_ids_are_id(broker: MemoryBroker) -> None:
    from supervisor.web.schedules import schedule_doc

    row = {"task_id": "s1", "name": "n", "task_type": "ok", "schedule_type": "cron"}
    row.update(enabled=True, next_run_at=None, run_count=0)
    doc = schedule_doc(row)
    assert doc["id"] == "s1" and "task_id" not in doc
    api = Api(broker, schedules=lambda: [doc])
    code, body = api.handle("GET", "/api/schedules", {})
    assert check(code, body, "/api/schedules")["schedules"][0]["id"] == "s1"


def busy(*_: Any, **__: Any) -> Any:
    raise DatabaseBusy("the task table is locked by another process (sqlite: database is locked)")


@pytest.mark.parametrize(
    ("path", "spec_path", "method"),
    [
        ("/api/tasks", "/api/tasks", "list_tasks"),
        ("/api/stats", "/api/stats", "get_queue_stats"),
        ("/api/tasks/gone", "/api/tasks/{task_id}", "get_task"),
    ],
)
def test_a_locked_database_is_503_retryable(
    broker: MemoryBroker, path: str, spec_path: str, method: str
) -> None:
    api = Api(BrokerSpy(broker, **{method: busy}))  # type: ignore[arg-type]
    code, doc = api.handle("GET", path, {})
    assert code == 503 and check(code, doc, spec_path)["retryable"] is True
    assert "locked" in doc["error"]


def test_a_schedule_database_that_is_locked_is_503(broker: MemoryBroker) -> None:
    api = Api(broker, schedules=busy)
    code, doc = api.handle("GET", "/api/schedules", {})
    assert code == 503 and check(code, doc, "/api/schedules") == {
        "error": "the task table is locked by another process (sqlite: database is locked)",
        "retryable": True,
    }


def test_no_password_of_a_url_reaches_an_answer(broker: MemoryBroker) -> None:
    def unreachable(*_: Any) -> Any:
        raise BrokerError("cannot reach postgresql+psycopg://app:hunter2@db:5432/jobs")

    code, doc = Api(BrokerSpy(broker, get_queue_stats=unreachable)).handle(  # type: ignore[arg-type]
        "GET", "/api/stats", {}
    )
    assert code == 503 and "hunter2" not in doc["error"] and "app:***@db" in doc["error"]
    assert public_message(ValueError("redis://:pw@h/0")) == "redis://:***@h/0"


def test_brokers_satisfy_the_view(broker: MemoryBroker) -> None:
    assert isinstance(broker, BrokerView) and isinstance(broker, MetricsSource)
    assert not isinstance(object(), MetricsSource)


def test_params_or_results_that_are_not_strict_json_are_described(broker: MemoryBroker) -> None:
    t = broker.push({"type": "ok", "params": pickle.dumps({"x": float("nan")})})
    code, doc = Api(broker).handle("GET", f"/api/tasks/{t}", {})
    assert "_unreadable" in check(code, doc, "/api/tasks/{task_id}")["params"]


def test_a_task_id_in_the_path_is_percent_decoded(broker: MemoryBroker) -> None:
    t = broker.push({"type": "ok", "params": pickle.dumps({}), "task_id": "a b:c"})
    code, doc = Api(broker).handle("GET", "/api/tasks/a%20b%3Ac", {})
    assert code == 200 and check(code, doc, "/api/tasks/{task_id}")["task_id"] == t
