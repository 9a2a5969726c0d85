"""What a cluster knows about its nodes, for the metrics: lease-renewal health, the metrics
exporter's role, and a cluster-wide count of recovered leases.

Three keys of their own, beside the broker's (all under the ``{p}`` hash tag, one Cluster slot):

* ``{p}:node_renewed`` (HASH node -> ``"<at ms> <lease ms>"``): when each node's master last
  renewed its leases (Redis TIME, so the nodes' clocks do not matter) and its lease. A node that
  died keeps its entry, so the exporter still shows it, ever older, until the entry is an hour
  old (:data:`FORGET_AFTER_S`): the exporter then forgets the node, with its documents on the
  status board. A clean stop removes it.
* ``{p}:metrics_exporter`` (STRING node, expiring): the one node that exports the cluster-wide
  gauges and counters, so that ``sum()`` over the nodes never counts them twice. Every node
  that serves ``/metrics`` competes for it (:meth:`NodeBroker.elect_exporter`, every
  :data:`EXPORTER_RENEW_S`); it expires :data:`EXPORTER_TTL_S` after its holder stops renewing.
* ``{p}:cluster_counts`` (HASH): ``leases_recovered``, the attempts any node failed because
  their lease expired (counted right after the recovery script; a node killed in between loses
  that one count, never a task).

:class:`NodeBroker` is the :class:`~supervisor.broker.redis.RedisBroker` a Redis node uses
(master, workers, node process) with these methods added; the broker's own keys and scripts are
untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from supervisor.broker.redis import codec
from supervisor.broker.redis.broker import RedisBroker
from supervisor.broker.redis.scripts import HOLD_LOCK

FORGET_AFTER_S = 3600.0  # a node silent this long is forgotten (no more "stale" series)
EXPORTER_TTL_S = 10.0  # the exporter's role outlives its last renewal by this much
EXPORTER_RENEW_S = 2.0  # how often every serving node takes or keeps the role
RECOVERED_FIELD = "leases_recovered"

# HSET node -> "<Redis TIME ms> <lease ms>".
_MARK = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f %s', ms, ARGV[2]))
return 1
"""
# Give the role up if we hold it.
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class NodeHealth:
    """One node's last lease renewal as the cluster saw it."""

    renew_age_s: float
    lease_s: float

    @property
    def live(self) -> bool:
        """It renewed within its lease (its tasks are not being recovered)."""
        return self.renew_age_s <= self.lease_s


@dataclass(frozen=True)
class ClusterHealth:
    """``nodes``: name -> :class:`NodeHealth` (nodes silent past :data:`FORGET_AFTER_S` left
    out); ``leases_recovered``: cumulative, cluster-wide."""

    nodes: dict[str, NodeHealth]
    leases_recovered: int

    @property
    def live_nodes(self) -> int:
        return sum(1 for h in self.nodes.values() if h.live)


class NodeBroker(RedisBroker):
    """A :class:`RedisBroker` that also keeps the node registry of this module."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        tag = self._keys.tag
        self._renewed_key = f"{tag}:node_renewed"
        self._exporter_key = f"{tag}:metrics_exporter"
        self._cluster_counts_key = f"{tag}:cluster_counts"
        self._mark = self._client.register_script(_MARK)
        self._take = self._client.register_script(HOLD_LOCK)
        self._resign = self._client.register_script(_RESIGN)
        self._exporter_until = 0.0  # monotonic: the role is ours before this

    # -- lease-renewal health ---------------------------------------------------------------
    def mark_renewed(self) -> None:
        """Note (on Redis TIME) that this node's master renewed its leases just now."""
        with self._guard():
            self._mark(keys=[self._renewed_key], args=[self._node, self._lease_ms])

    def forget_node_health(self, node: str | None = None) -> None:
        """A clean stop: drop the node's renewal entry and give the exporter role up."""
        name = node or self._node
        with self._guard():
            self._client.hdel(self._renewed_key, name)
            self._resign(keys=[self._exporter_key], args=[name])
        if name == self._node:
            self._exporter_until = 0.0

    def recover(self, limit: int = 100) -> int:
        """:meth:`RedisBroker.recover`, counted in the cluster's ``leases_recovered``."""
        n = super().recover(limit)
        if n:
            with self._guard():
                self._client.hincrby(self._cluster_counts_key, RECOVERED_FIELD, n)
        return n

    def cluster_health(self) -> ClusterHealth:
        """Every known node's renewal age (on Redis TIME) and lease, and the recovered count."""
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(self._renewed_key)
            pipe.hget(self._cluster_counts_key, RECOVERED_FIELD)
            (sec, usec), entries, recovered = pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        nodes = {}
        for name, value in entries.items():
            health = _parse(codec.text(value), now_ms)
            if health is not None and health.renew_age_s < FORGET_AFTER_S:
                nodes[codec.text(name)] = health
        return ClusterHealth(nodes=nodes, leases_recovered=int(recovered or 0))

    def prune_node_health(self) -> int:
        """Forget the nodes silent past :data:`FORGET_AFTER_S` (they died: a clean stop
        forgets itself): their renewal entries, and what they left on the status board (the
        master's and the scheduler's documents, their components'). Returns how many."""
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(self._renewed_key)
            (sec, usec), entries = pipe.execute()
            now_ms = int(sec) * 1000 + int(usec) // 1000
            old = [name for name, value in entries.items() if _stale(codec.text(value), now_ms)]
        for name in old:  # its board entries first: a failure leaves it to the next prune
            if codec.text(name):
                self.forget_node(codec.text(name))
            with self._guard():
                self._client.hdel(self._renewed_key, name)
        return len(old)

    # -- the exporter's role ----------------------------------------------------------------
    def elect_exporter(self, ttl_s: float = EXPORTER_TTL_S) -> bool:
        """Take the exporter's role, or keep it; True while this node holds it. Raises
        BrokerError (the role then lapses on its own)."""
        started = time.monotonic()
        args: list[str | int] = [self._node, round(ttl_s * 1000)]
        with self._guard():
            held = bool(self._take(keys=[self._exporter_key], args=args))
        # Ours until the key expires, counted from before the call (never past Redis' view).
        self._exporter_until = started + ttl_s if held else 0.0
        return held

    def is_cluster_exporter(self) -> bool:
        """Whether this node exports the cluster-wide metrics now (no Redis call)."""
        return time.monotonic() < self._exporter_until

    def resign_exporter(self) -> None:
        """Give the role up now (a clean stop), so another node takes it at once."""
        self._exporter_until = 0.0
        with self._guard():
            self._resign(keys=[self._exporter_key], args=[self._node])


def _stale(value: str, now_ms: int) -> bool:
    health = _parse(value, now_ms)
    return health is None or health.renew_age_s >= FORGET_AFTER_S


def _parse(value: str, now_ms: int) -> NodeHealth | None:
    try:
        at_ms, lease_ms = (float(x) for x in value.split())
    except ValueError:
        return None
    return NodeHealth(renew_age_s=max(0.0, (now_ms - at_ms) / 1000.0), lease_s=lease_ms / 1000.0)
