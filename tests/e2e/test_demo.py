"""The demo app (``supervisor run --app supervisor.demo``) tells a task's whole story in its log
within half a minute, and restarting it keeps exactly one producer."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.broker.base import ACTIVE_STATUSES
from supervisor.demo import PRODUCER_SCHEDULE
from supervisor.scheduling.client import Scheduler
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)

WORKERS = 2
# The shared log vocabulary (README "The log"): one pattern per kind of line the demo must show.
LINES = {
    "success": re.compile(r"^task \S+ \((cpu|flaky)\) succeeded in \d+\.\d{3} s$"),
    "retry": re.compile(
        r"^task \S+ \((flaky|stuck)\) failed \((error|timeout): .*\), "
        r"attempt \d+ of \d+; retrying in \d+\.\d s$"
    ),
    "hard timeout": re.compile(
        r"^worker (?P<slot>\d+) \(pid (?P<pid>\d+)\) killed: task \S+ \(stuck\) "
        r"passed its hard timeout of [\d.]+ s$"
    ),
    "replacement": re.compile(r"^worker (?P<slot>\d+) replaced: new pid \d+ \(was (?P<pid>\d+), "),
    "dead": re.compile(r"^task \S+ \((flaky|stuck)\) is dead after \d+ attempts: \w+: "),
}
LEVELS = {
    "success": "INFO",
    "retry": "WARNING",
    "hard timeout": "WARNING",
    "replacement": "INFO",
    "dead": "ERROR",
}


def demo(start_master: Any, *args: str, database: str | None = None) -> Any:
    return start_master(
        "--app",
        "supervisor.demo",
        "--log-level",
        "INFO",  # what a user sees: the fixture's DEBUG would show successes anyway
        "--graceful-timeout",
        "5",
        *args,
        workers=WORKERS,
        database=database,
    )


def found(records: list[dict[str, Any]]) -> dict[str, list[tuple[re.Match[str], str]]]:
    """Each kind of line -> (match, level) of the log records that are one."""
    out: dict[str, list[tuple[re.Match[str], str]]] = {kind: [] for kind in LINES}
    for rec in records:
        for kind, pattern in LINES.items():
            m = pattern.search(str(rec.get("message", "")))
            if m:
                out[kind].append((m, str(rec.get("level"))))
    return out


def test_demo_log_shows_success_retry_timeout_kill_replacement_and_dead(
    start_master: Any,
) -> None:
    m = demo(start_master, "--log-successes")
    deadline = time.monotonic() + 40  # the demo's timings put all of it in its first ~15 s
    seen = found(m.logs())
    while any(not v for v in seen.values()) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling a real process's log, with the deadline above
        seen = found(m.logs())
    missing = [kind for kind, v in seen.items() if not v]
    assert not missing, f"no {', '.join(missing)} line in the demo's log:\n{m.log_text()[-4000:]}"

    for kind, matches in seen.items():
        assert {level for _, level in matches} == {LEVELS[kind]}, kind

    # Worker slots are stable numbers 0..N-1, and a killed worker's slot is the one replaced.
    def pairs(kind: str) -> set[tuple[str, str]]:
        return {(mt["slot"], mt["pid"]) for mt, _ in found(m.logs())[kind]}

    killed = pairs("hard timeout")
    assert {int(slot) for slot, _ in killed | pairs("replacement")} <= set(range(WORKERS))
    wait_until(lambda: killed <= pairs("replacement"), 15, what=f"replacements of {killed}")
    # The broker's line tells a failed attempt; the worker adds none of its own at INFO or above.
    worker_failures = [
        r["message"]
        for r in m.logs()
        if r.get("component") == "worker"
        and r.get("level") not in ("DEBUG", "TRACE")
        and "failed" in str(r.get("message"))
    ]
    assert not worker_failures, worker_failures[:3]


def live_producers(m: Any) -> list[dict[str, Any]]:
    """The ``produce`` task records that are queued, delayed or running."""
    return [r for r in m.queue.list_tasks(type="produce") if r["status"] in ACTIVE_STATUSES]


def test_restarting_the_demo_keeps_exactly_one_producer(start_master: Any, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'demo.db'}"
    for _ in range(2):
        m = demo(start_master, database=database)
        since = time.time()
        wait_until(
            lambda m=m, since=since: m.queue.list_tasks(type="produce", since=since),
            timeout_s=20,
            what="the demo's producer to push a produce task",
        )
        m.signal(signal.SIGTERM)
        assert m.wait_exit(30) == 0

    m = demo(start_master, database=database)
    since = time.time()
    worst: list[dict[str, Any]] = []  # the most produce tasks seen live at once

    def produced_twice() -> bool:
        nonlocal worst
        live = live_producers(m)
        worst = max(worst, live, key=len)
        done = m.queue.list_tasks(status="succeeded", type="produce", since=since)
        return len(done) >= 2

    wait_until(produced_twice, timeout_s=30, what="two produce tasks to succeed after a restart")
    brief = [(r["task_id"], r["status"], r["schedule_id"], r["scheduled_at"]) for r in worst]
    assert len(worst) <= 1, f"{len(worst)} live produce tasks at once: {brief}"

    scheduler = Scheduler.from_url(database)
    try:
        producers = [s for s in scheduler.list_tasks() if s["task_type"] == "produce"]
    finally:
        scheduler.close()
    assert [s["name"] for s in producers] == [PRODUCER_SCHEDULE]
