"""The read/write JSON API: tasks, stats, workers, schedules.

Pure request handling, without HTTP: :meth:`Api.handle` takes a method, a path, the query, the
``Authorization`` header and the body, and returns ``(status, document)``; the HTTP server in the
broker process calls it for every ``/api/`` path. Routes, methods and query parameters follow
``openapi.json`` beside this file, and the answers too (the tests validate every response against
it, and fuzz the API with schemathesis): a method a path does not declare is 405, a query that
violates the description is 400 naming the parameter, a locked database is 503 with
``"retryable": true``.

Write calls (cancel, retry) need ``Authorization: Bearer <api_token>``; with no token configured
they are refused (403): secure unless configured otherwise. Read calls need no token.
"""

from __future__ import annotations

import copy
import functools
import hmac
import json
import pickle
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote

from supervisor.broker import base
from supervisor.errors import BrokerError, SupervisorError
from supervisor.observability.view import BrokerView
from supervisor.web.since import parse_since

Response = tuple[int, Any]
Handler = Callable[[dict[str, str], dict[str, str], str | None], Response]
_STATUSES = base.ACTIVE_STATUSES + base.FINAL_STATUSES
_LIMIT = re.compile(r"[0-9]{1,9}", re.ASCII)
_LIMIT_MIN, _LIMIT_MAX = 1, 1000
# A password in a URL (scheme://user:password@host) never reaches an answer.
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]*@")


@functools.cache
def _spec_text() -> str:
    return resources.files("supervisor.web").joinpath("openapi.json").read_text()


def openapi() -> dict[str, Any]:
    """The static description (a fresh copy)."""
    return dict(json.loads(_spec_text()))


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def public_message(exc: BaseException) -> str:
    """An exception's message as an answer may carry it: no password of a database URL."""
    return _URL_PASSWORD.sub(r"\1***@", str(exc))


def _strict_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _params(blob: Any) -> Any:
    """Task params for JSON: decoded when they are plain data, else a short description."""
    try:
        value = pickle.loads(blob)
        if _strict_json(value):
            return value
    except Exception:
        pass
    size = len(blob) if isinstance(blob, bytes | bytearray) else 0
    return {"_unreadable": f"{size} bytes of pickled params"}


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
    result = rec.get("result")
    doc.update(
        params=_params(rec.get("params", b"")),
        result=result if _strict_json(result) else {"_unreadable": "not strict JSON"},
        traceback=rec.get("traceback"),
        scheduled_at=rec.get("scheduled_at"),
        unique_key=rec.get("unique_key"),
        errors=[
            {k: e.get(k) for k in ("attempt", "reason", "at", "error", "exit_status")}
            for e in rec.get("errors", [])
        ],
    )
    return doc


class BadRequest(SupervisorError):
    """A request that violates the description: answered 400 with this message."""


class Api:
    """The JSON API over a :class:`~supervisor.observability.view.BrokerView`.

    ``schedules`` lists the schedules (None: the scheduler is off, ``/api/schedules`` is 404);
    ``clock`` gives epoch seconds (for ``since=2h``)."""

    def __init__(
        self,
        broker: BrokerView,
        *,
        token: str | None = None,
        schedules: Callable[[], list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.token = token
        self.schedules = schedules
        self.clock = clock
        spec = openapi()
        self._routes: list[tuple[re.Pattern[str], dict[str, tuple[Handler, frozenset[str]]]]] = []
        handlers: dict[tuple[str, str], Handler] = {
            ("/api/openapi.json", "GET"): lambda q, p, a: (200, self.spec()),
            ("/api/tasks", "GET"): lambda q, p, a: self.list_tasks(q),
            ("/api/tasks/{task_id}", "GET"): lambda q, p, a: self._task(p["task_id"]),
            ("/api/tasks/{task_id}/cancel", "POST"): lambda q, p, a: self._cancel(p, a),
            ("/api/tasks/{task_id}/retry", "POST"): lambda q, p, a: self._retry(p, a),
            ("/api/stats", "GET"): lambda q, p, a: self._stats(),
            ("/api/workers", "GET"): lambda q, p, a: self._workers(),
            ("/api/schedules", "GET"): lambda q, p, a: self._schedules(),
        }
        for template, item in spec["paths"].items():
            regex = re.compile(
                "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            )
            methods = {}
            for method, op in item.items():
                names = frozenset(
                    p["name"] for p in op.get("parameters", []) if p.get("in") == "query"
                )
                methods[method.upper()] = (handlers[(template, method.upper())], names)
            self._routes.append((regex, methods))

    # -- routing -----------------------------------------------------------------------------
    def allowed(self, path: str) -> tuple[str, ...] | None:
        """The methods the description declares for ``path`` (None: no such path)."""
        for regex, methods in self._routes:
            if regex.match(path):
                return tuple(sorted(methods))
        return None

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        authorization: str | None = None,
        body: bytes = b"",
    ) -> Response:
        for regex, methods in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            if method not in methods:
                return 405, {
                    "error": f"{method} is not allowed on {path}; allowed: "
                    f"{', '.join(sorted(methods))}"
                }
            handler, names = methods[method]
            path_params = {k: unquote(v) for k, v in m.groupdict().items()}
            try:
                return handler(_query(query, names), path_params, authorization)
            except BrokerError as exc:  # DatabaseBusy, or a broker that did not answer
                return 503, {"error": public_message(exc), "retryable": True}
            except SupervisorError as exc:
                return 400, {"error": public_message(exc)}
        return 404, {"error": f"no such endpoint: {method} {_shown(path, 100)}"}

    def spec(self) -> dict[str, Any]:
        """The description as served: the ``type`` filter lists the known task types."""
        spec = copy.deepcopy(openapi())
        types = self._task_types()
        if types:
            for param in spec["paths"]["/api/tasks"]["get"]["parameters"]:
                if param["name"] == "type":
                    param["schema"]["enum"] = types
        return spec

    def _task_types(self) -> list[str] | None:
        """Registered types and types seen since start (None: any type is accepted)."""
        known = self.broker.known_task_types()
        if not known:
            return None
        counters = self.broker.stats().get("counters") or {}
        return sorted(set(known) | {key[1] for key in counters})

    # -- endpoints ---------------------------------------------------------------------------
    def list_tasks(self, query: dict[str, str]) -> Response:
        status = query.get("status")
        if status is not None and status not in _STATUSES:
            raise BadRequest(
                f"status: expected one of {', '.join(_STATUSES)}, got {_shown(status)}"
            )
        task_type = query.get("type")
        if task_type is not None:
            types = self._task_types()
            if task_type == "" or (types is not None and task_type not in types):
                known = f"; known: {', '.join(types)}" if types else ""
                raise BadRequest(f"type: unknown task type {_shown(task_type)}{known}")
        text = query.get("limit", "100")
        if not _LIMIT.fullmatch(text) or not _LIMIT_MIN <= int(text) <= _LIMIT_MAX:
            raise BadRequest(
                f"limit: expected an integer from {_LIMIT_MIN} to {_LIMIT_MAX}, got {_shown(text)}"
            )
        raw_since = query.get("since")
        since = None if raw_since is None else parse_since(raw_since, now=self.clock())
        rows = self.broker.list_tasks(status, task_type, since, int(text))
        return 200, {"tasks": [task_summary(r) for r in rows]}

    def _task(self, task_id: str) -> Response:
        rec = self.broker.get_task(task_id)
        if rec is None:
            return 404, {"error": f"task {_shown(task_id)} is unknown"}
        return 200, task_detail(rec)

    def _cancel(self, path: dict[str, str], authorization: str | None) -> Response:
        denied = self._check_token(authorization)
        if denied:
            return denied
        task_id = path["task_id"]
        outcome = self.broker.cancel(task_id)
        code = {"unknown": 404, "finished": 409}.get(outcome, 200)
        return code, {"task_id": task_id, "outcome": outcome}

    def _retry(self, path: dict[str, str], authorization: str | None) -> Response:
        denied = self._check_token(authorization)
        if denied:
            return denied
        task_id = path["task_id"]
        if self.broker.retry_task(task_id):
            return 200, {"task_id": task_id, "outcome": "queued"}
        known = self.broker.get_task(task_id) is not None
        return (409 if known else 404), {
            "task_id": task_id,
            "outcome": "not retryable" if known else "unknown",
        }

    def _stats(self) -> Response:
        return 200, {"by_status": self.broker.get_queue_stats(), "queue": self._queue()}

    def _workers(self) -> Response:
        status = self.broker.master_status()
        return 200, {
            "master_pid": status.get("pid"),
            "state": status.get("state"),
            "workers": status.get("workers", []),
        }

    def _schedules(self) -> Response:
        if self.schedules is None:
            return 404, {"error": "the scheduler is not enabled"}
        return 200, {"schedules": self.schedules()}

    def _check_token(self, authorization: str | None) -> Response | None:
        if not self.token:
            return 403, {"error": "write calls are disabled: start the master with --api-token"}
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return 401, {"error": "a valid 'Authorization: Bearer <token>' header is required"}
        return None

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


def _query(query: dict[str, list[str]], names: frozenset[str]) -> dict[str, str]:
    """One value per parameter the operation declares; anything else is a 400."""
    unknown = sorted(set(query) - names)
    if unknown:
        takes = f"it takes: {', '.join(sorted(names))}" if names else "it takes none"
        raise BadRequest(f"unknown query parameter {_shown(unknown[0])}; {takes}")
    out: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1:
            raise BadRequest(f"{name}: given {len(values)} times, expected once")
        out[name] = values[0]
    return out
