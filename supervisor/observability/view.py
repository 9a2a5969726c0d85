"""What the metrics, the probes and the JSON API need from a broker: :class:`BrokerView`.

They are typed against this interface, not against an implementation, so that any broker that
can answer these calls in the process that serves HTTP can host them: the embedded broker
(:class:`~supervisor.broker.embedded.memory.MemoryBroker` and its durable subclass) today, a
Redis-backed view later. Every method must be safe to call from several HTTP threads at once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricsSource(Protocol):
    """The reads of the Prometheus collector and the health probes: cheap, in memory, no
    database (they are scraped every few seconds and must answer while SQLite is locked)."""

    def stats(self) -> dict[str, Any]:
        """See :meth:`supervisor.broker.base.TaskControl.stats` for the keys."""
        ...

    def drain_events(self) -> list[tuple[str, str, str, float]]:
        """``(event, task type, status, seconds)`` observed since the last call (only the
        collector drains them)."""
        ...

    def master_status(self) -> dict[str, Any]:
        """The master's last published status ({} before the first)."""
        ...

    def dispatching(self) -> bool:
        """True while tasks are handed out (False once shutdown began)."""
        ...

    def known_task_types(self) -> list[str]:
        """The registered task type names, sorted ([] when any type is accepted)."""
        ...

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        """The scheduler's last document and its age in seconds (None: never published)."""
        ...


class ClusterSource(Protocol):
    """What the metrics also read when a broker offers it (looked up by name, each optional):
    a Redis node's :class:`~supervisor.broker.redis.nodes.NodeBroker` has all of it. Without
    ``is_cluster_exporter`` the broker's node is the whole cluster, so it is the exporter."""

    node: str  # the node's name, labelling its per-node families

    def is_cluster_exporter(self) -> bool:
        """Whether this node exports the cluster-wide families now (cheap: no round trip)."""
        ...

    def cluster_health(self) -> Any:
        """The nodes' lease renewals (:class:`~supervisor.broker.redis.nodes.ClusterHealth`)."""
        ...

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        """See :meth:`supervisor.broker.base.StatusBoard.component_statuses` (ingest children)."""
        ...


@runtime_checkable
class BrokerView(MetricsSource, Protocol):
    """:class:`MetricsSource` plus the contract's record queries and controls the JSON API
    serves. The queries may raise :class:`~supervisor.errors.DatabaseBusy` (retryable) when the
    broker's database is locked; they never answer a guess."""

    def get_task(self, task_id: str) -> dict[str, Any] | None: ...

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...

    def get_queue_stats(self) -> dict[str, int]: ...

    def cancel(self, task_id: str) -> str: ...

    def retry_task(self, task_id: str) -> bool: ...
