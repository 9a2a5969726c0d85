"""Schedules through a real ``supervisor run``: fired into workers, across kill -9, by config.

The scheduler is the master's child process; these tests talk to it only as a user would: the
seed API (``Scheduler`` on the database URL), the ``supervisor schedules`` command, a config
file, and the task records in the broker. Handlers append ``scheduled_at task_id attempt`` to a
file, so every execution of every due time is visible.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.scheduling import ScheduleError
from supervisor.scheduling.client import Scheduler
from tests.e2e.conftest import REPO, gone
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def fires(path: Path) -> list[tuple[float, str, int]]:
    """(scheduled_at, task_id, attempt) per execution, in the order they ran."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        due, task_id, attempt = line.split()
        out.append((float(due), task_id, int(attempt)))
    return out


def scheduler_for(m: Any) -> Scheduler:
    api = Scheduler.from_url(m.database)
    wait_until(
        api.store.registered_task_types, 20, what="the scheduler process to prepare the database"
    )
    return api


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "schedules", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_schedule_added_with_the_seed_api_fires_three_times_into_workers(
    start_master: Any, tmp_path: Path
) -> None:
    m = start_master(workers=1)
    api = scheduler_for(m)
    path = tmp_path / "fires.log"
    with pytest.raises(ScheduleError, match=r"'nope' is not registered; known: .*stamp_due"):
        api.add_scheduler_task(
            name="bad", task_type="nope", schedule_type="interval", interval_seconds=1
        )
    sid = api.add_scheduler_task(
        name="three",
        task_type="stamp_due",
        schedule_type="interval",
        interval_seconds=1,
        params={"path": str(path)},
        max_runs=3,
    )
    done = wait_until(lambda: len(fires(path)) >= 3 and fires(path), 20, what="three fires")
    task = wait_until(
        lambda: (t := api.get_task(sid)) is not None and not t["enabled"] and t,
        10,
        what="the schedule to finish",
    )
    assert task["run_count"] == 3 and task["disabled_reason"] == "max_runs reached (3)"
    due = [d for d, _, _ in done]
    assert [round(b - a, 6) for a, b in itertools.pairwise(due)] == [1.0, 1.0]
    rec = m.task(done[0][1])
    assert rec is not None and rec["schedule_id"] == sid and rec["scheduled_at"] == due[0]
    assert rec["status"] == "succeeded" and rec["result"] == due[0]
    assert 0 <= rec["pushed_at"] - rec["scheduled_at"] < 0.5  # generous: a shared machine
    api.close()


def test_kill_9_of_the_master_between_fires_loses_and_doubles_no_due_time(
    start_master: Any, tmp_path: Path
) -> None:
    first = start_master(workers=1)
    api = scheduler_for(first)
    path = tmp_path / "fires.log"
    sid = api.add_scheduler_task(
        name="steady",
        task_type="stamp_due",
        schedule_type="interval",
        interval_seconds=1,
        params={"path": str(path)},
        misfire_policy="all",
        misfire_grace_s=60,
        overlap="queue",
    )
    wait_until(lambda: len(fires(path)) >= 2, 20, what="two fires before the crash")
    tree = [p.pid for p in first.descendants()]
    first.signal(signal.SIGKILL)  # right after a fire: the next one is ~1 s away
    first.wait_exit(10)
    wait_until(lambda: all(gone(pid) for pid in tree), 10, what="the old tree to die")
    before = len({tid for _, tid, _ in fires(path)})
    second = start_master(workers=1, database=first.database)
    wait_until(
        lambda: len({tid for _, tid, _ in fires(path)}) >= before + 3,
        30,
        what="fires after the restart",
    )
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0
    runs = fires(path)
    by_due: dict[float, set[str]] = {}
    for due, task_id, _ in runs:
        by_due.setdefault(due, set()).add(task_id)
    assert all(len(ids) == 1 for ids in by_due.values()), f"a due time fired twice: {by_due}"
    due = sorted(by_due)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(due)]
    assert set(gaps) == {1.0}, f"a due time was lost: {gaps}"
    task = api.get_task(sid)
    assert task is not None and task["run_count"] >= len(due)  # fired ones (the last may queue)
    api.close()


def test_config_file_schedules_are_upserted_and_the_cli_manages_them(
    start_master: Any, tmp_path: Path
) -> None:
    path = tmp_path / "fires.log"
    config = tmp_path / "supervisor.toml"
    config.write_text(
        "[[schedules]]\n"
        'name = "from-config"\ntask_type = "stamp_due"\nschedule_type = "interval"\n'
        f'interval_seconds = 0.5\nparams = {{ path = "{path}" }}\nmax_runs = 2\n'
    )
    m = start_master("--config", str(config), workers=1)
    wait_until(lambda: len(fires(path)) >= 2, 20, what="the config schedule to fire")
    db = ["--database", m.database]
    listed = json.loads(cli("list", "--json", *db).stdout)
    assert [(t["name"], t["source"], t["run_count"]) for t in listed] == [
        ("from-config", "config", 2)
    ]

    added = cli(
        "add",
        "soon",
        "--type",
        "stamp_due",
        "--at",
        "+0.3s",
        "--params",
        json.dumps({"path": str(path)}),
        *db,
    )
    assert added.returncode == 0, added.stderr
    sid = added.stdout.strip()
    done = wait_until(
        lambda: [f for f in fires(path) if sid in f[1]],
        10,
        what="the schedule added by the CLI to fire",
    )
    rec = m.task(done[0][1])
    assert rec is not None and rec["pushed_at"] - rec["scheduled_at"] < 0.5  # woken, not polled
    bad = cli("add", "x", "--type", "stamp_due", "--cron", "61 * * * *", *db)
    assert bad.returncode == 2 and "cron_expression" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    shown = cli("show", "soon", *db)
    assert shown.returncode == 0 and "once schedule done" in shown.stdout

    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    config.write_text("")  # the schedule is gone from the file: disabled, not deleted
    again = start_master("--config", str(config), workers=1, database=m.database)
    api = scheduler_for(again)
    wait_until(
        lambda: (t := api.list_tasks()[0]) and t["disabled_reason"] == "removed from config",
        10,
        what="the removed schedule to be disabled",
    )
    assert [t["name"] for t in api.list_tasks()] == ["from-config", "soon"]
    api.close()
