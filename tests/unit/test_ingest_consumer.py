"""The ingest loop's batch logic on a fake channel and a real in-memory broker: what is pushed,
what is a duplicate, what is dead-lettered, when the batch is acked, what is held while the
broker is down, and the status document it publishes. No RabbitMQ, no process."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pika
import pytest

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.errors import BrokerError
from supervisor.ingest import parse_ingest_url
from supervisor.ingest.consumer import Ingestor, Stopping
from supervisor.queuemanager.amqpwire import encode
from tests.helpers import BrokerSpy

pytestmark = pytest.mark.timeout(30)
QUEUE = "jobs"
T0 = 1_700_000_000.0


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.published: list[tuple[str, str, bytes, Any]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))

    def basic_publish(self, exchange: str, key: str, body: bytes, props: Any, **kw: Any) -> None:
        self.published.append((exchange, key, body, props))


class FakeConnection:
    def __init__(self, on_sleep: Any = None) -> None:
        self.slept: list[float] = []
        self._on_sleep = on_sleep

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        if self._on_sleep is not None:
            self._on_sleep(s)


class Clock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, broker: Any = None, stop: Any = None, **kw: Any) -> None:
        self.memory = MemoryBroker()
        self.broker = broker if broker is not None else BrokerSpy(self.memory)
        self.clock = Clock()
        self.mono = Clock(100.0)
        self.stop = False
        self.ch = FakeChannel()
        self.conn = FakeConnection(on_sleep=self.advance)
        self.tag = 0
        self.ingestor = Ingestor(
            spec=parse_ingest_url(f"amqp://u:s3cret@127.0.0.1:1/{QUEUE}"),
            broker=self.broker,
            node="n1",
            should_stop=stop or (lambda: self.stop),
            clock=self.clock,
            monotonic=self.mono,
            **kw,
        )

    def advance(self, s: float) -> None:
        self.mono.now += s
        self.clock.now += s

    def delivery(
        self, body: bytes, props: Any = None, *, redelivered: bool = False
    ) -> tuple[Any, Any, bytes, float]:
        self.tag += 1
        method = SimpleNamespace(delivery_tag=self.tag, redelivered=redelivered)
        return (method, props or pika.BasicProperties(), body, self.clock())

    def message(self, task_id: str, priority: int = 5, **kw: Any) -> tuple[Any, Any, bytes, float]:
        body, props = encode(task_id, {"id": task_id}, priority)
        return self.delivery(body, props, **kw)

    def ingest(self, *deliveries: tuple[Any, Any, bytes, float]) -> None:
        self.ingestor.ingest_batch(self.conn, self.ch, list(deliveries))

    def counts(self) -> tuple[int, int, int]:
        s = self.ingestor.stats
        return (s.ingested, s.duplicates, s.rejected)


def test_new_messages_are_pushed_in_one_call_then_acked_as_one() -> None:
    rig = Rig()
    rig.ingest(rig.message("a", 1), rig.message("b", 9), rig.message("c", 5))
    assert rig.broker.calls == ["push_many"]  # never delivered before: no look-up
    assert rig.ch.acks == [(3, True)]  # after the push returned: the whole batch
    assert rig.counts() == (3, 0, 0)
    assert [rig.memory.pop(f"w{i}")["task_id"] for i in range(3)] == ["b", "c", "a"]
    rec = rig.memory.get_task("b")
    assert rec is not None and rec["type"] == QUEUE and rec["priority"] == 9


def test_a_redelivered_message_whose_task_exists_is_acked_not_pushed() -> None:
    rig = Rig()
    rig.ingest(rig.message("a"))
    rig.broker.calls.clear()
    rig.ingest(rig.message("a", redelivered=True))  # we died between push and ack
    assert rig.broker.calls == ["get_task"]
    assert rig.ch.acks[-1] == (2, True)
    assert rig.counts() == (1, 1, 0)
    assert rig.memory.get_queue_stats() == {"queued": 1}


def test_a_push_whose_ack_was_lost_counts_once_then_its_redelivery_as_a_duplicate() -> None:
    rig = Rig()

    def lost(tag: int, multiple: bool = False) -> None:
        raise pika.exceptions.StreamLostError("Transport indicated EOF")

    rig.ch.basic_ack = lost  # type: ignore[method-assign]
    with pytest.raises(pika.exceptions.StreamLostError):
        rig.ingest(rig.message("a"), rig.message("b"))
    assert rig.counts() == (2, 0, 0)  # our broker has both: they were ingested
    rig.ch = FakeChannel()  # the new connection: RabbitMQ delivers both again
    rig.ingest(rig.message("a", redelivered=True), rig.message("b", redelivered=True))
    assert rig.counts() == (2, 2, 0)  # each task counted once as ingested
    assert rig.memory.get_queue_stats() == {"queued": 2}


def test_a_redelivery_of_a_finished_task_does_not_run_it_again() -> None:
    rig = Rig()
    rig.ingest(rig.message("a"))
    assert rig.memory.pop("w")["task_id"] == "a"
    rig.memory.report("w", ("a", "succeeded", None))
    rig.ingest(rig.message("a", redelivered=True))
    assert rig.memory.get_queue_stats() == {"succeeded": 1}  # not queued again
    assert rig.counts() == (1, 1, 0)


def test_dead_letters_count_once_acked_and_a_held_batch_shows_until_then() -> None:
    rig = Rig()
    seen_lag: list[float] = []

    def lost(*args: Any, **kw: Any) -> None:
        seen_lag.append(rig.ingestor.stats.lag_s(rig.clock.now + 5))  # while publishing
        if len(seen_lag) == 2:
            raise pika.exceptions.StreamLostError("Transport indicated EOF")

    rig.ch.basic_publish = lost  # type: ignore[method-assign]
    junk = [rig.delivery(b"not json"), rig.delivery(b"[]")]
    with pytest.raises(pika.exceptions.StreamLostError):
        rig.ingest(rig.message("a"), *junk)
    assert rig.counts() == (1, 0, 0)  # the task is in; no dead letter acked yet
    assert seen_lag[0] >= 5  # the batch was still held (unacked) while dead-lettering
    rig.ch = FakeChannel()  # redelivered on the new connection
    rig.ingest(rig.message("a", redelivered=True), rig.delivery(b"not json"), rig.delivery(b"[]"))
    assert rig.counts() == (1, 1, 2)  # two messages refused, counted once each
    assert rig.ingestor.stats.held_since is None


def test_a_producer_duplicate_of_a_live_task_is_counted_once() -> None:
    rig = Rig()
    rig.ingest(rig.message("a"))
    rig.ingest(rig.message("b"), rig.message("a"), rig.message("b"))  # not redelivered
    assert rig.counts() == (2, 2, 0)
    assert rig.ch.acks[-1] == (4, True)
    assert rig.memory.get_queue_stats() == {"queued": 2}


def test_malformed_messages_are_dead_lettered_with_the_reason_and_acked() -> None:
    rig = Rig()
    headers = {"trace": "t1"}
    rig.ingest(
        rig.message("ok"),
        rig.delivery(b"not json", pika.BasicProperties(message_id="m2", headers=headers)),
        rig.delivery(json.dumps({"task_id": "p", "priority": 42}).encode()),
    )
    assert rig.counts() == (1, 0, 2)
    assert rig.ch.acks == [(3, True)]  # after the dead letters were confirmed
    (ex1, key1, body1, props1), (_, key2, _, props2) = rig.ch.published
    assert (ex1, key1, key2) == ("", "jobs.dead", "jobs.dead")
    assert body1 == b"not json" and props1.message_id == "m2" and props1.delivery_mode == 2
    assert props1.headers["trace"] == "t1"
    assert "not JSON" in props1.headers["x-ingest-reason"]
    assert props1.headers["x-ingest-queue"] == QUEUE
    assert props2.headers["x-ingest-reason"] == "priority 42 is not from 0 to 10"
    assert rig.memory.get_queue_stats() == {"queued": 1}


def test_a_task_the_broker_refuses_is_dead_lettered_and_the_others_pushed() -> None:
    rig = Rig(max_payload_bytes=10_000)
    rig.memory.configure(None, max_payload_bytes=200)  # the broker's limit is lower
    big_body, big_props = encode("big", {"x": "y" * 500}, 1)
    rig.ingest(rig.message("a"), rig.delivery(big_body, big_props), rig.message("b"))
    assert rig.counts() == (2, 0, 1)
    (_, _, body, props) = rig.ch.published[0]
    assert body == big_body and "max_payload_bytes" in props.headers["x-ingest-reason"]
    assert rig.memory.get_queue_stats() == {"queued": 2}


class FlakyBroker:
    """A broker whose push_many fails ``fail`` times (BrokerError), optionally after taking
    the tasks (as a call that timed out after the broker did it)."""

    def __init__(self, memory: MemoryBroker, fail: int, *, took_it: bool = False) -> None:
        self.memory = memory
        self.fail = fail
        self.took_it = took_it
        self.lookups = 0

    def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
        if self.fail:
            self.fail -= 1
            if self.took_it:
                self.memory.push_many(messages)
            raise BrokerError("broker call push_many failed: no answer within 10 s")
        return self.memory.push_many(messages)

    def get_task(self, task_id: str) -> Any:
        self.lookups += 1
        return self.memory.get_task(task_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.memory, name)


def test_while_the_broker_is_down_the_batch_is_held_unacked_then_pushed() -> None:
    memory = MemoryBroker()
    flaky = FlakyBroker(memory, fail=2)
    rig = Rig(broker=flaky)
    rig.memory = memory
    seen_lag: list[float] = []

    def tick(s: float) -> None:
        assert rig.ch.acks == []  # nothing acked while held
        rig.advance(s)
        seen_lag.append(rig.ingestor.stats.lag_s(rig.clock.now))

    rig.conn = FakeConnection(on_sleep=tick)
    body, props = encode("a", {}, 1)
    props.timestamp = int(T0)
    rig.ingest(rig.delivery(body, props))
    assert rig.ch.acks == [(1, True)]
    assert rig.counts() == (1, 0, 0)
    assert sum(rig.conn.slept) == pytest.approx(0.1 + 0.2)  # backoff, heartbeats served
    assert seen_lag == sorted(seen_lag) and seen_lag[-1] > seen_lag[0]  # growing while held
    assert memory.get_queue_stats() == {"queued": 1}


def test_a_push_that_failed_after_the_broker_took_it_is_not_pushed_twice() -> None:
    memory = MemoryBroker()
    flaky = FlakyBroker(memory, fail=1, took_it=True)
    rig = Rig(broker=flaky)
    rig.ingest(rig.message("a"), rig.message("b"))
    assert flaky.lookups == 2  # after a failure every message is looked up
    assert memory.get_queue_stats() == {"queued": 2}
    assert rig.ch.acks == [(2, True)]


def test_a_stop_while_the_batch_is_held_leaves_it_unacked() -> None:
    memory = MemoryBroker()
    rig = Rig(broker=FlakyBroker(memory, fail=100))

    def stop_soon(s: float) -> None:
        rig.stop = True

    rig.conn = FakeConnection(on_sleep=stop_soon)
    with pytest.raises(Stopping):
        rig.ingest(rig.message("a"))
    assert rig.ch.acks == [] and memory.get_queue_stats() == {}  # RabbitMQ requeues it


class BoardBroker:
    """Only the status board (and what the loop calls around it)."""

    def __init__(self, previous: dict[str, Any] | None = None, fail: bool = False) -> None:
        self.docs: list[tuple[str, dict[str, Any]]] = []
        self.previous = previous
        self.fail = fail

    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        if self.fail:
            raise BrokerError("down")
        self.docs.append((name, dict(doc)))

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        return {"ingest:n1:jobs": self.previous} if self.previous else {}


def test_the_status_document_is_published_on_change_and_about_once_a_second() -> None:
    board = BoardBroker(previous={"kind": "ingest", "ingested": 10, "duplicates": 1})
    rig = Rig(broker=board)
    ing = rig.ingestor
    ing._resume()
    ing._set_connected(True)
    ing._publish()  # within the second: nothing new
    assert len(board.docs) == 1
    name, doc = board.docs[0]
    assert name == "ingest:n1:jobs"
    assert doc == {
        "kind": "ingest",
        "node": "n1",
        "queue": QUEUE,
        "url": "amqp://u:***@127.0.0.1:1/jobs",
        "ingested": 10,  # continued from the last document
        "duplicates": 1,
        "rejected": 0,
        "lag_s": 0.0,
        "connected": True,
    }
    ing._set_connected(False)  # a change is published at once
    assert board.docs[-1][1]["connected"] is False and len(board.docs) == 2
    ing._publish(force=True)
    assert len(board.docs) == 3


def test_a_board_that_is_down_does_not_stop_the_ingest() -> None:
    rig = Rig(broker=BoardBroker(fail=True))
    rig.ingestor._set_connected(True)  # logged at debug, tried again later
    assert rig.ingestor.connected is True


def test_errors_are_described_without_the_password() -> None:
    rig = Rig()
    exc = pika.exceptions.AMQPConnectionError("cannot reach amqp://u:s3cret@127.0.0.1:1")
    text = rig.ingestor._describe(exc)
    assert "s3cret" not in text and "***" in text
    refused = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")
    text = rig.ingestor._describe(refused)
    assert "406 PRECONDITION_FAILED" in text and "x-max-priority" in text
    auth = pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED")
    assert "check the user and password" in rig.ingestor._describe(auth)


def test_a_message_nested_too_deep_for_json_is_dead_lettered_not_a_crash() -> None:
    rig = Rig()
    rig.ingest(rig.delivery(b"[" * 200_000), rig.message("ok"))
    assert rig.counts() == (1, 0, 1)  # the child goes on: the queue is not stuck behind it
    (_, key, _, props) = rig.ch.published[0]
    assert key == "jobs.dead" and "RecursionError" in props.headers["x-ingest-reason"]


def test_the_prefetch_comes_from_the_url_unless_given() -> None:
    def make(url: str, **kw: Any) -> Ingestor:
        spec = parse_ingest_url(url)
        return Ingestor(spec=spec, broker=MemoryBroker(), node="n1", should_stop=lambda: True, **kw)

    assert make(f"amqp://h/{QUEUE}").prefetch == 256
    assert make(f"amqp://h/{QUEUE}?prefetch=7").prefetch == 7
    assert make(f"amqp://h/{QUEUE}?prefetch=7", prefetch=3).prefetch == 3
