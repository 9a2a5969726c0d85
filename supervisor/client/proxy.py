"""The typed proxy of a broker served over the embedded broker's manager connection.

Its methods are the contract's (:class:`supervisor.broker.base.Broker`) and nothing else: the
only place where a broker method is named in a string is here, on its way to the wire.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from multiprocess import AuthenticationError

from supervisor.broker.base import Broker, Queues, Report
from supervisor.broker.embedded.server import BROKER_IDENT
from supervisor.broker.embedded.wire import FastClient
from supervisor.client.discovery import format_address, locate
from supervisor.errors import BrokerError


class BrokerClient(Broker):
    """A typed proxy of a broker served by the embedded broker's manager: every method of the
    contract (:data:`~supervisor.broker.base.CONTRACT_METHODS`), one round trip each.

    Safe to share between threads (one connection per thread) and across ``fork`` (the child
    opens its own connection). ``timeout_s`` bounds each answer; past it the call raises
    BrokerError and the connection is dropped.
    """

    def __init__(self, address: Any, authkey: bytes, *, timeout_s: float | None = None) -> None:
        self.address = address
        self._authkey = authkey
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._pid = os.getpid()

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        authkey: str | bytes | None = None,
        run_dir: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> BrokerClient:
        addr, key = locate(address, authkey, run_dir)
        return cls(addr, key, timeout_s=timeout_s)

    def _connection(self) -> Any:
        if self._pid != os.getpid():  # forked: never touch the parent's sockets
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            where = format_address(self.address)
            try:
                conn = FastClient(self.address, authkey=self._authkey)
                conn.send((None, "accept_connection", ("client",), {}))
                kind, _ = conn.recv()
            except AuthenticationError:
                raise BrokerError(f"the broker at {where} refused the auth key") from None
            except (OSError, EOFError) as exc:
                raise BrokerError(f"no broker answers at {where}: {exc}") from None
            if kind != "#RETURN":
                raise BrokerError(f"the broker at {where} did not accept the connection")
            self._local.conn = conn
        return conn

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        conn = self._connection()
        try:
            conn.send((BROKER_IDENT, method, args, kwargs))
            if self.timeout_s is not None and not conn.poll(self.timeout_s):
                raise TimeoutError(f"no answer within {self.timeout_s:g} s")
            kind, result = conn.recv()
        except (OSError, EOFError, TimeoutError) as exc:
            self.close()
            raise BrokerError(f"broker call {method} failed: {exc or type(exc).__name__}") from None
        if kind == "#RETURN":
            return result
        if kind == "#ERROR":
            raise result
        raise BrokerError(f"broker call {method} failed in the broker:\n{result}")

    # -- the contract, one round trip each (see supervisor.broker.base for each one's promise) --
    def configure(
        self,
        task_types: dict[str, Any] | None,
        *,
        default_options: Any = None,
        max_payload_bytes: int | None = None,
        finished_records: int | None = None,
    ) -> None:
        self._call(
            "configure",
            task_types,
            default_options=default_options,
            max_payload_bytes=max_payload_bytes,
            finished_records=finished_records,
        )

    def push(self, message: dict[str, Any]) -> str:
        return str(self._call("push", message))

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        return list(self._call("push_many", messages))

    def pop(
        self, consumer: str, wait_s: float | None = 0.0, queues: Queues = None
    ) -> dict[str, Any] | None:
        if queues is None:  # the call an older broker process understands too
            return self._call("pop", consumer, wait_s)
        return self._call("pop", consumer, wait_s, list(queues))

    def report(self, consumer: str, report: Report) -> None:
        self._call("report", consumer, report)

    def exchange(
        self, consumer: str, report: Report | None, wait_s: float | None, queues: Queues = None
    ) -> dict[str, Any] | None:
        if queues is None:
            return self._call("exchange", consumer, report, wait_s)
        return self._call("exchange", consumer, report, wait_s, list(queues))

    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        return self._call(
            "release_consumer", consumer, reason, error=error, exit_status=exit_status
        )

    def set_dispatching(self, on: bool) -> None:
        self._call("set_dispatching", on)

    def queue_size(self) -> int:
        return int(self._call("queue_size"))

    def maintain(self) -> dict[str, int]:
        return dict(self._call("maintain"))

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        return self._call("get_task", task_id)

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return list(self._call("list_tasks", status, task_type, since, limit))

    def get_queue_stats(self) -> dict[str, int]:
        return dict(self._call("get_queue_stats"))

    def cancel(self, task_id: str) -> str:
        return str(self._call("cancel", task_id))

    def pending_cancels(self) -> list[tuple[str, str, float]]:
        return list(self._call("pending_cancels"))

    def retry_task(self, task_id: str) -> bool:
        return bool(self._call("retry_task", task_id))

    def purge(self, status: str, older_than_s: float) -> int:
        return int(self._call("purge", status, older_than_s))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("stats"))

    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._call("set_public", key, value, ttl)

    def get_public(self, key: str) -> bytes | None:
        return self._call("get_public", key)

    def delete_public(self, key: str) -> bool:
        return bool(self._call("delete_public", key))

    def cleanup(self) -> int:
        return int(self._call("cleanup"))

    def get_store_size(self) -> int:
        return int(self._call("get_store_size"))

    def list_keys(self) -> list[str]:
        return list(self._call("list_keys"))

    def clear_store(self) -> None:
        self._call("clear_store")

    def publish_status(self, status: dict[str, Any]) -> None:
        self._call("publish_status", status)

    def get_status(self) -> dict[str, Any]:
        return dict(self._call("get_status"))

    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        self._call("publish_scheduler_status", doc)

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        doc, age = self._call("scheduler_status")
        return doc, age

    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        self._call("publish_component_status", name, doc)

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        return dict(self._call("component_statuses"))

    def ping(self) -> str:
        return str(self._call("ping"))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except OSError:
                pass
