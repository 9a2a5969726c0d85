"""The JSON API over real HTTP on a running master, every response checked against OpenAPI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.unit.test_api import check

pytestmark = pytest.mark.timeout(90)


def call(m, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    base = "http://" + (m.run_dir / "http_address").read_text().strip()
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket
            return exc.code, json.loads(exc.read())


def test_api_reads_and_writes_with_the_token(start_master):
    m = start_master("--api-token", "tok-123", workers=1)
    done = m.queue.push_task({"type": "noop", "params": {"n": 7}})
    m.wait_status(done, "succeeded")
    later = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)

    code, doc = call(m, "GET", "/api/tasks?status=succeeded")
    assert code == 200 and [t["task_id"] for t in check(code, doc, "/api/tasks")["tasks"]] == [done]
    code, doc = call(m, "GET", f"/api/tasks/{done}")
    assert check(code, doc, "/api/tasks/{task_id}")["params"] == {"n": 7}
    code, doc = call(m, "GET", "/api/tasks/nope")
    assert code == 404 and check(code, doc, "/api/tasks/{task_id}")
    code, doc = call(m, "GET", "/api/tasks?limit=abc")
    assert code == 400 and check(code, doc, "/api/tasks")
    code, doc = call(m, "GET", "/api/stats")
    assert check(code, doc, "/api/stats")["by_status"]["scheduled"] == 1
    code, doc = call(m, "GET", "/api/workers")
    assert len(check(code, doc, "/api/workers")["workers"]) == 1
    code, doc = call(m, "GET", "/api/schedules")
    assert check(code, doc, "/api/schedules")["schedules"] == []

    code, doc = call(m, "POST", f"/api/tasks/{later}/cancel")
    assert code == 401 and check(code, doc, "/api/tasks/{task_id}/cancel", "post")
    assert m.task(later)["status"] == "scheduled"
    code, doc = call(m, "POST", f"/api/tasks/{later}/cancel", token="tok-123")
    assert check(code, doc, "/api/tasks/{task_id}/cancel", "post")["outcome"] == "cancelled"
    code, doc = call(m, "POST", f"/api/tasks/{later}/retry", token="tok-123")
    assert check(code, doc, "/api/tasks/{task_id}/retry", "post")["outcome"] == "queued"
    m.wait_status(later, "succeeded")
    assert "tok-123" not in m.log_text()


def test_write_calls_are_refused_without_a_configured_token(start_master):
    m = start_master(workers=1)
    task_id = m.queue.push_task({"type": "noop", "params": {}}, delay=3600)
    code, doc = call(m, "POST", f"/api/tasks/{task_id}/cancel", token="anything")
    assert code == 403 and "--api-token" in doc["error"]
    assert m.task(task_id)["status"] == "scheduled"
    code, doc = call(m, "GET", "/api/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")


def test_bad_requests_get_json_errors_and_leave_no_traceback(start_master):
    m = start_master(workers=1)
    done = m.queue.push_task({"type": "noop", "params": {}})
    m.wait_status(done, "succeeded")
    for method in ("DELETE", "TRACE", "PUT"):
        code, doc = call(m, method, "/api/tasks")
        assert code == 405 and "not allowed" in doc["error"], method
    code, doc = call(m, "GET", "/api/tasks?status=")
    assert code == 400 and check(code, doc, "/api/tasks")["error"].startswith("status:")
    code, doc = call(m, "GET", "/api/tasks?since=bad")
    assert code == 400 and doc["error"].startswith("since:")
    code, doc = call(m, "GET", "/api/tasks?since=2h&status=succeeded")
    assert [t["task_id"] for t in check(code, doc, "/api/tasks")["tasks"]] == [done]
    code, doc = call(m, "GET", "/api/tasks?type=" + "x" * 70_000)
    assert code == 414 and "error" in doc
    base = "http://" + (m.run_dir / "http_address").read_text().strip()
    req = urllib.request.Request(base + "/api/tasks/x/cancel", data=b"x" * (20 << 20))
    try:
        urllib.request.urlopen(req, timeout=20)
    except urllib.error.HTTPError as exc:
        with exc:
            assert exc.code == 413 and "over the limit" in json.loads(exc.read())["error"]
    else:
        pytest.fail("a 20 MB body was accepted")
    assert call(m, "GET", "/api/stats")[0] == 200  # the server is still there
    assert "Traceback" not in m.log_text()
