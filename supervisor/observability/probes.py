"""What ``/livez`` and ``/readyz`` answer: pure decisions from values read elsewhere.

Liveness is only "the master's loop ticked recently" (read from the scoreboard: no broker lock,
no IPC), so a busy queue never makes an orchestrator kill a healthy master. Readiness adds what
a load balancer or a rolling deploy wants: the master runs (not draining or stopping), the broker
hands out tasks, and at least one worker is ready (idle or busy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LIVE_HEARTBEAT_S = 10.0  # the loop ticks every <= 0.5 s; 20 missed ticks is not a hiccup


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "fail", "reason": self.reason, **self.detail}


def liveness(heartbeat_age_s: float, *, limit_s: float = LIVE_HEARTBEAT_S) -> Probe:
    detail = {"heartbeat_age_s": round(heartbeat_age_s, 3)}
    if heartbeat_age_s < limit_s:
        return Probe(True, "master loop ticking", detail)
    return Probe(
        False, f"master loop silent for {heartbeat_age_s:.1f} s (limit {limit_s:g} s)", detail
    )


def readiness(
    *,
    heartbeat_age_s: float,
    master_state: str | None,
    dispatching: bool,
    ready_workers: int,
    limit_s: float = LIVE_HEARTBEAT_S,
) -> Probe:
    detail = {
        "heartbeat_age_s": round(heartbeat_age_s, 3),
        "master_state": master_state,
        "dispatching": dispatching,
        "ready_workers": ready_workers,
    }
    live = liveness(heartbeat_age_s, limit_s=limit_s)
    if not live.ok:
        return Probe(False, live.reason, detail)
    if master_state is None:
        return Probe(False, "master status not published yet", detail)
    if master_state != "running":
        return Probe(False, f"master is {master_state}", detail)
    if not dispatching:
        return Probe(False, "broker is not dispatching", detail)
    if ready_workers < 1:
        return Probe(False, "no worker is ready (idle or busy)", detail)
    return Probe(True, "ready", detail)
