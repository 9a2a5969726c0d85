"""Several ``supervisor run`` nodes on one Redis and one PostgreSQL: nothing is lost when a node
dies, a task runs on any node, and any process with the URL is a producer.

A private ``redis-server`` (AOF, fsync always) per module and a fresh PostgreSQL schema per test.
Leases are short here (``--lease 2``) so that recovery is quick to see.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import supervisor
from supervisor.broker import base
from tests.helpers import wait_until
from tests.redisserver import private_redis_server
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
LEASE_S = 2.0


@pytest.fixture
def cluster(start_master: Any, redis_url: str, pg_url: str) -> Iterator[Any]:
    prefix = f"e{uuid.uuid4().hex[:8]}"

    def node(name: str, *args: str, workers: int = 2) -> Any:
        return start_master(
            "--broker", redis_url, "--key-prefix", prefix, "--lease", str(LEASE_S),
            "--node-name", name, *args,
            workers=workers, name=name, database=pg_url,
        )  # fmt: skip

    producer = supervisor.connect(broker=redis_url, key_prefix=prefix)
    node.producer = producer  # type: ignore[attr-defined]
    yield node
    producer.broker.close()  # type: ignore[attr-defined]


def test_a_killed_node_loses_no_task(cluster: Any, tmp_path: Path) -> None:
    a, b = cluster("a"), cluster("b")
    q = cluster.producer
    path = str(tmp_path / "runs.txt")
    ids = q.push_tasks(
        [{"type": "record", "params": {"path": path, "work_s": 0.3}} for _ in range(30)]
    )

    def running_on_a() -> bool:
        return any(
            (rec := q.get_task_state(t)) and rec["status"] == "running"
            and (rec["consumer"] or "").startswith("worker:")
            and a.status()["master"]["workers"]
            for t in ids
        )  # fmt: skip

    wait_until(running_on_a, 20, what="tasks running on node a")
    os.killpg(a.proc.pid, signal.SIGKILL)  # the whole tree: master, workers, node process
    a.proc.wait(10)

    def all_done() -> bool:
        return all(q.get_task_state(t)["status"] == base.SUCCEEDED for t in ids)

    wait_until(all_done, 60, what="every task to succeed on node b")
    runs = Path(path).read_text().split()
    assert set(runs) == set(ids)  # each ran, none lost
    lost = [q.get_task_state(t) for t in ids if q.get_task_state(t)["attempts"] > 1]
    assert lost, "node a's running tasks should have run again on node b"
    for rec in lost:
        assert rec["errors"][-1]["reason"] == base.REASON_WORKER_LOST
    assert "recovered" in b.log_text()


def test_a_task_running_on_one_node_is_cancelled_from_anywhere(cluster: Any) -> None:
    a, b = cluster("a", "--cancel-grace", "0.5"), cluster("b", "--cancel-grace", "0.5")
    q = cluster.producer
    tid = q.push_task({"type": "hold", "params": {"key": "held", "seconds": 60}})
    wait_until(lambda: q.get_public("held"), 20, what="the task to start on a node")
    assert q.cancel_task(tid) == "cancelling"
    rec = wait_until(
        lambda: (r := q.get_task_state(tid)) and r["status"] == base.CANCELLED and r,
        20,
        what="the owning node to stop the task",
    )
    assert rec["attempts"] == 1  # never retried
    assert a.proc.poll() is None and b.proc.poll() is None


def test_unique_keys_hold_across_producers_and_nodes(cluster: Any, redis_url: str) -> None:
    cluster("a")
    q = cluster.producer
    other = supervisor.connect(broker=redis_url, key_prefix=q.broker._keys.prefix)
    first = q.push_task({"type": "hold", "params": {"key": "u1", "seconds": 5}, "unique_key": "k"})
    again = other.push_task({"type": "hold", "params": {"key": "u2"}, "unique_key": "k"})
    assert again == first
    q.set_public("release", True)
    wait_until(lambda: q.get_task_state(first)["status"] == base.SUCCEEDED, 20, what="done")
    assert other.push_task({"type": "noop", "params": {}, "unique_key": "k"}) != first
    other.broker.close()  # type: ignore[attr-defined]


def test_status_from_a_client_names_every_node_and_its_own_scheduler(
    cluster: Any, redis_url: str
) -> None:
    import subprocess
    import sys

    cluster("a")
    cluster("b", "--no-scheduler")
    prefix = cluster.producer.broker._keys.prefix
    argv = [sys.executable, "-m", "supervisor", "status", "--broker", redis_url]

    def status() -> str:
        run = subprocess.run(
            [*argv, "--key-prefix", prefix], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    out = wait_until(
        lambda: (o := status()) and "  scheduler running" in o and "node b:" in o and o,
        30,
        what="both nodes and a's scheduler in the status",
    )
    lines = out.splitlines()
    assert lines[0] == "cluster of 2 node(s)"
    assert "  scheduler running, fired " in next(x for x in lines if x.startswith("node a:"))
    assert "scheduler" not in next(x for x in lines if x.startswith("node b:"))
    assert "scheduler of node a pid " in out  # the one a client sees: a's, named
    other = subprocess.run(
        [*argv, "--key-prefix", "nobody-here"], capture_output=True, text=True, timeout=30
    )
    assert other.returncode == 0 and other.stdout.startswith("no node has published its status")


def test_redis_lost_mid_run_loses_nothing_and_work_resumes(
    start_master: Any, pg_url: str, tmp_path: Path
) -> None:
    """kill -9 of Redis while tasks run: they finish, their reports are kept and sent once
    Redis is back (AOF, fsync always: nothing accepted is lost), and work resumes by itself."""
    with private_redis_server() as server:
        node = start_master(
            "--broker", server.url, "--lease", str(LEASE_S), "--node-name", "solo",
            workers=2, name="solo", database=pg_url,
        )  # fmt: skip
        q = supervisor.connect(broker=server.url)
        path = str(tmp_path / "runs.txt")
        ids = q.push_tasks(
            [{"type": "record", "params": {"path": path, "work_s": 1.0}} for _ in range(6)]
        )
        wait_until(
            lambda: sum(q.get_task_state(t)["status"] == "running" for t in ids) == 2,
            20,
            what="two tasks running",
        )
        server.kill()  # Redis dies under the running tasks
        wait_until(lambda: Path(path).exists(), 10, what="a task to finish while Redis is down")
        node.wait_log("broker unreachable", 10)
        wait_until(lambda: readyz(node) == 503, 10, what="/readyz to say not ready")
        server.start()  # the same port and folder: the AOF is replayed
        q.broker.close()  # type: ignore[attr-defined]
        q = supervisor.connect(broker=server.url)
        wait_until(
            lambda: all(q.get_task_state(t)["status"] == base.SUCCEEDED for t in ids),
            60,
            what="every task to succeed once Redis is back",
        )
        runs = Path(path).read_text().split()
        assert set(runs) == set(ids)
        assert node.proc.poll() is None  # the node never died
        wait_until(lambda: readyz(node) == 200, 20, what="/readyz to say ready again")
        q.broker.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://:wrongpass@127.0.0.1:{port}/0", "cannot reach Redis"),  # nothing listens
        ("redis://127.0.0.1:{port}/0", "cannot reach Redis"),
    ],
)
def test_redis_unreachable_at_start_is_one_error_and_exit_7(
    start_master: Any, url: str, words: str
) -> None:
    from tests.redisserver import free_port

    m = start_master("--broker", url.format(port=free_port()), workers=1, wait=False)
    assert m.wait_exit(30) == 7
    text = m.log_text()
    assert words in text and "wrongpass" not in text and "Traceback" not in text


def test_a_wrong_database_number_or_a_server_that_is_not_redis_is_one_error(
    start_master: Any, redis_url: str
) -> None:
    bad_db = redis_url.rsplit("/", 1)[0] + "/99"
    m = start_master("--broker", bad_db, workers=1, wait=False, name="db")
    assert m.wait_exit(30) == 7
    assert "DB index is out of range" in m.log_text() and "Traceback" not in m.log_text()
    not_redis = "redis://127.0.0.1:5432/0"  # PostgreSQL's port on this machine
    m2 = start_master("--broker", not_redis, workers=1, wait=False, name="pg")
    assert m2.wait_exit(30) == 7
    assert "127.0.0.1:5432" in m2.log_text() and "Traceback" not in m2.log_text()


def test_a_frozen_nodes_task_is_recovered_and_its_late_report_refused(
    cluster: Any, tmp_path: Path
) -> None:
    import psutil

    a, b = cluster("a", workers=1), cluster("b", workers=1)
    q = cluster.producer
    path = str(tmp_path / "runs.txt")
    tid = q.push_task({"type": "record", "params": {"path": path, "work_s": 4 * LEASE_S}})
    rec = wait_until(
        lambda: (r := q.get_task_state(tid)) and r["status"] == "running" and r, 20, what="start"
    )
    worker_pid = int(rec["consumer"].rsplit(":", 1)[1])
    frozen, other = (a, b) if worker_pid in {p.pid for p in a.descendants()} else (b, a)
    tree = [psutil.Process(frozen.proc.pid), *frozen.descendants()]
    for p in tree:
        p.suspend()  # SIGSTOP: the node stops renewing, as if cut off
    try:
        wait_until(
            lambda: q.get_task_state(tid)["attempts"] == 2, 4 * LEASE_S + 10, what="recovery"
        )
    finally:
        for p in tree:
            p.resume()
    done = wait_until(
        lambda: (r := q.get_task_state(tid)) and r["status"] == base.SUCCEEDED and r,
        30,
        what="the task to succeed on the other node",
    )
    # Once it runs again, the frozen node learns at its next renewal that the lease is lost
    # and kills its worker; had the worker finished first, its late report would be refused.
    wait_until(
        lambda: "lease was lost" in (t := frozen.log_text()) or "refused" in t,
        20,
        what="the frozen node to give the task up",
    )
    assert done["attempts"] == 2 and [e["reason"] for e in done["errors"]] == ["worker_lost"]
    assert q.get_task_state(tid) == done  # recorded once
    assert other.proc.poll() is None


def readyz(node: Any) -> int:
    """The HTTP status of the node's /readyz (0 when it does not answer)."""
    import urllib.error
    import urllib.request

    address = (node.run_dir / "http_address").read_text().strip()
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return 0


def test_a_node_cut_off_from_redis_loses_its_task_to_another(
    cluster: Any, redis_url: str, tmp_path: Path
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = TcpProxy(("127.0.0.1", port))
    proxy.start()
    try:
        cut_url = f"redis://127.0.0.1:{proxy.port}/0"
        q = cluster.producer
        prefix = q.broker._keys.prefix
        path = str(tmp_path / "runs.txt")
        cut = cluster("cut", "--broker", cut_url, "--key-prefix", prefix, workers=1)
        tid = q.push_task({"type": "record", "params": {"path": path, "work_s": 3 * LEASE_S}})
        wait_until(lambda: q.get_task_state(tid)["status"] == "running", 20, what="start")
        proxy.pause()  # the node is cut off from Redis (silence, not an error); it keeps running
        cluster("other", workers=1)
        done = wait_until(
            lambda: (r := q.get_task_state(tid)) and r["status"] == base.SUCCEEDED and r,
            60,
            what="the other node to recover the task and finish it",
        )
        proxy.resume()
        wait_until(
            lambda: "lease was lost" in (t := cut.log_text()) or "refused" in t,
            60,
            what="the cut-off node to give the task up",
        )
        assert done["attempts"] == 2 and done["errors"][-1]["reason"] == "worker_lost"
        assert q.get_task_state(tid)["status"] == base.SUCCEEDED  # recorded once
    finally:
        proxy.resume()
        proxy.stop()


def test_two_schedulers_on_one_database_fire_each_due_time_once_with_one_killed(
    cluster: Any, pg_url: str, tmp_path: Path
) -> None:
    import itertools

    from supervisor.scheduling.client import Scheduler

    a, b = cluster("a", workers=1), cluster("b", workers=1)
    api = Scheduler.from_url(pg_url)
    wait_until(api.store.registered_task_types, 20, what="the schedulers to prepare the database")
    path = tmp_path / "fires.log"
    api.add_scheduler_task(
        name="steady",
        task_type="stamp_due",
        schedule_type="interval",
        interval_seconds=1,
        params={"path": str(path)},
        misfire_policy="all",
        misfire_grace_s=60,
        overlap="queue",
    )

    def runs() -> set[tuple[float, str]]:
        """(due time, task id) of each execution (a re-run after the kill is the same pair)."""
        if not path.exists():
            return set()
        return {(float(d), t) for d, t, _ in (ln.split() for ln in path.read_text().splitlines())}

    def dues() -> list[float]:
        return [d for d, _ in runs()]

    wait_until(lambda: len(dues()) >= 3, 20, what="three fires with both nodes up")
    os.killpg(a.proc.pid, signal.SIGKILL)  # one node's whole tree, scheduler included
    a.proc.wait(10)
    seen = len(dues())
    wait_until(lambda: len(dues()) >= seen + 3, 30, what="three more fires on node b alone")

    def no_gap() -> bool:
        got = sorted(set(dues()))
        return all(round(y - x, 6) == 1.0 for x, y in itertools.pairwise(got))

    # A fire handed to a's parked worker in the instant a died runs on b once a's lease is
    # recovered: late by up to the lease, not lost.
    wait_until(no_gap, LEASE_S + 10, what="every due time to run (none lost)")
    api.close()
    got = sorted(set(dues()))
    assert len(got) == len(runs()), "a due time was fired as two tasks"
    assert all(round(y - x, 6) == 1.0 for x, y in itertools.pairwise(got)), got  # none lost
    assert b.proc.poll() is None
