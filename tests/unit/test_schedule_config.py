"""Schedules declared in the TOML config or the app: parsed, validated, errors that name things."""

from __future__ import annotations

import sys
import tomllib
import types
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.errors import ConfigError, SupervisorError
from supervisor.scheduling import ScheduleError
from supervisor.scheduling.config import (
    merge_declared,
    schedules_from_app,
    schedules_from_config,
    to_epoch,
)

pytestmark = pytest.mark.timeout(30)
NOW = 1_700_000_000.0
TOML = """
[supervisor]
workers = 2

[[schedules]]
name = "nightly"
task_type = "report"
schedule_type = "cron"
cron_expression = "30 2 * * *"
timezone = "Europe/Berlin"
params = { format = "pdf", pages = [1, 2] }

[[schedules]]
name = "sync"
task_type = "sync"
schedule_type = "interval"
interval_seconds = 60
start_at = 2030-01-01T00:00:00+01:00
misfire_policy = "skip"

[[schedules]]
name = "launch"
task_type = "report"
schedule_type = "once"
execute_at = 2030-06-01T09:00:00
timezone = "America/New_York"
"""


def parse(text: str, **kw: Any) -> list[Any]:
    return schedules_from_config(tomllib.loads(text), now=NOW, **kw)


def test_a_toml_file_becomes_specs_with_times_read_in_their_timezone() -> None:
    nightly, sync, launch = parse(TOML, known_task_types={"report", "sync"})
    assert (nightly.name, nightly.timezone, nightly.params) == (
        "nightly",
        "Europe/Berlin",
        {"format": "pdf", "pages": [1, 2]},
    )
    assert sync.start_at == 1893452400.0  # 2030-01-01T00:00+01:00
    assert sync.misfire_policy == "skip"
    assert launch.execute_at == 1906549200.0  # 2030-06-01T13:00Z: 09:00 EDT (UTC-4)
    assert schedules_from_config({"supervisor": {}}) == []


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (
            'name = "a"\ntask_type = "report"\nschedule_type = "cron"\n'
            'cron_expression = "61 * * * *"',
            ["schedules[0] ('a')", "field 'cron_expression'", "'61 * * * *'"],
        ),
        (
            'name = "b"\ntask_type = "report"\nschedule_type = "interval"\ninterval_seconds = -1',
            ["('b')", "interval_seconds", "positive"],
        ),
        (
            'name = "c"\ntask_type = "nope"\nschedule_type = "interval"\ninterval_seconds = 5',
            ["('c')", "field 'task_type'", "'nope' is not registered; known: report"],
        ),
        (
            'name = "d"\ntask_type = "report"\nschedule_type = "interval"\ninterval_seconds = 5\n'
            'timezone = "Mars/Base"',
            ["('d')", "timezone", "'Mars/Base'"],
        ),
        (
            'name = "e"\ntask_type = "report"\nschedule_type = "interval"\ninterval_seconds = 5\n'
            'colour = "red"',
            ["('e')", "'colour'", "known: name"],
        ),
        (
            'name = "f"\nschedule_type = "interval"\ninterval_seconds = 5',
            ["schedules[0] ('f')", "task_type", "required"],
        ),
        (
            'name = "g"\ntask_type = "report"\nschedule_type = "once"\nexecute_at = "soon"',
            ["('g')", "execute_at", "'soon'", "ISO 8601"],
        ),
    ],
)
def test_bad_declarations_name_the_schedule_and_the_field(table: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"[[schedules]]\n{table}\n", known_task_types={"report"})
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, SupervisorError)


def test_shape_errors_and_duplicate_names() -> None:
    with pytest.raises(ConfigError, match="expected a list of tables"):
        schedules_from_config({"schedules": {"name": "x"}})
    with pytest.raises(ConfigError, match=r"schedules\[1\]: expected a table"):
        schedules_from_config(
            {
                "schedules": [
                    {
                        "name": "x",
                        "task_type": "t",
                        "schedule_type": "interval",
                        "interval_seconds": 1,
                    },
                    5,
                ]
            }
        )
    twice = (
        TOML + '\n[[schedules]]\nname = "sync"\ntask_type = "sync"\n'
        'schedule_type = "interval"\ninterval_seconds = 5\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"schedules\[3\] \('sync'\): the name 'sync' is "
        r"already used by schedules\[1\]",
    ):
        parse(twice)


def test_a_once_schedule_in_the_past_still_loads() -> None:
    """It may have fired already: the store refuses a *new* past one when it upserts."""
    [spec] = parse(
        '[[schedules]]\nname = "old"\ntask_type = "t"\nschedule_type = "once"\nexecute_at = 1000\n'
    )
    assert spec.execute_at == 1000.0


@pytest.fixture
def app_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("fake_sched_app")
    module.SCHEDULES = [  # type: ignore[attr-defined]
        {
            "name": "hourly",
            "task_type": "report",
            "schedule_type": "cron",
            "cron_expression": "0 * * * *",
        }
    ]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_schedules_from_the_app_module_or_its_registry(app_module: types.ModuleType) -> None:
    [spec] = schedules_from_app("fake_sched_app:app", known_task_types={"report"})
    assert spec.name == "hourly"
    assert schedules_from_app(types.ModuleType("empty")) == []

    class Registry:
        schedules = (
            {
                "name": "r",
                "task_type": "report",
                "schedule_type": "interval",
                "interval_seconds": 5,
            },
        )

    assert [s.name for s in schedules_from_app(Registry())] == ["r"]
    with pytest.raises(ConfigError, match=r"fake_sched_app.SCHEDULES\[0\] \('hourly'\)"):
        schedules_from_app(app_module, known_task_types={"other"})


def test_a_name_declared_in_the_file_and_the_app_is_refused(app_module: types.ModuleType) -> None:
    file_specs = parse(
        '[[schedules]]\nname = "hourly"\ntask_type = "report"\n'
        'schedule_type = "interval"\ninterval_seconds = 5\n'
    )
    with pytest.raises(ConfigError, match="'hourly' is declared both"):
        merge_declared(file_specs, schedules_from_app(app_module))


def test_to_epoch_reads_numbers_iso_and_datetimes() -> None:
    assert to_epoch(5) == 5.0
    assert to_epoch("2030-01-01T00:00:00Z") == 1893456000.0
    assert to_epoch("2030-01-01T01:00:00", "Europe/Berlin") == 1893456000.0
    with pytest.raises(ScheduleError, match="time of day"):
        to_epoch(tomllib.loads("d = 2030-01-01")["d"], what="start_at")
    with pytest.raises(ScheduleError, match="start_at"):
        to_epoch(True, what="start_at")
