"""Leases: renewal by a node's master, recovery of expired leases by any node, release.

A handed-out task has a lease deadline (Redis TIME) in ``{p}:lease`` and an owner token
``<node>/<consumer>|<attempt>`` in ``{p}:owner``. The master renews the leases of its workers'
tasks every few seconds (:meth:`renew`), so a handler that hogs its CPU cannot starve them; a
node that dies or is cut off stops renewing, and after the lease any node's :meth:`recover`
fails the attempt as ``worker_lost`` (retried with backoff, or dead). The attempt was counted
when the task was handed out, so a task that kills its node cannot loop forever. A task taken for
a parked consumer that never received it (still in its mailbox: its node died while it waited)
goes back to its place instead, the attempt not counted.
"""

from __future__ import annotations

from typing import Any

from supervisor.broker import base
from supervisor.broker.redis import codec
from supervisor.broker.redis.core import WORKER_PREFIX, Core


class LeaseMixin(Core):
    def renew(self, consumers: list[str]) -> dict[str, list[str]]:
        """Extend to now + ``lease_s`` the leases of the tasks these consumers (of this node)
        still hold (never shortened). Returns ``{"lost": ids whose lease was lost (recovered
        elsewhere: kill the worker, its report would be refused), "cancel": ids a user
        cancelled}``."""
        if not consumers:
            return {"lost": [], "cancel": []}
        lost, cancels = self._run("renew", [self._qc(c) for c in consumers])
        return {"lost": [codec.text(x) for x in lost], "cancel": [codec.text(x) for x in cancels]}

    def recover(self, limit: int = 100) -> int:
        """Fail up to ``limit`` attempts whose lease expired (any node's), as ``worker_lost``
        (``timeout`` for a consumer that is not a worker) under the retry policy. The script
        checks each lease and token again, so concurrent recoveries and late renewals are
        safe. Returns how many were failed.

        Leases are deadlines on Redis TIME, and nobody could renew while Redis was down: after
        a restart, nothing is recovered until the server has been up for a whole lease."""
        with self._guard():
            uptime = int(self._client.info("server").get("uptime_in_seconds", 0))
        if uptime < self._lease_ms / 1000.0:
            return 0
        found = self._run("expired", [int(limit)])
        if not found:
            return 0
        now = self._clock()
        args: list[Any] = ["recover", 0]
        for i in range(0, len(found), 3):
            owner, blob = codec.text(found[i + 1]), found[i + 2]
            if not owner or not blob:
                continue
            qc, _, _attempt = owner.rpartition("|")
            node, _, consumer = qc.partition("/")
            if consumer.startswith(WORKER_PREFIX):
                reason = base.REASON_WORKER_LOST
                error = f"lease lost: node {node} stopped renewing the lease of {consumer}"
            else:
                reason = base.REASON_TIMEOUT
                error = f"lease of consumer {consumer} (node {node}) expired"
            rec = codec.decode_raw(blob)
            item = self._fail_item(qc, rec, reason, {"error": error}, now)
            item[2] = _attempt  # fence on the token seen, not on the record
            args.extend(item)
            args[1] += 1
        if not args[1]:
            return 0
        return len(self._run("fail", args, now))

    def release_consumer(
        self, consumer: str, reason: str, *, error: str = "", exit_status: int | None = None
    ) -> str | None:
        """The consumer is gone: fail the task it held with ``reason`` (``shutdown`` puts it
        back at its place without counting the attempt). Returns the task id, if any."""
        qc = self._qc(consumer)
        with self._guard():
            task_id = self._client.hget(self._keys.held, qc)
            blob = task_id and self._client.hget(self._keys.task, task_id)
        if not task_id or not blob:  # holds nothing: only no longer parked (see fail.lua)
            self._run("fail", ["release", 1, qc, "", "0", reason, "", "", "", "dead", ""])
            return None
        now = self._clock()
        rec = codec.decode_raw(blob)
        detail = {"error": error, "exit_status": exit_status}
        res = self._run("fail", ["release", 1, *self._fail_item(qc, rec, reason, detail, now)], now)
        return codec.text(res[0]) if res else None

    def held(self) -> dict[str, str]:
        """consumer -> task id, for every task this node's consumers hold now (lease valid)."""
        with self._guard():
            pairs = self._client.hgetall(self._keys.held)
            mine = {
                codec.text(k): codec.text(v)
                for k, v in pairs.items()
                if codec.text(k).startswith(self._node + "/")
            }
            owners = self._client.hmget(self._keys.owner, list(mine.values())) if mine else []
        out = {}
        for (qc, task_id), owner in zip(mine.items(), owners, strict=True):
            if owner is not None and codec.text(owner).startswith(qc + "|"):
                out[qc.partition("/")[2]] = task_id
        return out
