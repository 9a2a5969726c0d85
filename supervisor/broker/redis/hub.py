"""The status board on Redis (the master's status and the scheduler's document, per node; the
components' documents), the server checks, and ping.

Every node runs its own scheduler on the shared database, each with its own counters, so each
publishes under its node's name: one shared document would make the cluster's scheduler
counters jump from one process's to another's."""

from __future__ import annotations

import json
from typing import Any

from supervisor.broker.redis import codec
from supervisor.broker.redis.core import Core
from supervisor.broker.validate import check_component
from supervisor.errors import TaskError
from supervisor.registry import TaskOptions

SCHEDULER_FIELD = "\x00scheduler:"  # + the node's name (no node name starts with NUL)
COMPONENT_FIELD = "\x00component:"  # + the component's name


def _age_or_inf(dated: tuple[dict[str, Any], float | None]) -> float:
    return float("inf") if dated[1] is None else dated[1]


def _dated(blob: bytes | str, now: float) -> tuple[dict[str, Any], float | None]:
    """(document, its age at ``now``, None when it carries no time) of a dated blob."""
    data = json.loads(blob)
    at = codec.time_or_none(data.get("at"))
    return dict(data.get("doc") or {}), (None if at is None else now - at)


def _masters(board: dict[str, bytes | str]) -> dict[str, dict[str, Any]]:
    """The masters' statuses of a status hash: the fields that are node names (the board's
    own fields start with NUL)."""
    return {name: dict(json.loads(v)) for name, v in board.items() if not name.startswith("\x00")}


class HubMixin(Core):
    def stats(self) -> dict[str, Any]:
        """Provided by the broker (see :meth:`RedisBroker.stats`)."""
        raise NotImplementedError

    def publish_status(self, status: dict[str, Any]) -> None:
        """This node's master's view of its workers (replaces its previous one)."""
        doc = json.dumps(status, default=str)
        with self._guard():
            self._client.hset(self._keys.status, self._node, doc)

    def master_status(self) -> dict[str, Any]:
        """This node's master's last published status (empty before the first)."""
        with self._guard():
            blob = self._client.hget(self._keys.status, self._node)
        return {} if blob is None else dict(json.loads(blob))

    def node_statuses(self) -> dict[str, dict[str, Any]]:
        """Every node's last published master status, by node name."""
        return _masters(self._board())

    def _board(self) -> dict[str, bytes | str]:
        """The whole status hash, by field name."""
        with self._guard():
            docs = self._client.hgetall(self._keys.status)
        return {codec.text(k): v for k, v in docs.items()}

    def _dated_under(
        self, board: dict[str, bytes | str], prefix: str
    ) -> dict[str, tuple[dict[str, Any], float | None]]:
        """The dated documents of ``board`` whose field starts with ``prefix``, by the rest of
        the field: each (document, its age in seconds or None)."""
        now = self._clock()
        return {
            field[len(prefix) :]: _dated(blob, now)
            for field, blob in board.items()
            if field.startswith(prefix)
        }

    def _put_dated(self, field: str, doc: dict[str, Any]) -> None:
        """``doc`` under ``field``, with when it came (this clock)."""
        blob = json.dumps({"doc": doc, "at": codec.time_str(self._clock())}, default=str)
        with self._guard():
            self._client.hset(self._keys.status, field, blob)

    def forget_node(self, node: str | None = None) -> None:
        """Drop what a node (default: this one) keeps in Redis apart from tasks: its master's
        and scheduler's documents, its components', its dispatching flag and its metric
        observations. For a master's clean exit, and for the exporter's prune of a node that
        died (see :meth:`NodeBroker.prune_node_health`)."""
        name = node or self._node
        mine = [
            COMPONENT_FIELD + c
            for c, doc in self.component_statuses().items()
            if doc.get("node") == name
        ]
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(self._keys.status, name, SCHEDULER_FIELD + name, *mine)
            pipe.hdel(self._keys.dispatch, name)
            pipe.delete(self._keys.obs(name))
            pipe.execute()

    def get_status(self) -> dict[str, Any]:
        """``{"master": ..., "nodes": {name: status}, "stats": ..., "scheduler": ... | None,
        "schedulers": {name: doc}}``: ``master`` is this node's master's status, or, for a
        client of a cluster of one node, that node's; ``scheduler`` this node's scheduler
        document, or for a client (a name no node has) the one published last, with ``node``
        naming whose it is; ``schedulers`` every node's, each with its ``report_age_s``."""
        board = self._board()  # one read: the masters' and the schedulers' documents
        nodes = _masters(board)
        every = self._dated_under(board, SCHEDULER_FIELD)
        scheduler, age = every.get(self._node, ({}, None))
        source = self._node
        if age is None and self._node not in nodes:
            others = sorted(every.items(), key=lambda kv: _age_or_inf(kv[1]))
            if others:
                source, (scheduler, age) = others[0]
        master = nodes.get(self._node) or (next(iter(nodes.values())) if len(nodes) == 1 else {})
        return {
            "master": master,
            "nodes": nodes,
            "stats": self.stats(),
            "scheduler": {**scheduler, "node": source, "report_age_s": age} if scheduler else None,
            "schedulers": {n: {**doc, "report_age_s": a} for n, (doc, a) in every.items()},
        }

    def publish_scheduler_status(self, doc: dict[str, Any]) -> None:
        """This node's scheduler's document; the board notes when it came (this clock)."""
        if not isinstance(doc, dict):
            raise TaskError(f"scheduler status must be a dict, got {type(doc).__name__}")
        self._put_dated(SCHEDULER_FIELD + self._node, doc)

    def scheduler_status(self) -> tuple[dict[str, Any], float | None]:
        """This node's scheduler's last document and its age in seconds (None: never
        published)."""
        with self._guard():
            blob = self._client.hget(self._keys.status, SCHEDULER_FIELD + self._node)
        return ({}, None) if blob is None else _dated(blob, self._clock())

    def scheduler_statuses(self) -> dict[str, tuple[dict[str, Any], float | None]]:
        """Every node's scheduler document and its age, by node name."""
        return self._dated_under(self._board(), SCHEDULER_FIELD)

    def publish_component_status(self, name: str, doc: dict[str, Any]) -> None:
        """A component's document (see the contract); kept in the status hash."""
        check_component(name, doc)
        self._put_dated(COMPONENT_FIELD + name, doc)

    def component_statuses(self) -> dict[str, dict[str, Any]]:
        """Every node's components, by name, each with its ``report_age_s``."""
        docs = self._dated_under(self._board(), COMPONENT_FIELD)
        return {name: {**doc, "report_age_s": age} for name, (doc, age) in docs.items()}

    def known_task_types(self) -> list[str]:
        """The task type names this instance accepts (empty when any type is accepted)."""
        types: dict[str, TaskOptions] | None = self._types
        return sorted(types or ())

    def ping(self) -> str:
        """``"pong"`` when Redis answers (BrokerError otherwise)."""
        with self._guard():
            self._client.ping()
        return "pong"

    def check_server(self) -> list[str]:
        """What makes this server unsafe for the broker (empty: fine): Redis older than 7,
        an eviction policy other than ``noeviction`` (keys would vanish), AOF off (a restart
        would lose accepted tasks). CONFIG may be refused on managed servers: said so."""
        problems = []
        with self._guard():
            version = codec.text(self._client.info("server").get("redis_version", "0"))
            try:
                conf = self._client.config_get("maxmemory-policy")
                conf.update(self._client.config_get("appendonly"))
            except Exception as exc:  # CONFIG renamed or refused
                return [f"cannot read the server's config: {exc}"]
        if int(version.split(".")[0] or 0) < 7:
            problems.append(f"Redis {version} is older than 7")
        policy = codec.text(conf.get("maxmemory-policy"))
        if policy != "noeviction":
            problems.append(f"maxmemory-policy is {policy!r}, not 'noeviction'")
        if codec.text(conf.get("appendonly")) != "yes":
            problems.append("appendonly is off: a restart loses what was not saved")
        return problems
