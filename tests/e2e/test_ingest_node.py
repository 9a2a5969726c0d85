"""``supervisor run --ingest amqp://…/QUEUE`` as a user runs it: a RabbitMQ queue consumed into
the node's broker (embedded, or Redis), through ``kill -9`` of the master's whole tree mid-stream,
malformed messages, RabbitMQ down at start and mid-run, a bad URL or queue, a graceful stop.

The node's app is this module's ``app``: the e2e app's ``record`` handler registered under each
queue name in ``SV_TEST_INGEST_QUEUES`` (a fresh queue per test, so a fresh task type too).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.queuemanager.amqpwire import dead_letter_queue, encode, queue_arguments
from supervisor.registry import TaskRegistry
from tests.e2e.app import record
from tests.helpers import wait_until
from tests.qm_support import require_rabbitmq
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

app = TaskRegistry()
for _queue in filter(None, os.environ.get("SV_TEST_INGEST_QUEUES", "").split(",")):
    app.register(_queue, record, timeout_s=30, max_retries=20, backoff_base_s=0.05)

APP = ["--app", "tests.e2e.test_ingest_node:app"]
SERVER = "amqp://guest:guest@127.0.0.1:5672/"  # the producer's (and the cleanup's) connection


class Rabbit:
    """A fresh queue on the real RabbitMQ (declared as the QueueManager does) and its cleanup."""

    def __init__(self) -> None:
        import pika

        self.pika = pika
        self.queue = f"ingest-e2e-{uuid.uuid4().hex[:10]}"
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.queue}"
        self._conn = pika.BlockingConnection(pika.URLParameters(SERVER))
        self.ch = self._conn.channel()
        self.ch.queue_declare(dead_letter_queue(self.queue), durable=True)
        self.ch.queue_declare(self.queue, durable=True, arguments=queue_arguments(self.queue))

    def producer(self, task_ids: list[str], path: Path, work_s: float = 0.0) -> threading.Thread:
        """Publish (with confirms, on a connection of its own) in a thread."""

        def run() -> None:
            conn = self.pika.BlockingConnection(self.pika.URLParameters(SERVER))
            ch = conn.channel()
            ch.confirm_delivery()
            for i, task_id in enumerate(task_ids):
                body, props = encode(task_id, {"path": str(path), "work_s": work_s}, i % 11)
                ch.basic_publish("", self.queue, body, props)
            conn.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def publish_raw(self, body: bytes, **props: Any) -> None:
        self.ch.basic_publish("", self.queue, body, self.pika.BasicProperties(**props))

    def count(self, queue: str | None = None) -> int:
        return int(self.ch.queue_declare(queue or self.queue, passive=True).method.message_count)

    def close(self) -> None:
        self.ch.queue_delete(self.queue)
        self.ch.queue_delete(dead_letter_queue(self.queue))
        self._conn.close()


@pytest.fixture
def rabbit(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rabbit]:
    require_rabbitmq()
    r = Rabbit()
    monkeypatch.setenv("SV_TEST_INGEST_QUEUES", r.queue)  # the nodes' app registers it
    yield r
    r.close()


def _kill_tree(m: Any) -> None:
    procs = [psutil.Process(m.proc.pid), *m.descendants()]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    m.wait_exit(10)
    psutil.wait_procs(procs, timeout=10)


def _known(m: Any) -> int:
    return sum(m.queue.broker.get_queue_stats().values())


def _runs(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_kill9_of_the_tree_mid_stream_five_times_every_message_one_task_that_succeeds(
    broker: str, rabbit: Rabbit, start_master: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = [*APP, "--ingest", rabbit.url, "--no-scheduler"]
    if broker == "redis":
        prefix = f"i{uuid.uuid4().hex[:8]}"
        redis = request.getfixturevalue("redis_url")
        args += ["--broker", redis, "--key-prefix", prefix, "--lease", "2"]
    db = f"sqlite:///{tmp_path / 'durable.db'}"
    path = tmp_path / "runs.txt"
    ids = [f"k{i}" for i in range(1200)]
    chunks = [ids[i : i + 200] for i in range(0, len(ids), 200)]
    m = start_master(*args, workers=2, database=db)
    for round_no, chunk in enumerate(chunks[:5]):
        before = _known(m)
        producer = rabbit.producer(chunk, path, work_s=0.005)
        wait_until(
            lambda b=before, node=m: _known(node) >= b + 20,
            30,
            what=f"round {round_no}: the node ingesting this chunk",
        )
        _kill_tree(m)  # mid-stream: the producer is still publishing, the ingest consuming
        producer.join(60)
        m = start_master(*args, workers=2, database=db)
    rabbit.producer(chunks[5], path).join(60)

    def all_succeeded() -> dict[str, int] | None:
        stats = m.queue.broker.get_queue_stats()
        return stats if stats.get("succeeded") == len(ids) else None

    stats = wait_until(all_succeeded, 120, what="every message's task to succeed")
    assert stats == {"succeeded": len(ids)}  # one task per message: no extra id, none lost
    runs = _runs(path)
    assert set(runs) == set(ids)
    for task_id in ids:
        rec = m.task(task_id)
        assert rec is not None and rec["status"] == "succeeded" and rec["type"] == rabbit.queue
        assert 1 <= runs[task_id] <= rec["attempts"], (task_id, runs[task_id], rec)
    wait_until(lambda: rabbit.count() == 0, 20, what="every message acked")
    assert rabbit.count(dead_letter_queue(rabbit.queue)) == 0

    def fresh_doc() -> dict[str, Any] | None:  # killed nodes' documents linger, aging
        docs = sorted(m.queue.broker.component_statuses().values(), key=lambda d: d["report_age_s"])
        return docs[0] if docs and docs[0]["report_age_s"] < 5 and docs[0]["connected"] else None

    doc = wait_until(fresh_doc, 10, what="the live ingest's status document")
    assert doc["kind"] == "ingest" and doc["queue"] == rabbit.queue and doc["rejected"] == 0
    assert doc["ingested"] + doc["duplicates"] >= len(chunks[5])  # at least its last chunk


def test_malformed_messages_are_dead_lettered_and_the_node_carries_on(
    rabbit: Rabbit, start_master: Any, tmp_path: Path
) -> None:
    m = start_master(*APP, "--ingest", rabbit.url, workers=1)
    path = tmp_path / "runs.txt"
    rabbit.publish_raw(b"\x00 not json", message_id="junk-1")
    rabbit.publish_raw(json.dumps({"data": {"path": str(path)}}).encode())
    rabbit.publish_raw(json.dumps({"task_id": "p", "priority": 12}).encode())
    rabbit.producer(["good-1", "good-2"], path).join(30)
    m.wait_status("good-2", "succeeded", 20)
    m.wait_status("good-1", "succeeded", 20)
    wait_until(
        lambda: rabbit.count(dead_letter_queue(rabbit.queue)) == 3, 10, what="3 dead letters"
    )
    assert rabbit.count() == 0 and m.task("p") is None
    text = m.log_text()
    assert "dead-lettered to" in text and "body is not JSON" in text and "no task id" in text
    assert "priority 12 is not from 0 to 10" in text
    doc = wait_until(
        lambda: next(
            (d for d in m.queue.broker.component_statuses().values() if d["rejected"] == 3), None
        ),
        10,
        what="the status document to count them",
    )
    assert doc["ingested"] == 2 and doc["url"] == f"amqp://guest:***@127.0.0.1:5672/{rabbit.queue}"
    assert set(doc) == {
        "kind", "node", "queue", "url", "ingested", "duplicates", "rejected", "lag_s",
        "connected", "report_age_s",
    }  # fmt: skip
    assert m.proc.poll() is None


def test_rabbitmq_down_at_start_and_mid_run_clear_errors_backoff_nothing_lost(
    rabbit: Rabbit, start_master: Any, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))  # not listening yet: RabbitMQ is "down"
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbit.queue}"
    path = tmp_path / "runs.txt"
    try:
        m = start_master(*APP, "--ingest", url, workers=2)
        m.wait_log("cannot consume queue", 15)
        wait_until(lambda: m.log_text().count("cannot consume queue") >= 2, 15, what="retries")
        assert "trying again in" in m.log_text()
        ids = [f"d{i}" for i in range(400)]
        rabbit.producer(ids[:200], path).join(60)
        assert _known(m) == 0
        proxy.start()
        wait_until(lambda: _known(m) >= 50, 20, what="ingesting once RabbitMQ is up")
        producer = rabbit.producer(ids[200:], path)
        proxy.stop()  # down mid-run
        m.wait_log("broke off", 15)
        proxy.start()
        producer.join(60)
        wait_until(
            lambda: m.queue.broker.get_queue_stats().get("succeeded") == len(ids),
            60,
            what="every task to succeed",
        )
        # Checked while connected: the last batch is acked just after its push, and cutting
        # the proxy now would hand its messages back to the queue (RabbitMQ requeues what a
        # closed connection left unacked; they would be taken as duplicates on reconnect).
        wait_until(lambda: rabbit.count() == 0, 30, what="RabbitMQ's queue to drain")
    finally:
        proxy.stop()
    assert m.queue.broker.get_queue_stats() == {"succeeded": len(ids)}
    assert set(_runs(path)) == set(ids)
    assert m.proc.poll() is None  # RabbitMQ going away never stops the node


def test_a_queue_that_is_not_a_task_type_is_refused_at_start(
    rabbit: Rabbit, start_master: Any
) -> None:
    m = start_master(*APP, "--ingest", "amqp://guest:s3cret@127.0.0.1/not-registered", wait=False)
    assert m.wait_exit(30) == 2
    text = m.log_text()
    assert "queue 'not-registered'" in text and "is not a task type of the app" in text
    assert f"known task types: {rabbit.queue}" in text and "s3cret" not in text


def test_a_bad_ingest_url_is_refused_at_start(rabbit: Rabbit, start_master: Any) -> None:
    m = start_master(*APP, "--ingest", "amqp://guest:s3cret@127.0.0.1:99999/x", wait=False)
    assert m.wait_exit(30) == 2
    text = m.log_text()
    assert "ingest: unreadable URL" in text and "(from flag --ingest)" in text
    assert "amqp://guest:***@127.0.0.1:99999/x" in text and "s3cret" not in text


def test_sigterm_stops_the_ingest_first_and_exits_cleanly(
    rabbit: Rabbit, start_master: Any, tmp_path: Path
) -> None:
    m = start_master(*APP, "--ingest", rabbit.url, workers=2)
    path = tmp_path / "runs.txt"
    rabbit.producer(["t1"], path).join(30)
    m.wait_status("t1", "succeeded", 20)
    pids = [p.pid for p in m.descendants()]
    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    records = m.logs()
    order = [r["message"] for r in records]
    stop_at = next(i for i, t in enumerate(order) if t.startswith("stopping 1 ingest"))
    exits = [i for i, t in enumerate(order) if t.startswith("worker exiting")]
    assert exits and stop_at < min(exits)  # the ingest first
    assert any(t.startswith("stopped consuming queue") for t in order)
    wait_until(
        lambda: all(not psutil.pid_exists(p) or _zombie(p) for p in pids), 10, what="no orphan"
    )


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
