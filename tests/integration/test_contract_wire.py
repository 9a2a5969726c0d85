"""The broker's wire is its contract: the typed proxy has every contract method and nothing is
served that is not in the contract; no broker method is named in a string outside the proxy."""

from __future__ import annotations

import inspect
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import supervisor
from supervisor.broker.base import CONTRACT_METHODS, Broker
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.server import start_broker_process
from supervisor.broker.redis import RedisBroker
from supervisor.client.proxy import BrokerClient
from supervisor.errors import BrokerError

pytestmark = pytest.mark.timeout(60)
PACKAGE = Path(supervisor.__file__).parent


def test_the_contract_is_what_callers_use() -> None:
    assert {"push", "exchange", "cancel", "list_tasks", "publish_status", "ping"} <= set(
        CONTRACT_METHODS
    )
    for impl in (BrokerClient, MemoryBroker, RedisBroker):
        assert issubclass(impl, Broker)
        assert not inspect.isabstract(impl), f"{impl.__name__} misses part of the contract"


def test_no_broker_method_is_named_in_a_string_outside_the_proxy() -> None:
    call = re.compile(r"""\.(?:_)?call\(\s*["'](\w+)["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "proxy.py" and path.parent.name == "client":
            continue
        for name in call.findall(path.read_text()):
            if name in CONTRACT_METHODS:
                offenders.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert offenders == []


@pytest.fixture
def served() -> Iterator[BrokerClient]:
    sock_dir = tempfile.mkdtemp(prefix="wire-")
    authkey = secrets.token_bytes(16)
    pid, address = start_broker_process(
        address=os.path.join(sock_dir, "b.sock"),
        authkey=authkey,
        make_broker=lambda: MemoryBroker(task_types=None),
    )
    client = BrokerClient(address, authkey, timeout_s=10)
    try:
        yield client
    finally:
        client.close()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_the_server_answers_the_contract_and_nothing_else(served: BrokerClient) -> None:
    assert served.ping() == "pong"
    tid = served.push({"type": "t", "params": b""})
    assert served.get_task(tid)["status"] == "queued"
    for plumbing in ("close", "held", "drain_events", "configure_dispatcher", "__init__"):
        with pytest.raises((BrokerError, AttributeError), match=r"not in exposed|failed"):
            served._call(plumbing)
    assert served.get_task(tid)["status"] == "queued"  # the broker is still serving
