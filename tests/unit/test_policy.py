"""Pure policy: backoff with full jitter, crash-loop breaker, respawn delay, recycling."""

from __future__ import annotations

import math
import random

import pytest

from supervisor.policy import RestartBreaker, SlotBackoff, compute_backoff, recycle_after

pytestmark = pytest.mark.timeout(30)


# -- compute_backoff -----------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "cap"), [(0.5, 30.0), (1.0, 300.0), (0.01, 0.05), (2.0, 2.0)])
def test_backoff_stays_within_zero_and_the_capped_exponential(base: float, cap: float) -> None:
    rng = random.Random(1)
    for attempt in range(1, 40):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        for _ in range(50):
            d = compute_backoff(attempt, base_s=base, cap_s=cap, rng=rng)
            assert 0.0 <= d <= ceiling, (attempt, d, ceiling)


def test_backoff_without_jitter_doubles_until_the_cap() -> None:
    got = [compute_backoff(n, base_s=0.5, cap_s=5.0, jitter=False) for n in range(1, 8)]
    assert got == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_full_jitter_spreads_values_over_the_whole_range() -> None:
    rng = random.Random(42)
    values = [compute_backoff(5, base_s=1.0, cap_s=100.0, rng=rng) for _ in range(2000)]
    assert len(set(values)) > 1900  # not a handful of fixed steps
    assert min(values) < 0.5  # "full" jitter reaches down to ~0, not base/2 ("equal" jitter)
    assert max(values) > 15.5  # ... and up to the ceiling 16
    assert 7.0 < sum(values) / len(values) < 9.0  # uniform on [0, 16]: mean 8
    below_half = sum(v < 8.0 for v in values) / len(values)
    assert 0.44 < below_half < 0.56


def test_full_jitter_uses_the_given_rng_deterministically() -> None:
    a = [compute_backoff(3, base_s=1, cap_s=10, rng=random.Random(7)) for _ in range(3)]
    b = [compute_backoff(3, base_s=1, cap_s=10, rng=random.Random(7)) for _ in range(3)]
    assert a == b
    assert a[0] != compute_backoff(3, base_s=1, cap_s=10, rng=random.Random(8))


@pytest.mark.parametrize("attempt", [64, 1_000, 10**6, 10**18])
def test_cap_holds_for_huge_attempts(attempt: int) -> None:
    assert compute_backoff(attempt, base_s=1.0, cap_s=60.0, jitter=False) == 60.0
    rng = random.Random(0)
    for _ in range(100):
        d = compute_backoff(attempt, base_s=1.0, cap_s=60.0, rng=rng)
        assert 0.0 <= d <= 60.0
        assert math.isfinite(d)


def test_zero_base_means_no_delay() -> None:
    assert compute_backoff(3, base_s=0.0, cap_s=10.0) == 0.0
    assert compute_backoff(3, base_s=1.0, cap_s=0.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempt": 0, "base_s": 1, "cap_s": 1}, "attempt must be >= 1, got 0"),
        ({"attempt": -3, "base_s": 1, "cap_s": 1}, "got -3"),
        ({"attempt": 1.5, "base_s": 1, "cap_s": 1}, "1.5"),
        ({"attempt": True, "base_s": 1, "cap_s": 1}, "True"),
        ({"attempt": 1, "base_s": -1, "cap_s": 1}, "-1"),
        ({"attempt": 1, "base_s": 1, "cap_s": -0.5}, "-0.5"),
        ({"attempt": 1, "base_s": float("nan"), "cap_s": 1}, "nan"),
        ({"attempt": 1, "base_s": 1, "cap_s": float("nan")}, "nan"),
    ],
)
def test_bad_backoff_arguments_raise_naming_the_value(kwargs: dict, match: str) -> None:
    args = dict(kwargs)
    attempt = args.pop("attempt")
    with pytest.raises(ValueError, match=match):
        compute_backoff(attempt, **args)


# -- RestartBreaker ------------------------------------------------------------------------------
def test_breaker_trips_only_above_max_crashes_within_the_window() -> None:
    br = RestartBreaker(max_crashes=3, window_s=10.0)
    assert [br.record(t) for t in (100.0, 101.0, 102.0)] == [False, False, False]
    assert br.recent == 3
    assert br.record(103.0) is True  # the 4th crash within 10 s
    assert br.recent == 4


def test_breaker_forgets_crashes_older_than_the_window() -> None:
    br = RestartBreaker(max_crashes=3, window_s=10.0)
    for t in (0.0, 1.0, 2.0):
        br.record(t)
    assert br.record(12.5) is False  # 0, 1 and 2 have left the window
    assert br.recent == 1
    # exactly window_s ago is outside the window
    br2 = RestartBreaker(max_crashes=1, window_s=5.0)
    br2.record(0.0)
    assert br2.record(5.0) is False
    assert br2.recent == 1


def test_breaker_never_trips_at_a_steady_rate_under_the_limit() -> None:
    br = RestartBreaker(max_crashes=3, window_s=10.0)
    # one crash every 4 s: at most 3 inside any 10 s window
    assert not any(br.record(4.0 * i) for i in range(200))
    assert br.recent <= 3
    # one every 3 s: 4 inside the window -> trips
    br = RestartBreaker(max_crashes=3, window_s=10.0)
    assert any(br.record(3.0 * i) for i in range(5))


def test_breaker_disabled_with_zero_max_crashes() -> None:
    br = RestartBreaker(max_crashes=0, window_s=60.0)
    assert not any(br.record(float(i) * 0.001) for i in range(500))


# -- SlotBackoff ---------------------------------------------------------------------------------
def test_slot_backoff_grows_caps_and_resets_when_healthy() -> None:
    sb = SlotBackoff(base_s=0.1, cap_s=1.0)
    delays = [sb.crashed() for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert sb.failures == 6
    sb.healthy()
    assert sb.failures == 0
    assert sb.crashed() == pytest.approx(0.1)


# -- recycle_after -------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tasks", [0, -5])
def test_recycle_after_zero_means_never(max_tasks: int) -> None:
    assert recycle_after(max_tasks, jitter=10, rng=random.Random(0)) == 0


def test_recycle_after_without_jitter_is_exact() -> None:
    assert recycle_after(100, jitter=0) == 100


def test_recycle_after_jitter_covers_the_whole_range_and_no_more() -> None:
    rng = random.Random(3)
    values = [recycle_after(100, jitter=10, rng=rng) for _ in range(2000)]
    assert min(values) == 100
    assert max(values) == 110
    assert set(values) == set(range(100, 111))
