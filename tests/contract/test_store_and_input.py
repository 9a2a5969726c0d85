"""The public store with its TTL, and bad input, the same for every broker."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.broker.base import Broker
from supervisor.errors import StoreError, TaskError, UnknownTaskType
from supervisor.registry import TaskOptions
from tests.contract.conftest import MakeBroker
from tests.contract.test_queue import W1, msg
from tests.helpers import wait_until
from tests.unit.conftest import FakeClock

pytestmark = pytest.mark.timeout(30)


def test_the_store_keeps_values_until_deleted(broker: Broker) -> None:
    broker.set_public("session_token", b"token123")
    broker.set_public("b", b"2")
    assert broker.get_public("session_token") == b"token123"
    assert broker.list_keys() == ["b", "session_token"] and broker.get_store_size() == 2
    assert broker.delete_public("b") is True and broker.delete_public("b") is False
    assert broker.get_public("b") is None
    broker.clear_store()
    assert broker.list_keys() == [] and broker.get_store_size() == 0


def test_an_expired_key_is_never_returned(broker: Broker, clock: FakeClock) -> None:
    broker.set_public("short", b"x", ttl=0.2)
    broker.set_public("long", b"y", ttl=3600)
    assert broker.get_public("short") == b"x"
    clock.advance(0.3)  # the embedded store's clock; Redis expires the key on its own
    wait_until(lambda: broker.get_public("short") is None, 5, what="the key to expire")
    assert broker.list_keys() == ["long"] and broker.get_store_size() == 1
    broker.cleanup()
    assert broker.get_public("long") == b"y"


def test_setting_a_key_again_replaces_its_ttl(broker: Broker, clock: FakeClock) -> None:
    broker.set_public("k", b"1", ttl=0.2)
    broker.set_public("k", b"2")
    clock.advance(1)
    assert broker.get_public("k") == b"2"


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "10", True])
def test_a_bad_ttl_is_refused(broker: Broker, ttl: Any) -> None:
    with pytest.raises(StoreError, match="ttl"):
        broker.set_public("k", b"v", ttl=ttl)
    assert broker.get_public("k") is None


@pytest.mark.parametrize("key", ["", None, 7, "x" * 2000])
def test_a_bad_key_is_refused(broker: Broker, key: Any) -> None:
    with pytest.raises(StoreError, match="key"):
        broker.set_public(key, b"v")


def test_an_unknown_task_type_is_refused_naming_the_known_ones(make: MakeBroker) -> None:
    broker = make(task_types={"resize": TaskOptions(), "report": TaskOptions()})
    with pytest.raises(UnknownTaskType, match="'nope' is not registered; known: report, resize"):
        broker.push(msg("nope"))
    assert broker.stats()["queued"] == 0


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("not a dict", "must be a dict"),
        ({"params": b""}, "'type' must be a non-empty string"),
        ({"type": "t", "params": {"a": 1}}, "pickled"),
        ({"type": "t", "params": b"", "priority": 11}, "priority"),
        ({"type": "t", "params": b"", "priority": "high"}, "priority"),
        ({"type": "t", "params": b"", "task_id": 7}, "task_id"),
        ({"type": "t", "params": b"", "task_id": ""}, "task_id"),
        ({"type": "t", "params": b"", "eta": "tomorrow"}, "eta"),
        ({"type": "t", "params": b"", "delay": -1}, "delay"),
        ({"type": "t", "params": b"", "delay": 1e12}, "10 years"),
    ],
)
def test_bad_messages_are_refused_and_change_nothing(
    broker: Broker, message: Any, match: str
) -> None:
    with pytest.raises(TaskError, match=match):
        broker.push(message)
    assert broker.get_queue_stats() == {} and broker.queue_size() == 0


def test_oversized_params_are_refused(make: MakeBroker) -> None:
    broker = make(max_payload_bytes=100)
    with pytest.raises(TaskError, match="limit is 100"):
        broker.push(msg(params=b"x" * 101))
    broker.push(msg(params=b"x" * 100))


def test_a_live_task_id_cannot_be_pushed_twice(broker: Broker) -> None:
    broker.push(msg(task_id="same"))
    with pytest.raises(TaskError, match="already queued"):
        broker.push(msg(task_id="same"))
    with pytest.raises(TaskError):
        broker.push_many([msg(task_id="other"), msg(task_id="same")])
    assert broker.get_task("other") is None  # all or none
    assert broker.pop(W1)["task_id"] == "same" and broker.pop("worker:2:1") is None


def test_component_statuses_are_kept_by_name_with_their_age(
    broker: Broker, clock: FakeClock
) -> None:
    assert broker.component_statuses() == {}
    broker.publish_component_status("ingest:n1:jobs", {"kind": "ingest", "node": "n1", "n": 1})
    clock.advance(2.0)
    broker.publish_component_status("ingest:n2:jobs", {"kind": "ingest", "node": "n2", "n": 5})
    broker.publish_component_status("ingest:n1:jobs", {"kind": "ingest", "node": "n1", "n": 2})
    clock.advance(1.0)
    docs = broker.component_statuses()
    assert set(docs) == {"ingest:n1:jobs", "ingest:n2:jobs"}
    assert docs["ingest:n1:jobs"]["n"] == 2  # replaced whole
    assert docs["ingest:n1:jobs"]["report_age_s"] == pytest.approx(1.0, abs=0.01)
    assert docs["ingest:n2:jobs"]["report_age_s"] == pytest.approx(1.0, abs=0.01)
    assert "ingest:n1:jobs" not in broker.get_status().get("nodes", {})


@pytest.mark.parametrize(("name", "doc"), [("", {}), (3, {}), ("x" * 201, {}), ("c", [1])])
def test_a_bad_component_status_is_refused(broker: Broker, name: Any, doc: Any) -> None:
    with pytest.raises(TaskError):
        broker.publish_component_status(name, doc)
    assert broker.component_statuses() == {}
