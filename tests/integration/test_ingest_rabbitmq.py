"""The ingest loop on a real RabbitMQ, into a real broker (in memory, or a private Redis):
malformed messages dead-lettered with the reason, RabbitMQ down at start and mid-run (through a
proxy we stop and start), our broker down mid-run, a stop with a batch held. A fresh queue per
test, deleted at the end; every wait a deadline poll."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.ingest import parse_ingest_url
from supervisor.ingest.consumer import Ingestor
from supervisor.queuemanager.amqpwire import dead_letter_queue, encode, queue_arguments
from tests.helpers import wait_until
from tests.qm_support import RABBITMQ_URL, closed_port, require_rabbitmq
from tests.redisserver import RedisServer, private_redis_server
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


class Rabbit:
    """A fresh queue (declared as the QueueManager does), a producer, and the cleanup."""

    def __init__(self) -> None:
        import pika

        self.pika = pika
        self.queue = f"ingest-test-{uuid.uuid4().hex[:10]}"
        self.conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        self.ch = self.conn.channel()
        self.ch.queue_declare(dead_letter_queue(self.queue), durable=True)
        self.ch.queue_declare(self.queue, durable=True, arguments=queue_arguments(self.queue))
        self.ch.confirm_delivery()

    def publish(self, task_id: str, data: dict[str, Any] | None = None, priority: int = 5) -> None:
        body, props = encode(task_id, data or {}, priority)
        self.ch.basic_publish("", self.queue, body, props)

    def publish_raw(self, body: bytes, **props: Any) -> None:
        self.ch.basic_publish("", self.queue, body, self.pika.BasicProperties(**props))

    def count(self, queue: str | None = None) -> int:
        ok = self.ch.queue_declare(queue or self.queue, passive=True)
        return int(ok.method.message_count)

    def dead_letters(self) -> list[tuple[Any, bytes]]:
        out = []
        while True:
            method, props, body = self.ch.basic_get(dead_letter_queue(self.queue), auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def close(self) -> None:
        self.ch.queue_delete(self.queue)
        self.ch.queue_delete(dead_letter_queue(self.queue))
        self.conn.close()


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    require_rabbitmq()
    r = Rabbit()
    yield r
    r.close()


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._id = logger.add(
            lambda m: self.lines.append(str(m)),
            level="DEBUG",
            format="{level} {message}",
            filter=lambda r: r["extra"].get("component") == "ingest",
        )

    def text(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        logger.remove(self._id)


@pytest.fixture
def logs() -> Iterator[Logs]:
    cap = Logs()
    yield cap
    cap.close()


class Running:
    """An Ingestor in a thread (the child process's loop, without the process)."""

    def __init__(self, url: str, broker: Any, **kw: Any) -> None:
        self.stop = threading.Event()
        kw.setdefault("reconnect_base_s", 0.05)
        kw.setdefault("reconnect_cap_s", 0.3)
        kw.setdefault("broker_retry_cap_s", 0.3)
        self.ingestor = Ingestor(
            spec=parse_ingest_url(url), broker=broker, node="n1", should_stop=self.stop.is_set, **kw
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.ingestor.run()
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def counts(self) -> tuple[int, int, int]:
        s = self.ingestor.stats
        return (s.ingested, s.duplicates, s.rejected)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the ingest loop did not stop within 15 s"
        assert self.error is None, repr(self.error)


def _url(queue: str, port: int = 5672) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/{queue}"


def test_messages_become_tasks_and_malformed_ones_are_dead_lettered_with_the_reason(
    rabbit: Rabbit, logs: Logs
) -> None:
    broker = MemoryBroker()
    rabbit.publish("t1", {"n": 1}, 3)
    rabbit.publish_raw(b"not json", message_id="m-junk", headers={"trace": "x"})
    rabbit.publish_raw(json.dumps({"data": {}}).encode())
    rabbit.publish_raw(json.dumps({"task_id": "t9", "priority": 11}).encode())
    rabbit.publish("t2", {"n": 2}, 8)
    run = Running(_url(rabbit.queue), broker)
    try:
        wait_until(lambda: run.counts() == (2, 0, 3), 15, what="2 tasks and 3 dead letters")
        wait_until(lambda: rabbit.count() == 0, 10, what="every message acked")
    finally:
        run.close()
    rec = broker.get_task("t2")
    assert rec is not None and rec["type"] == rabbit.queue and rec["priority"] == 8
    assert broker.get_queue_stats() == {"queued": 2}
    dead = rabbit.dead_letters()
    reasons = sorted(p.headers["x-ingest-reason"] for p, _ in dead)
    assert len(reasons) == 3
    assert reasons[0].startswith("body is not JSON") and reasons[1].startswith("no task id")
    assert reasons[2] == "priority 11 is not from 0 to 10"
    junk = next(p for p, b in dead if b == b"not json")
    assert junk.message_id == "m-junk" and junk.headers["trace"] == "x"
    assert junk.headers["x-ingest-queue"] == rabbit.queue
    assert "dead-lettered to" in logs.text() and "'m-junk'" in logs.text()
    docs = broker.component_statuses()
    doc = docs[f"ingest:n1:{rabbit.queue}"]
    assert (doc["ingested"], doc["rejected"], doc["connected"]) == (2, 3, False)  # its last


def test_rabbitmq_down_at_start_is_retried_with_backoff_then_consumed(
    rabbit: Rabbit, logs: Logs
) -> None:
    broker = MemoryBroker()
    proxy = TcpProxy(("127.0.0.1", 5672))  # not started yet: nothing listens on its port
    for i in range(20):
        rabbit.publish(f"s{i}")
    run = Running(_url(rabbit.queue, proxy.port), broker)
    try:
        wait_until(
            lambda: logs.text().count("cannot consume queue") >= 2, 10, what="failed attempts"
        )
        name = f"ingest:n1:{rabbit.queue}"
        doc = wait_until(lambda: broker.component_statuses().get(name), 5, what="a status")
        assert doc["connected"] is False and doc["ingested"] == 0
        assert "trying again in" in logs.text() and "(attempt 2)" in logs.text()
        assert broker.get_queue_stats() == {}
        proxy.start()
        wait_until(lambda: run.counts()[0] == 20, 15, what="the 20 messages after it came up")
        wait_until(lambda: broker.component_statuses()[name]["connected"], 5, what="connected")
        assert "after" in logs.text() and "failure(s)" in logs.text()
    finally:
        run.close()
        proxy.stop()
    assert broker.get_queue_stats() == {"queued": 20}


def test_a_wrong_password_is_a_clear_error_without_the_password(rabbit: Rabbit, logs: Logs) -> None:
    run = Running(f"amqp://guest:wr0ng-pw@127.0.0.1:5672/{rabbit.queue}", MemoryBroker())
    try:
        wait_until(lambda: "check the user and password" in logs.text(), 15, what="the error")
    finally:
        run.close()
    assert "wr0ng-pw" not in logs.text() and "guest:***@" in logs.text()


def test_rabbitmq_lost_mid_stream_loses_nothing_and_makes_no_second_task(
    rabbit: Rabbit, logs: Logs
) -> None:
    broker = MemoryBroker()
    proxy = TcpProxy(("127.0.0.1", 5672))
    proxy.start()
    run = Running(_url(rabbit.queue, proxy.port), broker, prefetch=50)
    ids = [f"m{i}" for i in range(600)]
    try:
        for i, task_id in enumerate(ids):
            rabbit.publish(task_id)
            if i in (150, 350):  # twice, while messages flow
                lost = logs.text().count("broke off")
                wait_until(lambda: run.counts()[0] > 0, 10, what="some ingested")
                proxy.stop()
                wait_until(lambda n=lost: logs.text().count("broke off") > n, 10, what="the loss")
                proxy.start()
                wait_until(
                    lambda n=lost: logs.text().count("into the broker") > n + 1,
                    10,
                    what="consuming again",
                )
        wait_until(
            lambda: run.counts()[0] == len(ids) and rabbit.count() == 0,
            30,
            what=lambda: (
                f"every message a task: (ingested, duplicates, rejected) {run.counts()}, "
                f"{rabbit.count()} ready on RabbitMQ, broker {broker.get_queue_stats()}"
            ),
        )
    finally:
        run.close()
        proxy.stop()
    assert broker.get_queue_stats() == {"queued": len(ids)}  # each id once, none lost
    assert all(broker.get_task(t) is not None for t in ids)
    assert "unacked messages go back to the queue" in logs.text()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with private_redis_server() as server:
        yield server


def test_our_broker_down_mid_run_holds_the_batch_unacked_then_pushes_it(
    rabbit: Rabbit, logs: Logs, redis: RedisServer
) -> None:
    from supervisor.broker.redis import RedisBroker

    broker = RedisBroker(url=redis.url, prefix=f"i{uuid.uuid4().hex[:8]}", node="n1")
    probe = RedisBroker(url=redis.url, prefix=broker._keys.prefix, node="probe")
    run = Running(_url(rabbit.queue), broker)
    try:
        rabbit.publish("before")
        wait_until(lambda: run.counts()[0] == 1, 10, what="the first task")
        redis.kill()  # kill -9: the AOF (fsync always) keeps what it accepted
        for i in range(30):
            rabbit.publish(f"during{i}")
        wait_until(lambda: "did not accept" in logs.text(), 15, what="the held batch")
        assert run.counts()[0] == 1 and rabbit.count() == 0  # held by us, unacked
        ing = run.ingestor
        wait_until(lambda: ing.stats.lag_s(ing.clock()) >= 1.0, 10, what="the lag to grow")
        redis.start()
        wait_until(lambda: run.counts()[0] == 31, 30, what="the held batch pushed")
        wait_until(lambda: rabbit.count() == 0, 10, what="acked")
    finally:
        run.close()
    stats = probe.get_queue_stats()
    assert stats == {"queued": 31}, stats
    assert probe.get_task("during29") is not None
    broker.close()
    probe.close()


def test_a_stop_while_our_broker_is_down_gives_the_batch_back_to_rabbitmq(
    rabbit: Rabbit, logs: Logs
) -> None:
    class Down(MemoryBroker):
        def push_many(self, messages: list[dict[str, Any]]) -> list[str]:
            from supervisor.errors import BrokerError

            raise BrokerError("no broker answers at /run/broker.sock")

    for i in range(5):
        rabbit.publish(f"h{i}")
    run = Running(_url(rabbit.queue), Down())
    wait_until(lambda: "did not accept 5 message(s)" in logs.text(), 10, what="the held batch")
    run.close()  # SIGTERM in the child: stop, unacked messages go back
    wait_until(lambda: rabbit.count() == 5, 10, what="the 5 messages back in the queue")
    assert "stopped consuming" in logs.text()


def test_a_deleted_queue_is_declared_again_and_consumed(rabbit: Rabbit, logs: Logs) -> None:
    broker = MemoryBroker()
    run = Running(_url(rabbit.queue), broker)
    try:
        rabbit.publish("x1")
        wait_until(lambda: run.counts()[0] == 1, 10, what="the first task")
        rabbit.ch.queue_delete(rabbit.queue)  # someone deletes it under us
        wait_until(lambda: "cancelled the consumer" in logs.text(), 10, what="the cancel")
        wait_until(
            lambda: logs.text().count("consuming queue") >= 3, 10, what="consuming again"
        )  # started, broke off, started again
        rabbit.publish("x2")
        wait_until(lambda: run.counts()[0] == 2, 10, what="the task after the redeclare")
    finally:
        run.close()
    assert broker.get_queue_stats() == {"queued": 2}


def test_nothing_listening_is_a_clear_error(logs: Logs) -> None:
    require_rabbitmq()
    run = Running(f"amqp://guest:s3cret@127.0.0.1:{closed_port()}/q-nothing", MemoryBroker())
    try:
        wait_until(lambda: "cannot consume queue 'q-nothing'" in logs.text(), 10, what="error")
    finally:
        run.close()
    assert "127.0.0.1" in logs.text() and "s3cret" not in logs.text()
