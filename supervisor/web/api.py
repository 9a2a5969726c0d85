"""The read/write JSON API: tasks, stats, workers, schedules.

Pure request handling, without HTTP: :meth:`Api.handle` takes a method, a path, the query, the
``Authorization`` header and the body, and returns ``(status, document)``; the HTTP server in the
broker process calls it for every ``/api/`` path. The documents follow ``openapi.json`` beside
this file (the tests validate every response against it).

Write calls (cancel, retry) need ``Authorization: Bearer <api_token>``; with no token configured
they are refused (403): secure unless configured otherwise. Read calls need no token.
"""

from __future__ import annotations

import hmac
import json
import pickle
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from supervisor.broker import base
from supervisor.errors import SupervisorError

Response = tuple[int, Any]
_TASK = re.compile(r"^/api/tasks/(?P<id>[^/]+)(?P<action>/cancel|/retry)?$")
_STATUSES = base.ACTIVE_STATUSES + base.FINAL_STATUSES


def openapi() -> dict[str, Any]:
    return dict(json.loads(resources.files("supervisor.web").joinpath("openapi.json").read_text()))


def _params(blob: Any) -> Any:
    """Task params for JSON: decoded when they are plain data, else a short description."""
    try:
        value = pickle.loads(blob)
        json.dumps(value)
        return value
    except Exception:
        return {"_unreadable": f"{len(blob)} bytes of pickled params"}


def task_summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        k: rec.get(k)
        for k in (
            "task_id",
            "type",
            "status",
            "priority",
            "attempts",
            "pushed_at",
            "started_at",
            "finished_at",
            "eta",
            "error",
            "schedule_id",
        )
    }


def task_detail(rec: dict[str, Any]) -> dict[str, Any]:
    doc = task_summary(rec)
    doc.update(
        params=_params(rec.get("params", b"")),
        result=rec.get("result"),
        traceback=rec.get("traceback"),
        scheduled_at=rec.get("scheduled_at"),
        unique_key=rec.get("unique_key"),
        errors=[
            {k: e.get(k) for k in ("attempt", "reason", "at", "error", "exit_status")}
            for e in rec.get("errors", [])
        ],
    )
    return doc


class Api:
    def __init__(
        self,
        broker: Any,
        *,
        token: str | None = None,
        schedules: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.broker = broker
        self.token = token
        self.schedules = schedules

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        authorization: str | None = None,
        body: bytes = b"",
    ) -> Response:
        try:
            return self._route(method, path.rstrip("/") or "/", query, authorization)
        except SupervisorError as exc:
            return 400, {"error": str(exc)}

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], authorization: str | None
    ) -> Response:
        if path == "/api/openapi.json" and method == "GET":
            return 200, openapi()
        if path == "/api/tasks" and method == "GET":
            return self.list_tasks(query)
        if path == "/api/stats" and method == "GET":
            return 200, {"by_status": self.broker.get_queue_stats(), "queue": self._queue()}
        if path == "/api/workers" and method == "GET":
            status = self.broker.master_status()
            return 200, {
                "master_pid": status.get("pid"),
                "state": status.get("state"),
                "workers": status.get("workers", []),
            }
        if path == "/api/schedules" and method == "GET":
            if self.schedules is None:
                return 404, {"error": "the scheduler is not enabled"}
            return 200, {"schedules": self.schedules()}
        m = _TASK.match(path)
        if m is None:
            return 404, {"error": f"no such endpoint: {method} {path}"}
        task_id, action = m["id"], m["action"]
        if action is None:
            if method != "GET":
                return 405, {"error": f"{method} is not allowed on {path}"}
            rec = self.broker.get_task(task_id)
            if rec is None:
                return 404, {"error": f"task {task_id!r} is unknown"}
            return 200, task_detail(rec)
        if method != "POST":
            return 405, {"error": f"{action[1:]} takes POST"}
        denied = self._check_token(authorization)
        if denied:
            return denied
        if action == "/cancel":
            outcome = self.broker.cancel(task_id)
            code = {"unknown": 404, "finished": 409}.get(outcome, 200)
            return code, {"task_id": task_id, "outcome": outcome}
        if self.broker.retry_task(task_id):
            return 200, {"task_id": task_id, "outcome": "queued"}
        known = self.broker.get_task(task_id) is not None
        return (409 if known else 404), {
            "task_id": task_id,
            "outcome": "not retryable" if known else "unknown",
        }

    def _check_token(self, authorization: str | None) -> Response | None:
        if not self.token:
            return 403, {"error": "write calls are disabled: start the master with --api-token"}
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.token):
            return 401, {"error": "a valid 'Authorization: Bearer <token>' header is required"}
        return None

    def list_tasks(self, query: dict[str, list[str]]) -> Response:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        status = one("status")
        if status is not None and status not in _STATUSES:
            return 400, {"error": f"status: expected one of {', '.join(_STATUSES)}, got {status!r}"}
        try:
            limit = int(one("limit") or 100)
            since = float(s) if (s := one("since")) is not None else None
        except ValueError:
            return 400, {"error": "limit must be an integer and since epoch seconds"}
        if not 1 <= limit <= 1000:
            return 400, {"error": f"limit: expected 1 to 1000, got {limit}"}
        rows = self.broker.list_tasks(status, one("type"), since, limit)
        return 200, {"tasks": [task_summary(r) for r in rows]}

    def _queue(self) -> dict[str, Any]:
        s = self.broker.stats()
        return {
            "ready": s["queued"],
            "scheduled": s["scheduled"],
            "retrying": s["retrying"],
            "running": s["running"],
            "dispatching": s["dispatching"],
            "by_priority": {str(k): v for k, v in s["by_priority"].items()},
        }
