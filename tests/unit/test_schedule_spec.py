"""Validation at the boundary: every refusal names the field, the value and what was expected."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.scheduling import ScheduleError, make_spec, validate

pytestmark = pytest.mark.timeout(30)
NOW = 1_700_000_000.0
BASE: dict[str, Any] = {
    "name": "job",
    "task_type": "report",
    "schedule_type": "interval",
    "interval_seconds": 60,
}


def refusal(known: set[str] | None = None, **changes: Any) -> ScheduleError:
    spec = make_spec(**{**BASE, **changes})
    with pytest.raises(ScheduleError) as info:
        validate(spec, now=NOW, known_task_types=known)
    return info.value


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (
            {"schedule_type": "cron", "interval_seconds": None, "cron_expression": "61 * * * *"},
            "cron_expression",
            ["'61 * * * *'", "5 fields"],
        ),
        (
            {"schedule_type": "cron", "interval_seconds": None, "cron_expression": "* * * * * * *"},
            "cron_expression",
            ["7 fields", "6 fields 'second minute"],
        ),
        (
            {"schedule_type": "cron", "interval_seconds": None, "cron_expression": "0 0 30 2 *"},
            "cron_expression",
            ["never matches"],
        ),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone", ["'Mars/Olympus_Mons'", "IANA"]),
        ({"interval_seconds": -5}, "interval_seconds", ["-5", "positive"]),
        ({"interval_seconds": 0}, "interval_seconds", ["got 0", "positive"]),
        ({"interval_seconds": "10"}, "interval_seconds", ["'10'"]),
        (
            {"schedule_type": "once", "interval_seconds": None, "execute_at": NOW - 30},
            "execute_at",
            ["in the past", "30 s ago"],
        ),
        ({"schedule_type": "weekly"}, "schedule_type", ["'weekly'", "interval, cron, once"]),
        ({"priority": 11}, "priority", ["11", "0 to 10"]),
        ({"priority": True}, "priority", ["True"]),
        ({"max_runs": -1}, "max_runs", ["-1", ">= 0"]),
        ({"misfire_policy": "sometimes"}, "misfire_policy", ["'sometimes'", "skip, once, all"]),
        ({"misfire_grace_s": -1}, "misfire_grace_s", ["-1"]),
        ({"misfire_max_catchup": 0}, "misfire_max_catchup", [">= 1"]),
        ({"max_instances": 0}, "max_instances", [">= 1"]),
        ({"overlap": "wait"}, "overlap", ["'wait'", "skip, queue"]),
        ({"name": ""}, "name", ["non-empty"]),
        ({"params": {"f": object()}}, "params", ["JSON-serializable"]),
        ({"cron_expression": "* * * * *"}, "cron_expression", ["only used with schedule_type"]),
        ({"interval_seconds": None}, "interval_seconds", ["required"]),
        ({"start_at": NOW + 100, "end_at": NOW}, "end_at", ["before start_at"]),
        ({"end_at": NOW - 10}, "end_at", ["no fire time"]),
    ],
)
def test_refusal_names_field_value_and_expectation(
    changes: dict[str, Any], field: str, words: list[str]
) -> None:
    error = refusal(**changes)
    assert error.field == field
    assert field in str(error)
    for word in words:
        assert word in str(error)


def test_unregistered_task_type_lists_the_known_ones() -> None:
    error = refusal(known={"report", "cleanup"}, task_type="reprot")
    assert error.field == "task_type"
    assert "'reprot' is not registered; known: cleanup, report" in str(error)


def test_every_problem_is_reported_at_once() -> None:
    error = refusal(priority=99, timezone="Nowhere/Land")
    assert {p.split()[0] for p in error.problems} == {"priority", "timezone"}


def test_unknown_field_is_named() -> None:
    with pytest.raises(ScheduleError, match="'intervall'") as info:
        make_spec(**BASE, intervall=5)
    assert info.value.field == "intervall"


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "schedule_type": "cron",
            "interval_seconds": None,
            "cron_expression": "0 2 * * *",
            "timezone": "Europe/Berlin",
        },
        {"schedule_type": "cron", "interval_seconds": None, "cron_expression": "*/5 * * * * *"},
        {"schedule_type": "once", "interval_seconds": None, "execute_at": NOW + 5},
        {"params": {"message": "你好", "n": [1, 2]}, "priority": 0, "max_runs": 5},
    ],
)
def test_valid_specs_pass(changes: dict[str, Any]) -> None:
    validate(make_spec(**{**BASE, **changes}), now=NOW, known_task_types={"report"})


def test_past_execute_at_allowed_when_not_checking_the_past() -> None:
    spec = make_spec(name="o", task_type="t", schedule_type="once", execute_at=NOW - 3600)
    validate(spec, now=NOW, check_past=False)
