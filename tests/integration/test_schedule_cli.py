"""``supervisor schedules ...`` on a real SQLite file: output, DST previews, errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from supervisor.cli.main import main
from supervisor.scheduling.models import scheduler_task

pytestmark = pytest.mark.timeout(60)


class Cli:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["schedules", *args, "--database", self.url])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(f"sqlite:///{tmp_path / 'schedules.db'}", capsys)


def test_add_list_show_pause_resume_delete(cli: Cli) -> None:
    sid = cli.ok(
        "add",
        "sync",
        "--type",
        "sync",
        "--every",
        "5m",
        "--params",
        '{"a": 1}',
        "--priority",
        "8",
        "--max-runs",
        "3",
    ).strip()
    cron = cli.json(
        "add",
        "nightly",
        "--type",
        "report",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--misfire-policy",
        "skip",
        "--misfire-grace",
        "600",
    )
    assert cron["misfire_policy"] == "skip" and cron["misfire_grace_s"] == 600
    table = cli.ok("list").splitlines()
    assert table[0].split() == ["ID", "NAME", "TYPE", "SCHEDULE", "NEXT", "RUN", "RUNS", "STATE"]
    assert sid in table[1] and "every 300s" in table[1] and "enabled" in table[1]
    assert "cron '30 2 * * *' Europe/Berlin" in table[2]
    listed = cli.json("list")
    assert [(t["name"], t["params"], t["priority"]) for t in listed] == [
        ("sync", {"a": 1}, 8),
        ("nightly", {}, 5),
    ]
    assert "paused" in cli.ok("pause", "sync")  # by unique name
    assert [t["name"] for t in cli.json("list", "--enabled")] == ["nightly"]
    shown = cli.ok("show", sid[:8])  # by id prefix
    assert "disabled_reason: paused" in shown and "max_runs: 3" in shown
    assert cli.json("resume", sid)["ok"] is True
    assert cli.json("show", sid)["enabled"] is True
    assert "deleted" in cli.ok("delete", "nightly")
    assert [t["name"] for t in cli.json("list")] == ["sync"]


def test_once_at_a_relative_time_and_paused_adds(cli: Cli) -> None:
    soon = cli.json("add", "soon", "--type", "t", "--at", "+90s")
    assert soon["schedule_type"] == "once" and soon["next_run_at"] == soon["execute_at"]
    paused = cli.json("add", "later", "--type", "t", "--every", "10", "--paused")
    assert paused["enabled"] is False and paused["disabled_reason"] == "paused"


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        # Spring forward: 02:30 does not exist on the last Sunday of March; it fires at 03:00 CEST.
        (
            "Europe/Berlin",
            "2030-03-29T00:00",
            [
                "2030-03-29 02:30:00 CET (+0100)",
                "2030-03-30 02:30:00 CET (+0100)",
                "2030-03-31 03:00:00 CEST (+0200)",
                "2030-04-01 02:30:00 CEST (+0200)",
            ],
        ),
        # Fall back: 01:30 happens twice on the first Sunday of November; it fires once, at
        # the first.
        (
            "America/New_York",
            "2030-11-02T00:00",
            [
                "2030-11-02 01:30:00 EDT (-0400)",
                "2030-11-03 01:30:00 EDT (-0400)",
                "2030-11-04 01:30:00 EST (-0500)",
                "2030-11-05 01:30:00 EST (-0500)",
            ],
        ),
    ],
)
def test_next_previews_fire_times_across_dst(
    cli: Cli, tz: str, start: str, expected: list[str]
) -> None:
    at = "30 2 * * *" if tz == "Europe/Berlin" else "30 1 * * *"
    cli.ok("add", "daily", "--type", "t", "--cron", at, "--timezone", tz, "--start", start)
    lines = cli.ok("next", "daily", "-n", "4").splitlines()
    assert [line.split(None, 1)[1].rsplit("   ", 1)[0] for line in lines] == expected
    preview = cli.json("next", "daily", "-n", "4")
    assert len(preview) == 4 and all(p["utc"].endswith("Z") for p in preview)
    assert preview[2]["at"] - preview[1]["at"] != 86400  # the day with the transition


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["add", "x", "--type", "t", "--cron", "61 * * * *"], ["cron_expression", "'61 * * * *'"]),
        (["add", "x", "--type", "t", "--every", "-5"], ["--every: must be positive, got '-5'"]),
        (["add", "x", "--type", "t", "--every=-30s"], ["--every: must be positive, got '-30s'"]),
        (["add", "x", "--type", "t", "--every", "-30s"], ["--every: must be positive, got '-30s'"]),
        (["add", "x", "--type", "t", "--every", "0m"], ["--every: must be positive, got '0m'"]),
        (["add", "x", "--type", "t", "--every", "soon"], ["--every", "'soon'"]),
        (["add", "x", "--type", "t", "--every", "5", "--timezone", "Mars/X"], ["timezone"]),
        (["add", "x", "--type", "t", "--at", "2001-01-01T00:00"], ["execute_at", "in the past"]),
        (["add", "x", "--type", "t", "--at", "whenever"], ["--at", "'whenever'", "+DURATION"]),
        (["add", "x", "--type", "t", "--every", "5", "--params", "[1]"], ["--params", "list"]),
        (["add", "x", "--type", "t", "--every", "5", "--priority", "11"], ["priority", "0 to 10"]),
    ],
)
def test_bad_input_is_one_line_naming_the_field_exit_2(
    cli: Cli, args: list[str], words: list[str]
) -> None:
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("supervisor: ")
    for word in words:
        assert word in err
    assert cli.json("list") == []


def test_unknown_and_ambiguous_schedules(cli: Cli) -> None:
    code, _, err = cli("show", "nope")
    assert code == 1 and "no schedule with id or name 'nope'" in err
    first = cli.ok("add", "twin-a", "--type", "t", "--every", "5").strip()
    second = cli.ok("add", "twin-b", "--type", "t", "--every", "6").strip()
    engine = sa.create_engine(cli.url)
    with engine.begin() as conn:  # two ids that share a prefix
        for old, new in ((first, "abcd-0001"), (second, "abcd-0002")):
            conn.execute(
                scheduler_task.update().where(scheduler_task.c.task_id == old).values(task_id=new)
            )
    engine.dispose()
    code, _, err = cli("pause", "abcd")
    assert code == 2 and "matches 2 schedules (abcd-0001, abcd-0002)" in err
    assert "paused abcd-0002" in cli.ok("pause", "abcd-0002")  # an exact id


def test_a_taken_name_is_refused_naming_the_holder_exit_2(cli: Cli) -> None:
    sid = cli.ok("add", "nightly", "--type", "t", "--cron", "0 2 * * *").strip()
    code, out, err = cli("add", "nightly", "--type", "t", "--every", "5")
    assert (code, out) == (2, "")
    assert err.strip() == f"supervisor: schedule name 'nightly' is taken by schedule {sid}"
    code, _, err = cli("add", "0e0f4a31-2b41-4c1e-9d7a-7d65a3c0b0a1", "--type", "t", "--every", "5")
    assert code == 2 and "looks like a schedule id" in err
    assert [t["name"] for t in cli.json("list")] == ["nightly"]


def test_show_pause_resume_next_delete_take_a_name(cli: Cli) -> None:
    sid = cli.ok("add", "sync", "--type", "t", "--every", "1h").strip()
    assert cli.json("show", "sync")["id"] == sid
    assert cli.json("pause", "sync") == {"id": sid, "action": "pause", "ok": True}
    assert cli.json("resume", "sync")["id"] == sid
    assert len(cli.json("next", "sync", "-n", "3")) == 3
    assert cli.json("delete", "sync")["id"] == sid
    assert cli.json("list") == []


def test_json_outputs_call_the_id_id_and_are_strict(cli: Cli) -> None:
    added = cli.json("add", "sync", "--type", "t", "--every", "5")
    assert "task_id" not in added and len(added["id"]) == 36
    [listed] = cli.json("list")
    shown = cli.json("show", added["id"])
    assert listed["id"] == shown["id"] == added["id"]
    assert "task_id" not in listed and "task_id" not in shown
    assert "task_id" not in cli.json("pause", "sync")
    engine = sa.create_engine(cli.url)
    with engine.begin() as conn:  # a row edited by hand
        conn.execute(scheduler_task.update().values(misfire_grace_s=float("inf")))
    engine.dispose()
    out = cli.ok("show", "sync", "--json")
    assert "Infinity" not in out and "NaN" not in out
    assert json.loads(out, parse_constant=pytest.fail)["misfire_grace_s"] is None


def test_an_unusable_database_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    code = main(["schedules", "list", "--database", url])
    err = capsys.readouterr().err
    assert code == 1 and "cannot open the scheduler database" in err
    assert len(err.strip().splitlines()) == 1
