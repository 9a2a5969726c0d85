"""Scale-out on one machine: two nodes (4 workers) against one (2 workers), and recovery after
a node's ``kill -9``.

* scaling: node A alone, then A with node B started beside it (same Redis, same key prefix),
  the same batch figure (``bench.redis_figures.ours_batch``), in turns; B is started afresh for
  each two-node turn and stopped after it.
* recovery: node A (``--lease L``) takes two ``hold`` tasks (asleep on their first attempt),
  node B starts beside it idle, then (after a random pause, so the kill falls anywhere in
  A's renewal cycle) A's master and every process under it get SIGKILL at once.
  Time-to-rerun = the second attempt's ``started_at`` (on B) - the kill, per task; the
  record's ``worker_lost`` error says when B's ``recover`` found the lease expired. Expected:
  the lease left since A's last renewal (renewed every L/3: L - L/3 … L) + up to 1 s until B's
  next recover + up to 1 s until an idle worker of B wakes for the retried task.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from bench import redis_figures as figs
from bench.redis_procs import kill_tree, supervisor_node, wait_for


def two_nodes_batch(url: str, prefix: str, a_queue: Any, n: int, batch: int) -> float:
    """The batch figure with node B (2 more workers) beside the running node A."""
    with supervisor_node(url, prefix, name=f"node-b-{uuid.uuid4().hex[:4]}"):
        return figs.ours_batch(a_queue, n, batch)


def recovery(url: str, lease_s: float, hold_s: float = 120.0) -> dict[str, Any]:
    """One kill -9 of a node holding 2 tasks; the seconds until both run again elsewhere."""
    prefix = f"r{uuid.uuid4().hex[:8]}"
    lease = ("--lease", f"{lease_s:g}")
    with supervisor_node(url, prefix, name="node-a", extra=lease) as a:
        q = a.queue
        ids = q.push_tasks([{"type": "hold", "params": {"s": hold_s}} for _ in range(2)])

        def running_on_a() -> bool:  # only node A is up yet
            recs = [q.broker.get_task(t) or {} for t in ids]
            return all(r.get("status") == "running" for r in recs)

        wait_for(running_on_a, 30, "both hold tasks running on node A", 0.01)
        with supervisor_node(url, prefix, name="node-b", extra=lease):
            # A random phase: the nodes' once-a-second loops are otherwise in step with B's
            # start, and every round would kill A at the same point of its renewal cycle.
            time.sleep(random.uniform(0.0, lease_s / 3 + 1.0))
            killed_at = time.time()
            killed = kill_tree(a.pid)

            def rerun() -> list[dict[str, Any]] | None:
                recs = [q.broker.get_task(t) or {} for t in ids]
                again = [
                    r for r in recs if int(r.get("attempts") or 0) >= 2 and r.get("started_at")
                ]
                return recs if len(again) == len(ids) else None

            recs = wait_for(rerun, lease_s * 3 + 30, "the tasks to run again on node B", 0.005)
            wait_for(lambda: a.proc.poll() is not None, 10, "node A to be gone", 0.01)
    rerun_s = [float(r["started_at"]) - killed_at for r in recs]
    found_s = [float((r.get("errors") or [{}])[-1].get("at") or "nan") - killed_at for r in recs]
    reasons = [(r.get("errors") or [{}])[-1].get("reason") for r in recs]
    return {
        "lease_s": lease_s,
        "rerun_s": rerun_s,
        "rerun_max_s": max(rerun_s),
        "recovered_after_s": found_s,
        "reasons": reasons,
        "killed_pids": len(killed),
    }
