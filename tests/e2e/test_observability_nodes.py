"""The node registry a Redis node keeps for the metrics (:mod:`supervisor.broker.redis.nodes`),
on a real ``redis-server``: renewal ages on Redis time, the exporter's role (one holder, handed
over on resign or expiry), the cluster-wide count of recovered leases, and the collector over it.

(An integration test by its layer: real Redis, no ``supervisor run``.) A private server per
module, a key prefix of its own per test; skipped without ``redis-server``, failing in CI.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.master import scoreboard as sb
from supervisor.observability.collector import build_registry
from supervisor.registry import TaskOptions
from tests.helpers import wait_until
from tests.redisserver import RedisServer, private_redis_server

redis = pytest.importorskip("redis", reason="the [redis] extra")
from supervisor.broker.redis.history import HistoryWriter  # noqa: E402 - needs redis
from supervisor.broker.redis.keys import TASK_KEY_NAMES, Keys  # noqa: E402
from supervisor.broker.redis.nodes import FORGET_AFTER_S, NodeBroker  # noqa: E402

pytestmark = pytest.mark.timeout(60)
OPTS = TaskOptions(timeout_s=30.0, max_retries=2, backoff_base_s=0.0, backoff_cap_s=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with private_redis_server() as srv:
        yield srv


@pytest.fixture
def make(server: RedisServer) -> Iterator[Any]:
    """``make(node, lease_s=…)``: a NodeBroker of this test's cluster (its own prefix)."""
    prefix = f"n{uuid.uuid4().hex[:8]}"
    made: list[NodeBroker] = []

    def node(name: str, lease_s: float = 30.0) -> NodeBroker:
        b = NodeBroker(
            url=server.url,
            prefix=prefix,
            node=name,
            task_types={"t": OPTS},
            default_options=OPTS,
            lease_s=lease_s,
        )
        made.append(b)
        return b

    yield node
    for b in made:
        b.close()


def test_renewals_are_aged_on_redis_time_and_old_nodes_forgotten(make: Any) -> None:
    a, b = make("a", lease_s=2.0), make("b")
    a.mark_renewed()
    b.mark_renewed()
    got = a.cluster_health()
    assert set(got.nodes) == {"a", "b"} and got.live_nodes == 2
    assert got.nodes["a"].lease_s == 2.0 and got.nodes["b"].lease_s == 30.0
    assert 0.0 <= got.nodes["a"].renew_age_s < 2.0
    # A node that renewed 5 s ago with a 2 s lease is stale; one silent for an hour, forgotten.
    sec, usec = a._client.time()
    now_ms = sec * 1000 + usec // 1000
    a._client.hset(a._renewed_key, "a", f"{now_ms - 5000} 2000")
    a._client.hset(a._renewed_key, "gone", f"{now_ms - FORGET_AFTER_S * 1000 - 1} 2000")
    a._client.hset(a._renewed_key, "junk", "not a renewal")
    got = b.cluster_health()
    assert set(got.nodes) == {"a", "b"} and got.live_nodes == 1
    assert 5.0 <= got.nodes["a"].renew_age_s < 7.0 and not got.nodes["a"].live
    gone = make("gone")  # it died: its documents are still on the board
    gone.publish_status({"workers": []})
    gone.publish_scheduler_status({"counters": {"fired": 1}})
    gone.publish_component_status("ingest:gone:q", {"kind": "ingest", "node": "gone"})
    assert a.prune_node_health() == 2  # "gone" and "junk"
    assert set(a._client.hkeys(a._renewed_key)) == {b"a", b"b"}
    assert "gone" not in a.node_statuses() and "gone" not in a.scheduler_statuses()
    assert a.component_statuses() == {}
    a.forget_node_health()  # a clean stop
    assert set(b.cluster_health().nodes) == {"b"}


def test_a_prune_cut_short_by_redis_leaves_the_node_for_the_next_one(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.errors import BrokerError

    a, gone = make("a"), make("gone")
    gone.publish_status({"workers": []})
    sec, usec = a._client.time()
    old = f"{sec * 1000 + usec // 1000 - FORGET_AFTER_S * 1000 - 1} 2000"
    a._client.hset(a._renewed_key, "gone", old)

    def blip(node: str | None = None) -> None:
        raise BrokerError("cannot reach Redis")

    monkeypatch.setattr(a, "forget_node", blip)
    with pytest.raises(BrokerError):
        a.prune_node_health()
    assert a._client.hexists(a._renewed_key, "gone")  # still known: pruned next time
    monkeypatch.undo()
    assert a.prune_node_health() == 1
    assert "gone" not in a.node_statuses() and not a._client.hexists(a._renewed_key, "gone")


def test_one_exporter_at_a_time_handed_over_on_resign_or_expiry(make: Any) -> None:
    a, b = make("a"), make("b")
    assert a.elect_exporter(ttl_s=5.0) and a.is_cluster_exporter()
    assert not b.elect_exporter(ttl_s=5.0) and not b.is_cluster_exporter()
    assert a.elect_exporter(ttl_s=5.0)  # kept by its holder
    a.resign_exporter()
    assert not a.is_cluster_exporter()
    assert b.elect_exporter(ttl_s=0.3)  # b takes it at once, then stops renewing
    assert not a.elect_exporter(ttl_s=5.0)
    wait_until(lambda: not b.is_cluster_exporter(), 5, what="b's role to lapse locally")
    wait_until(lambda: a.elect_exporter(ttl_s=5.0), 5, what="a to take the expired role")
    assert not b.elect_exporter(ttl_s=5.0)


def test_recovered_leases_are_counted_once_for_the_cluster(make: Any) -> None:
    dead, alive = make("dead", lease_s=0.5), make("alive", lease_s=0.5)
    tid = dead.push({"type": "t", "params": b""})
    assert dead.pop("worker:0:1")["task_id"] == tid  # then its node stops renewing
    # (recovery waits until Redis has been up a whole lease)
    wait_until(lambda: alive.recover() == 1, 10, what="the expired lease to be recovered")
    assert alive.recover() == 0
    assert alive.cluster_health().leases_recovered == 1
    assert dead.cluster_health().leases_recovered == 1  # one count, whoever reads it


def test_the_registry_keys_are_new_and_in_the_clusters_hash_slot(make: Any) -> None:
    a = make("a")
    keys = Keys(a._keys.prefix)
    ours = {a._renewed_key, a._exporter_key, a._cluster_counts_key}
    theirs = {keys.name(n) for n in TASK_KEY_NAMES} | {keys.status, keys.obs("a")}
    theirs.add(HistoryWriter(a._client, keys, table=None, node="a").lock_key)  # type: ignore[arg-type]
    assert not ours & theirs
    assert all(k.startswith(keys.tag + ":") for k in ours)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_the_collector_over_two_nodes_exports_the_cluster_once(make: Any) -> None:
    a, b = make("a"), make("b")
    board = sb.Scoreboard(2)
    board.reset(board.master_slot, os.getpid(), time.monotonic())
    for n in (a, b):
        n.mark_renewed()
        n.publish_status({"state": "running", "node": n.node})
    a.push({"type": "t", "params": b""})
    assert a.elect_exporter() and not b.elect_exporter()
    texts = {n.node: generate_latest(build_registry(n, board)[0]).decode() for n in (a, b)}
    got = {name: samples(text) for name, text in texts.items()}
    cluster = ("supervisor_queue_depth", frozenset({("priority", "5")}))
    assert got["a"][cluster] == 1 and cluster not in got["b"]
    assert got["a"][("supervisor_cluster_nodes_live", frozenset())] == 2
    for name in ("a", "b"):
        exporter = ("supervisor_cluster_exporter", frozenset({("node", name)}))
        assert got[name][exporter] == (1 if name == "a" else 0)
        assert got[name][("supervisor_broker_up", frozenset({("node", name)}))] == 1
    assert "supervisor_cluster_node_last_renew_age_seconds" not in texts["b"]
