"""The JSON API without HTTP: routes, auth, errors, and every response against openapi.json."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.web.api import Api, openapi

pytestmark = pytest.mark.timeout(30)

SPEC = openapi()
W = "worker:0:1"


def check(status: int, doc: Any, path: str, method: str = "get") -> Any:
    """Validate ``doc`` against the spec's schema for that path, method and status."""
    op = SPEC["paths"][path][method]
    response = op["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(doc)
    return doc


@pytest.fixture
def broker(clock) -> MemoryBroker:
    b = MemoryBroker(clock=clock)
    b.publish_status(
        {
            "pid": 7,
            "state": "running",
            "workers": [
                {
                    "slot": 0,
                    "pid": 8,
                    "state": "idle",
                    "task_id": None,
                    "task_type": None,
                    "running_s": None,
                    "tasks_done": 3,
                    "uptime_s": 1.5,
                }
            ],
        }
    )
    return b


def push(b: MemoryBroker, params: Any = None, **kw: Any) -> str:
    return b.push({"type": "t", "params": pickle.dumps(params or {"n": 1}), **kw})


def test_the_spec_itself_is_valid_openapi():
    validate_spec(SPEC)


def test_read_calls(broker):
    api = Api(
        broker,
        schedules=lambda: [
            {
                "id": "s1",
                "name": "n",
                "task_type": "t",
                "schedule_type": "interval",
                "enabled": True,
                "next_run_at": 5.0,
                "run_count": 0,
            }
        ],
    )
    t = push(broker, {"n": 1})
    done = push(broker)
    m = broker.pop(W)
    broker.report(W, (m["task_id"], "succeeded", {"ok": True}))
    code, doc = api.handle("GET", "/api/tasks", {"status": ["queued"]})
    assert code == 200 and [r["task_id"] for r in check(code, doc, "/api/tasks")["tasks"]] == [done]
    code, doc = api.handle("GET", f"/api/tasks/{t}", {})
    assert check(code, doc, "/api/tasks/{task_id}")["result"] == {"ok": True}
    assert doc["params"] == {"n": 1} and doc["status"] == "succeeded"
    code, doc = api.handle("GET", "/api/tasks/nope", {})
    assert code == 404 and "'nope' is unknown" in check(code, doc, "/api/tasks/{task_id}")["error"]
    code, doc = api.handle("GET", "/api/stats", {})
    assert check(code, doc, "/api/stats")["by_status"] == {"queued": 1, "succeeded": 1}
    code, doc = api.handle("GET", "/api/workers", {})
    assert check(code, doc, "/api/workers")["workers"][0]["pid"] == 8
    code, doc = api.handle("GET", "/api/schedules", {})
    assert check(code, doc, "/api/schedules")["schedules"][0]["id"] == "s1"


def test_bad_queries_get_400_naming_the_value(broker):
    api = Api(broker)
    code, doc = api.handle("GET", "/api/tasks", {"status": ["pending"]})
    assert code == 400 and "got 'pending'" in check(code, doc, "/api/tasks")["error"]
    code, doc = api.handle("GET", "/api/tasks", {"limit": ["0"]})
    assert code == 400 and "limit" in doc["error"]
    assert api.handle("GET", "/api/nothing", {})[0] == 404
    assert api.handle("DELETE", "/api/tasks/x", {})[0] == 405


def test_write_calls_need_the_token(broker):
    t = push(broker)
    closed = Api(broker)
    code, doc = closed.handle("POST", f"/api/tasks/{t}/cancel", {})
    assert code == 403 and check(code, doc, "/api/tasks/{task_id}/cancel", "post")
    api = Api(broker, token="s3cret")
    for header in (None, "Bearer wrong", "Basic s3cret"):
        code, doc = api.handle("POST", f"/api/tasks/{t}/cancel", {}, header)
        assert code == 401 and check(code, doc, "/api/tasks/{task_id}/cancel", "post")
    assert broker.get_task(t)["status"] == "queued"
    code, doc = api.handle("POST", f"/api/tasks/{t}/cancel", {}, "Bearer s3cret")
    assert check(code, doc, "/api/tasks/{task_id}/cancel", "post")["outcome"] == "cancelled"
    code, doc = api.handle("POST", f"/api/tasks/{t}/cancel", {}, "Bearer s3cret")
    assert code == 409 and doc["outcome"] == "finished"
    code, doc = api.handle("POST", f"/api/tasks/{t}/retry", {}, "Bearer s3cret")
    assert check(code, doc, "/api/tasks/{task_id}/retry", "post")["outcome"] == "queued"
    code, doc = api.handle("POST", f"/api/tasks/{t}/retry", {}, "Bearer s3cret")
    assert code == 409 and check(code, doc, "/api/tasks/{task_id}/retry", "post")
    code, doc = api.handle("POST", "/api/tasks/ghost/retry", {}, "Bearer s3cret")
    assert code == 404 and doc["outcome"] == "unknown"


class Opaque:
    """A picklable object that is not JSON data."""


def test_params_that_are_not_plain_data_are_described_not_decoded(broker):
    t = broker.push({"type": "t", "params": pickle.dumps(Opaque())})
    code, doc = Api(broker).handle("GET", f"/api/tasks/{t}", {})
    assert "_unreadable" in check(code, doc, "/api/tasks/{task_id}")["params"]
