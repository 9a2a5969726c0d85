"""Two ``supervisor run`` nodes on one Redis: tasks are handed out in one global priority order
across the nodes, and a unique key has at most one live task while producers on several
processes push it at the same moment.

What is ordered is the hand-out, not the start: every hand-out is one Lua script call, so
Redis serializes them, whereas ``started_at`` is the clock of each worker taken before its call
and two workers' calls may cross on the way. The order of hand-outs is read from the events
stream, where each script appends one entry per state change (``status`` running at hand-out)
with an id Redis makes strictly increasing. The nodes' history writer would delete those
entries as it copies them to SQL, so the test holds the writer's lock for the whole test: no
node writes history, and the stream keeps every entry.

A private ``redis-server`` per module, a key prefix of its own per test.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import supervisor
from supervisor.broker import base
from supervisor.broker.redis.keys import Keys
from tests.cluster_support import GATE_OPEN, produce
from tests.helpers import wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
WORKERS = 2  # per node
FINAL = {base.SUCCEEDED, "dead", "cancelled"}


class Cluster:
    """Nodes on one key prefix, a producer, and the prefix's events stream."""

    def __init__(self, start_master: Any, url: str) -> None:
        self.start_master = start_master
        self.url = url
        self.prefix = f"o{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        self.redis = redis.Redis.from_url(url)
        # The history writer's lock (HistoryWriter.lock_key), taken before any node starts:
        # no node becomes the writer, so no entry of the events stream is deleted.
        assert self.redis.set(f"{self.keys.tag}:history", "test-observer", nx=True)
        self.producer = supervisor.connect(broker=url, key_prefix=self.prefix)

    def node(self, name: str, workers: int = WORKERS) -> Any:
        return self.start_master(
            "--broker", self.url, "--key-prefix", self.prefix, "--node-name", name,
            "--app", "tests.cluster_support",
            workers=workers, name=name,
        )  # fmt: skip

    def events(self) -> list[tuple[int, str, str, str]]:
        """(Redis ms, task id, status, the script's ``at``) of every state change, in the
        order they happened."""
        out = []
        for entry_id, f in self.redis.xrange(self.keys.name("events"), "-", "+"):
            ms = int(entry_id.split(b"-")[0])
            out.append((ms, f[b"id"].decode(), f[b"status"].decode(), f[b"at"].decode()))
        return out

    def wait_final(self, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            recs = {t: self.producer.get_task(t) for t in ids}
            return recs if all(r and r["status"] in FINAL for r in recs.values()) else None

        recs = wait_until(done, timeout_s, what=f"{len(ids)} tasks to finish")
        bad = {t: (r["status"], r["error"]) for t, r in recs.items() if r["status"] != "succeeded"}
        assert not bad, f"tasks that did not succeed: {bad}"
        return recs

    def close(self) -> None:
        self.producer.broker.close()  # type: ignore[attr-defined]
        self.redis.close()


@pytest.fixture
def cluster(start_master: Any, redis_url: str) -> Iterator[Cluster]:
    c = Cluster(start_master, redis_url)
    try:
        yield c
    finally:
        c.close()  # the nodes are killed by start_master's own teardown


def test_tasks_are_handed_out_in_one_priority_order_across_two_busy_nodes(
    cluster: Cluster,
) -> None:
    """Both nodes busy, then 55 tasks of priorities 0-10 pushed in a shuffled order, then the
    nodes freed: the hand-outs (serialized in Redis) follow exactly priority, then push order,
    across both nodes; and no worker is handed a task before it finished its last one (no
    prefetch: what is handed out is what starts)."""
    cluster.node("a")
    cluster.node("b")
    q = cluster.producer
    total = 2 * WORKERS
    gates = [q.push_task({"type": "gate", "params": {}, "priority": 10}) for _ in range(total)]
    wait_until(
        lambda: all(q.get_task(t)["status"] == "running" for t in gates),
        30,
        what="every worker of both nodes to hold a gate",
    )

    rng = random.Random(20261203)
    plan = [(prio, n) for prio in range(11) for n in range(5)]
    rng.shuffle(plan)  # FIFO within a priority is push order, not the order of the plan
    pushed: list[tuple[int, str]] = []  # (priority, id) in push order
    for prio, _ in plan:
        params = {"work_s": rng.uniform(0.01, 0.06)}
        pushed.append((prio, q.push_task({"type": "ordered", "params": params}, priority=prio)))
    assert q.stats()["queued"] == len(pushed)  # all of them wait: every worker is gated
    q.set_public(GATE_OPEN, True)
    recs = cluster.wait_final([t for _, t in pushed], 60)
    gate_recs = cluster.wait_final(gates, 30)

    expected = [t for _, t in sorted(pushed, key=lambda p: -p[0])]  # a stable sort: FIFO ties
    events = cluster.events()
    mix = set(expected)
    handed = [t for _, t, status, _ in events if status == "running" and t in mix]
    assert handed == expected, _first_difference(handed, expected, pushed)

    # The records agree with the stream: started_at is stamped by the hand-out's script.
    at = {t: float(when) for _, t, status, when in events if status == "running"}
    for t, rec in recs.items():
        assert rec["attempts"] == 1 and rec["result"]["started_at"] == rec["started_at"]
        assert rec["started_at"] == pytest.approx(at[t], abs=1e-6), (t, rec["started_at"])

    # Where each ran: both nodes took part, on their own workers.
    ran = {t: r["result"] for t, r in {**recs, **gate_recs}.items()}
    nodes = Counter(ran[t]["node"] for t in mix)
    assert set(nodes) == {"a", "b"}, nodes
    assert {ran[t]["node"] for t in gates} == {"a", "b"}
    consumers = {(r["node"], r["consumer"]) for r in ran.values()}
    assert len(consumers) == total, consumers

    # A worker is handed its next task only after its last one finished (one per worker at
    # a time), so at most one task per worker is out at any point of the order.
    out: dict[tuple[str, str], str | None] = dict.fromkeys(consumers)
    busy = 0
    for _, t, status, _ in events:
        if t not in ran:
            continue
        who = (ran[t]["node"], ran[t]["consumer"])
        if status == "running":
            assert out[who] is None, f"{who} was handed {t} while it still held {out[who]}"
            out[who], busy = t, busy + 1
            assert busy <= total
        elif status in FINAL:
            assert out[who] == t, f"{t} finished on {who}, which held {out[who]}"
            out[who], busy = None, busy - 1
    assert busy == 0


def _first_difference(got: list[str], want: list[str], pushed: list[tuple[int, str]]) -> str:
    where = {t: f"priority {p}, pushed #{n}" for n, (p, t) in enumerate(pushed)}
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"hand-out #{i} was {g} ({where[g]}), expected {w} ({where[w]})"
    return f"{len(got)} hand-outs, expected {len(want)}"


PRODUCERS = 4
GENERATIONS = 8  # each producer pushes until it got this many different ids for every key
UNIQUE_KEYS = ["k0", "k1", "k2", "k3"]


def test_unique_keys_hold_when_producers_on_several_processes_push_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Four spawned producers, released together by a barrier, push tasks on four unique keys
    (each until it saw eight holders of every key) while two nodes run them: a key never has
    two live tasks (from its push to its finish, in the order of the events stream) and never
    two running handlers (in the order of their own appends); each push got a new id or the
    live holder's; nothing is lost."""
    cluster.node("a")
    cluster.node("b")
    runs = tmp_path / "runs.txt"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PRODUCERS)
    outs = [tmp_path / f"producer{i}.json" for i in range(PRODUCERS)]
    common = {"url": cluster.url, "prefix": cluster.prefix, "barrier": barrier}
    common |= {"keys": UNIQUE_KEYS, "generations": GENERATIONS, "runs_path": str(runs)}
    procs = [
        ctx.Process(
            target=produce, kwargs={**common, "index": i, "out_path": str(o)}, name=f"producer{i}"
        )
        for i, o in enumerate(outs)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(90)
        assert [p.exitcode for p in procs] == [0] * PRODUCERS
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    pushes = [(i, *row) for i, o in enumerate(outs) for row in json.loads(o.read_text())]
    created = {own: key for _, key, own, got, _, _ in pushes if got == own}
    recs = cluster.wait_final(list(created), 90)

    # Every push returned a task of its key: its own new one, or one another push created.
    for i, key, own, got, _, _ in pushes:
        assert created.get(got) == key, f"producer {i}'s push {own} on {key} returned {got}"
    assert all(recs[t]["unique_key"] == k and recs[t]["attempts"] == 1 for t, k in created.items())
    refused = [own for _, _, own, got, _, _ in pushes if got != own]
    assert all(cluster.producer.get_task(own) is None for own in refused)  # nothing written

    # At most one live task per key: in the serialized order of the scripts, a key's next
    # task is created only after its holder finished.
    events = [e for e in cluster.events() if e[1] in created]
    live: dict[str, str | None] = dict.fromkeys(UNIQUE_KEYS)
    span: dict[str, list[int]] = {}
    for ms, t, status, _ in events:
        key = created[t]
        if status == "queued":
            assert live[key] is None, f"{t} was created on {key} while {live[key]} was live"
            live[key], span[t] = t, [ms, ms]
        elif status == "running":
            assert live[key] == t
        elif status in FINAL:
            assert live[key] == t
            live[key] = None
            span[t][1] = ms
    assert set(span) == set(created) and not any(live.values())

    # A push that got a holder's id ran while that holder was live (Redis ms against the
    # producer's clock around the call, on one machine; 2 ms for rounding).
    for _, _, own, got, t0, t1 in pushes:
        if got != own:
            born, gone = span[got]
            assert born <= t1 * 1000 + 2 and gone >= t0 * 1000 - 2, (
                f"push {own} in [{t0:.3f}, {t1:.3f}] got {got}, live in "
                f"[{born / 1000:.3f}, {gone / 1000:.3f}]"
            )

    # Never two handlers of one key at once, in the order of their own appends.
    running: dict[str, str | None] = dict.fromkeys(UNIQUE_KEYS)
    started: Counter[str] = Counter()
    for line in runs.read_text().splitlines():
        what, key, t = line.split()
        if what == "start":
            assert running[key] is None, f"{t} started on {key} while {running[key]} ran"
            running[key] = t
            started[t] += 1
        else:
            assert running[key] == t
            running[key] = None
    assert started == Counter(dict.fromkeys(created, 1))  # each ran once: none lost

    # The test did what it says: keys were contended across producers, and both nodes ran.
    by_key = Counter(created.values())
    assert len(refused) > len(created) and min(by_key.values()) >= GENERATIONS, by_key
    holders = defaultdict(set)
    for i, _, _, got, _, _ in pushes:
        holders[got].add(i)
    assert any(len(who) > 1 for who in holders.values())  # one id returned to several producers
    assert {r["result"]["node"] for r in recs.values()} == {"a", "b"}
