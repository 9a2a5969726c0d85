"""Fire times and misfire decisions: pure functions, clock passed in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from supervisor.scheduling import due_fires, first_fire, make_spec, next_fire_after, preview
from supervisor.scheduling.cron import wall_to_epoch

pytestmark = pytest.mark.timeout(30)


def at(tz: str, *parts: int, fold: int = 0) -> float:
    """Epoch seconds of a local wall-clock time (``fold=1``: second occurrence)."""
    year, month, day, hour, minute = (*parts, 0, 0)[:5]
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def local(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat()


def interval(every: float = 10, **kw: Any) -> Any:
    return make_spec(
        name="i", task_type="t", schedule_type="interval", interval_seconds=every, **kw
    )


def cron(expr: str, tz: str = "UTC", **kw: Any) -> Any:
    return make_spec(
        name="c", task_type="t", schedule_type="cron", cron_expression=expr, timezone=tz, **kw
    )


def once(when: float, **kw: Any) -> Any:
    return make_spec(name="o", task_type="t", schedule_type="once", execute_at=when, **kw)


# -- next fire: interval -----------------------------------------------------------------------
def test_interval_is_anchored_and_does_not_drift() -> None:
    spec = interval(10)
    assert next_fire_after(spec, 100, anchor_epoch=100) == 110
    assert next_fire_after(spec, 117.3, anchor_epoch=100) == 120  # late tick: same grid
    assert next_fire_after(spec, 99, anchor_epoch=100) == 100
    assert first_fire(spec, 100, anchor_epoch=100) == 100
    assert first_fire(spec, 100.5, anchor_epoch=100) == 110


def test_interval_without_anchor_starts_one_interval_later() -> None:
    assert next_fire_after(interval(10), 50) == 60


def test_interval_respects_start_and_end() -> None:
    spec = interval(60, start_at=1000, end_at=1120)
    assert preview(spec, 0, 5) == [1000, 1060, 1120]
    assert next_fire_after(spec, 1120) is None


def test_interval_float_grid_has_no_off_by_one() -> None:
    spec = interval(0.1)
    times = preview(spec, 0, 50, anchor_epoch=0.0)
    assert len(set(times)) == 50
    assert all(b > a for a, b in itertools.pairwise(times))


# -- next fire: once ---------------------------------------------------------------------------
def test_once_fires_at_execute_at_then_never() -> None:
    spec = once(500)
    assert next_fire_after(spec, 499) == 500
    assert first_fire(spec, 500) == 500
    assert next_fire_after(spec, 500) is None


# -- next fire: cron ---------------------------------------------------------------------------
def test_cron_five_fields_utc() -> None:
    assert preview(cron("*/15 * * * *"), 0, 3) == [900, 1800, 2700]


def test_cron_six_fields_lead_with_seconds() -> None:
    assert preview(cron("*/10 * * * * *"), 0.5, 3) == [10, 20, 30]
    assert next_fire_after(cron("30 0 * * * *"), 0) == 30  # second 30 of minute 0, each hour


def test_cron_reads_its_timezone() -> None:
    tokyo_nine = next_fire_after(cron("0 9 * * *", "Asia/Tokyo"), at("UTC", 2024, 5, 1))
    assert tokyo_nine == at("UTC", 2024, 5, 2, 0, 0)


def test_cron_on_the_31st_skips_short_months() -> None:
    times = preview(cron("0 0 31 * *"), at("UTC", 2024, 1, 1), 7)
    assert [datetime.fromtimestamp(t, UTC).month for t in times] == [1, 3, 5, 7, 8, 10, 12]


def test_cron_that_never_matches_has_no_next_fire() -> None:
    assert next_fire_after(cron("0 0 30 2 *"), 0) is None


def test_cron_respects_start_and_end() -> None:
    spec = cron("0 * * * *", start_at=7200, end_at=14400)
    assert preview(spec, 0, 5) == [7200, 10800, 14400]


# -- DST ---------------------------------------------------------------------------------------
# Rule (see supervisor.scheduling.cron): a local time in the spring-forward gap is not invented;
# it fires once at the first instant after the gap (03:00 local, as croniter does for a daily
# job). A local time repeated by the fall-back fires once, at its first occurrence.
@pytest.mark.parametrize(
    ("tz", "day_before", "gap_day", "day_after"),
    [
        ("Europe/Berlin", (2024, 3, 30), (2024, 3, 31), (2024, 4, 1)),
        ("America/New_York", (2024, 3, 9), (2024, 3, 10), (2024, 3, 11)),
    ],
)
def test_spring_forward_skipped_time_fires_at_end_of_gap(
    tz: str,
    day_before: tuple[int, int, int],
    gap_day: tuple[int, int, int],
    day_after: tuple[int, int, int],
) -> None:
    times = preview(cron("30 2 * * *", tz), at(tz, *day_before), 3)
    assert times == [
        at(tz, *day_before, 2, 30),
        at(tz, *gap_day, 3, 0),  # 02:30 does not exist that day: 03:00, once
        at(tz, *day_after, 2, 30),
    ]


def test_spring_forward_matches_inside_the_gap_fire_once() -> None:
    tz = "Europe/Berlin"
    times = preview(cron("*/20 * * * *", tz), at(tz, 2024, 3, 31, 1, 30), 4)
    assert [local(t, tz)[11:19] for t in times] == ["01:40:00", "03:00:00", "03:20:00", "03:40:00"]


@pytest.mark.parametrize(
    ("tz", "repeated_hour", "day"),
    [
        ("Europe/Berlin", 2, (2024, 10, 27)),
        ("America/New_York", 1, (2024, 11, 3)),
    ],
)
def test_fall_back_repeated_time_fires_once(
    tz: str, repeated_hour: int, day: tuple[int, int, int]
) -> None:
    spec = cron(f"30 {repeated_hour} * * *", tz)
    start = at(tz, *day) - 86400
    times = preview(spec, start, 3)
    first_pass = at(tz, *day, repeated_hour, 30, fold=0)
    second_pass = at(tz, *day, repeated_hour, 30, fold=1)
    assert second_pass - first_pass == 3600
    assert times[1] == first_pass
    assert second_pass not in times
    assert times[2] - times[1] == 25 * 3600  # next day, back to standard time
    # Also from inside the repeated hour's second pass: nothing more that day.
    assert next_fire_after(spec, second_pass - 60) == times[2]


def test_fall_back_hourly_cron_fires_each_local_time_once() -> None:
    tz = "America/New_York"
    times = preview(cron("0 * * * *", tz), at(tz, 2024, 11, 3, 0, 0), 2)
    assert [local(t, tz) for t in times] == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T02:00:00-05:00",
    ]


def test_wall_to_epoch_rules() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert wall_to_epoch(datetime(2024, 3, 31, 2, 30), berlin) == at(
        "Europe/Berlin", 2024, 3, 31, 3, 0
    )
    assert wall_to_epoch(datetime(2024, 10, 27, 2, 30), berlin) == at(
        "Europe/Berlin", 2024, 10, 27, 2, 30, fold=0
    )


def test_preview_lists_fire_times_across_dst() -> None:
    tz = "America/New_York"
    times = preview(cron("0 12 * * *", tz), at(tz, 2024, 3, 8), 4)
    assert [local(t, tz)[11:] for t in times] == [
        "12:00:00-05:00",
        "12:00:00-05:00",
        "12:00:00-04:00",
        "12:00:00-04:00",
    ]


# -- misfires ----------------------------------------------------------------------------------
def test_nothing_due_keeps_next_run_at() -> None:
    decision = due_fires(interval(10), 110, 109.9, anchor_epoch=100)
    assert decision.fire == () and decision.next_run_at == 110 and not decision.finished


def test_on_time_fire_under_every_policy() -> None:
    for policy in ("skip", "once", "all"):
        decision = due_fires(interval(10, misfire_policy=policy), 110, 110.02, anchor_epoch=100)
        assert decision.fire == (110,) and decision.skipped == 0
        assert decision.next_run_at == 120


def test_once_policy_runs_one_catch_up_for_an_outage() -> None:
    decision = due_fires(interval(10), 110, 1000, anchor_epoch=100)
    assert decision.fire == (1000,)
    assert decision.coalesced == 89 and decision.misfired == 0
    assert decision.next_run_at == 1010


def test_once_policy_catches_up_even_past_grace() -> None:
    decision = due_fires(cron("0 2 * * *", misfire_grace_s=60), 7200, 7200 + 86400 * 3 + 5)
    assert decision.fire == (7200 + 86400 * 3,)
    assert decision.coalesced == 3


def test_skip_policy_with_one_instance_fires_the_latest_within_grace() -> None:
    spec = interval(10, misfire_policy="skip", misfire_grace_s=30)
    decision = due_fires(spec, 110, 1000, anchor_epoch=100)
    assert decision.fire == (1000,)
    assert (decision.misfired, decision.overlapped) == (86, 3)  # 970..990: one instance only


def test_skip_policy_with_room_fires_each_within_grace() -> None:
    spec = interval(10, misfire_policy="skip", misfire_grace_s=30, overlap="queue")
    decision = due_fires(spec, 110, 1000, anchor_epoch=100)
    assert decision.fire == (970, 980, 990, 1000)
    assert decision.misfired == 86


def test_skip_policy_drops_everything_past_grace() -> None:
    decision = due_fires(
        interval(10, misfire_policy="skip", misfire_grace_s=5), 1000, 1006, anchor_epoch=100
    )
    assert decision.fire == () and decision.misfired == 1 and decision.next_run_at == 1010


def test_all_policy_fires_each_missed_due_time_capped() -> None:
    spec = interval(10, misfire_policy="all", misfire_max_catchup=3, overlap="queue")
    decision = due_fires(spec, 110, 1000, anchor_epoch=100)
    assert decision.fire == (980, 990, 1000)
    assert decision.misfired == 87
    hourly = cron("0 * * * *", misfire_policy="all", overlap="queue")
    assert due_fires(hourly, 0, 3 * 3600 + 1).fire == (0, 3600, 7200, 10800)


def test_all_policy_on_a_long_per_second_outage_is_bounded() -> None:
    spec = cron("* * * * * *", misfire_policy="all", overlap="queue")
    decision = due_fires(spec, 0, 86400)
    assert decision.fire == tuple(float(t) for t in range(86391, 86401))
    assert decision.misfired > 1000
    assert decision.next_run_at == 86401


def test_overlap_skip_keeps_only_free_instances() -> None:
    spec = interval(10, misfire_policy="all", misfire_max_catchup=3, max_instances=2)
    assert due_fires(spec, 980, 1000, anchor_epoch=100).fire == (990, 1000)
    busy = due_fires(interval(10), 110, 110, anchor_epoch=100, active_instances=1)
    assert busy.fire == () and busy.overlapped == 1 and busy.next_run_at == 120
    queued = due_fires(
        interval(10, overlap="queue"), 110, 110, anchor_epoch=100, active_instances=5
    )
    assert queued.fire == (110,)


def test_max_runs_caps_and_finishes() -> None:
    spec = interval(10, max_runs=3, misfire_policy="all", overlap="queue")
    decision = due_fires(spec, 110, 150, anchor_epoch=100, runs_done=2)
    assert len(decision.fire) == 1 and decision.finished and decision.next_run_at is None
    assert due_fires(spec, 110, 150, anchor_epoch=100, runs_done=3).fire == ()


def test_once_schedule_finishes_after_firing_or_missing() -> None:
    fired = due_fires(once(500), 500, 500.5)
    assert fired.fire == (500,) and fired.finished
    missed = due_fires(once(500, misfire_policy="skip", misfire_grace_s=60), 500, 4100)
    assert missed.fire == () and missed.misfired == 1 and missed.finished


def test_end_at_stops_fires() -> None:
    spec = interval(10, end_at=130, misfire_policy="all", overlap="queue")
    decision = due_fires(spec, 110, 1000, anchor_epoch=100)
    assert decision.fire == (110, 120, 130) and decision.finished


def test_decisions_are_pure() -> None:
    spec = cron("*/5 * * * *", "Europe/Berlin", misfire_policy="all")
    assert due_fires(spec, 0, 10_000) == due_fires(spec, 0, 10_000)
