"""A real Prometheus scrapes a cluster of ``supervisor run`` nodes on one Redis: every PromQL
expression of the dashboard and the alerts returns data, the cluster's figures are counted
once (one exporter), a killed node shows as not renewing its leases (and the exporter's role
moves to a node that lives), and a node that cannot reach Redis says so in its metrics.

A private ``redis-server`` per module (per test where it is killed), a fresh PostgreSQL schema
and a key prefix of its own per test; Prometheus as in ``test_observability_prometheus``.
Leases are short (``--lease 2``) so that a dead node is seen quickly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import supervisor
from tests.e2e import test_observability_prometheus as on_one_machine
from tests.e2e.test_observability_metrics import METRICS, finish_all, get, http_address
from tests.e2e.test_observability_prometheus import INGEST_DOC, check_every_expression
from tests.e2e.test_redis_nodes import readyz
from tests.helpers import require_service, wait_until
from tests.redisserver import private_redis_server

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
LEASE_S = 2.0
prometheus_for = on_one_machine.prometheus_for  # the fixture: a Prometheus scraping targets


@pytest.fixture
def cluster(start_master: Any, redis_url: str, pg_url: str) -> Iterator[Any]:
    """``cluster(name, *args)``: a node of this test's cluster (its own key prefix)."""
    prefix = f"o{uuid.uuid4().hex[:8]}"

    def node(name: str, *args: str, workers: int = 2) -> Any:
        return start_master(
            *METRICS, "--broker", redis_url, "--key-prefix", prefix, "--lease", str(LEASE_S),
            "--node-name", name, *args,
            workers=workers, name=name, database=pg_url,
        )  # fmt: skip

    producer = supervisor.connect(broker=redis_url, key_prefix=prefix)
    node.producer = producer  # type: ignore[attr-defined]
    yield node
    producer.broker.close()  # type: ignore[attr-defined]


def scalar(prom: Any, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def exporter_of(prom: Any) -> str | None:
    """The node Prometheus sees exporting the cluster's figures (None: none, or not one)."""
    result = prom.query("supervisor_cluster_exporter == 1")
    return str(result[0]["metric"]["node"]) if len(result) == 1 else None


def alert_active(prom: Any, name: str, node: str) -> bool:
    """The rule's expression holds for ``node`` (pending, or firing once its `for` is over)."""
    return bool(prom.query(f'ALERTS{{alertname="{name}",node="{node}"}}'))


def test_every_expression_returns_data_and_cluster_figures_count_once(
    cluster: Any, prometheus_for: Any
) -> None:
    a = cluster("a", "--max-memory-per-child", "1024")
    b = cluster("b", "--max-memory-per-child", "1024")
    prom = prometheus_for(http_address(a), http_address(b))
    wait_until(
        lambda: scalar(prom, 'count(up{job="supervisor"} == 1)') == 2,
        30,
        interval_s=0.2,
        what="prometheus to scrape both nodes",
    )
    workload = [
        ("noop", {}, 20),
        ("fail", {"why": "dashboards"}, 2),
        ("again", {}, 2),
        ("picky", {}, 1),
        ("exit", {}, 1),
        ("long", {"seconds": 0.2, "key": "l"}, 3),
    ]
    finish_all(a, workload)
    cluster.producer.set_public("some-key", "v")
    cluster.producer.broker.publish_component_status("ingest:a:orders", {**INGEST_DOC, "node": "a"})
    done = time.time()
    wait_until(
        lambda: (
            scalar(prom, 'sum(supervisor_tasks_finished_total{type="noop"})') == 20
            and len(prom.query(f"timestamp(supervisor_ingest_connected) > {done + 3}")) == 1
            and len(prom.query(f"timestamp(supervisor_build_info) > {done + 3}")) == 2
        ),
        60,
        interval_s=0.2,
        what="prometheus to see the whole workload from both nodes",
    )
    assert check_every_expression(prom) >= 50  # nothing skipped: Redis has it all
    # The cluster's figures come from one node: summed over the targets, counted once.
    assert exporter_of(prom) in ("a", "b")
    assert scalar(prom, "sum(supervisor_cluster_exporter)") == 1
    assert scalar(prom, "sum(supervisor_tasks_pushed_total)") == sum(n for *_, n in workload)
    assert scalar(prom, 'sum(supervisor_tasks_finished_total{type="exit",status="dead"})') == 1
    assert scalar(prom, "count(supervisor_queue_depth)") == 11  # one series per priority
    assert scalar(prom, "sum(supervisor_cluster_nodes_live)") == 2
    # Per-node figures come from each node, labelled by it, and add up to the cluster's.
    assert {r["metric"]["node"] for r in prom.query("supervisor_build_info")} == {"a", "b"}
    assert scalar(prom, 'sum(supervisor_node_tasks_finished_total{type="noop"})') == 20
    assert scalar(prom, "count(supervisor_cluster_node_last_renew_age_seconds)") == 2
    assert scalar(prom, "min(supervisor_broker_up)") == 1
    assert scalar(prom, 'sum(supervisor_lease_renewals_total{outcome="ok"})') > 0
    assert scalar(prom, 'sum(supervisor_ingest_messages_total{outcome="ingested"})') == 12
    # every node runs its own scheduler, with its own counters: one series each, never mixed
    ticks = prom.query("supervisor_scheduler_last_tick_age_seconds")
    assert sorted(r["metric"]["node"] for r in ticks) == ["a", "b"]
    assert scalar(prom, "count(supervisor_scheduler_fires_total)") == 2
    promtool = shutil.which("promtool")
    require_service(promtool is not None, "promtool not found: apt-get install prometheus")
    for m in (a, b):  # the exporter's exposition and the other's
        code, body = get(http_address(m), "/metrics")
        assert code == 200 and b"amqp" not in body and b"***" not in body  # no URL in it
        res = subprocess.run(
            [str(promtool), "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_a_killed_node_shows_as_not_renewing_and_the_exporter_role_moves(
    cluster: Any, prometheus_for: Any
) -> None:
    nodes = {"a": cluster("a"), "b": cluster("b")}
    prom = prometheus_for(*(http_address(m) for m in nodes.values()))
    q = cluster.producer
    ids = [q.push_task({"type": "hold", "params": {"key": f"h{i}"}}) for i in range(4)]
    wait_until(
        lambda: all(q.get_public(f"h{i}") for i in range(4)),
        30,
        what="four tasks running, two on each node",
    )
    first = wait_until(lambda: exporter_of(prom), 30, interval_s=0.2, what="one exporter")
    victim, survivor = first, ("b" if first == "a" else "a")
    os.killpg(nodes[victim].proc.pid, signal.SIGKILL)  # master, workers, node process
    nodes[victim].proc.wait(10)

    wait_until(
        lambda: exporter_of(prom) == survivor,
        30,
        interval_s=0.2,
        what=f"node {survivor} to take the exporter's role",
    )
    wait_until(
        lambda: alert_active(prom, "SupervisorNodeStoppedRenewing", victim),
        30,
        interval_s=0.2,
        what=f"the alert for node {victim}, which stopped renewing",
    )
    assert not alert_active(prom, "SupervisorNodeStoppedRenewing", survivor)
    age = scalar(prom, f'supervisor_cluster_node_last_renew_age_seconds{{node="{victim}"}}')
    assert age is not None and age > LEASE_S
    assert scalar(prom, "sum(supervisor_cluster_nodes_live)") == 1
    # The victim's two tasks were recovered, once each, and counted once for the cluster.
    wait_until(
        lambda: scalar(prom, "sum(supervisor_cluster_leases_recovered_total)") == 2,
        30,
        interval_s=0.2,
        what="the two recovered leases in the metrics",
    )
    lost = [[e["reason"] for e in q.get_task_state(t)["errors"]] for t in ids]
    assert sorted(lost) == [[], [], ["worker_lost"], ["worker_lost"]]
    q.set_public("release", True)


def test_a_node_that_cannot_reach_redis_says_so_in_its_metrics(
    start_master: Any, prometheus_for: Any
) -> None:
    with private_redis_server() as server:
        node = start_master(
            *METRICS, "--broker", server.url, "--lease", str(LEASE_S), "--node-name", "solo",
            workers=1, name="solo",
        )  # fmt: skip
        address = http_address(node)
        prom = prometheus_for(address)
        wait_until(
            lambda: prom.query('supervisor_broker_up{node="solo"} == 1'),
            30,
            interval_s=0.2,
            what="prometheus to see the node reach Redis",
        )
        server.kill()
        wait_until(
            lambda: alert_active(prom, "SupervisorBrokerUnreachable", "solo"),
            30,
            interval_s=0.2,
            what="the Redis-unreachable alert to be pending",
        )
        code, body = get(address, "/metrics")
        assert code == 200 and b'supervisor_broker_up{node="solo"} 0.0' in body
        assert b'supervisor_workers{node="solo",state="idle"}' in body  # what it knows alone
        assert b"supervisor_queue_depth" not in body  # absent, not a wrong 0
        assert readyz(node) == 503
        assert scalar(prom, 'sum(up{job="supervisor"})') == 1  # still scraped
        server.start()  # the same port and folder
        wait_until(
            lambda: (
                prom.query('supervisor_broker_up{node="solo"} == 1')
                and prom.query("supervisor_cluster_exporter == 1")
            ),
            30,
            interval_s=0.2,
            what="the node to reach Redis (and export the cluster's figures) again",
        )
