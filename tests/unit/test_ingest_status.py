"""The ingest's counters, its lag (a moving maximum) and its status document (pure)."""

from __future__ import annotations

import pytest

from supervisor.ingest.status import IngestStats, LagWindow, component_name, status_doc

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000.0


def test_the_lag_is_a_moving_maximum_over_the_window() -> None:
    lag = LagWindow(window_s=10.0)
    assert lag.value(T0) == 0.0
    lag.record(3.0, T0)
    lag.record(1.0, T0 + 0.5)
    lag.record(2.0, T0 + 4)
    assert lag.value(T0 + 5) == 3.0
    assert lag.value(T0 + 10.5) == 2.0  # the 3 s of second T0 left the window
    assert lag.value(T0 + 20) == 0.0  # nothing came: 0
    lag.record(-1.0, T0 + 21)  # a clock a little ahead of ours: never negative
    assert lag.value(T0 + 21) == 0.0


def test_a_held_batch_makes_the_lag_grow_until_it_is_accepted() -> None:
    stats = IngestStats()
    stats.lag.record(0.5, T0)
    stats.held_since = T0 - 2.0
    assert stats.lag_s(T0 + 3) == 5.0
    stats.held_since = None
    assert stats.lag_s(T0 + 3) == 0.5


def test_the_document_has_exactly_the_agreed_fields() -> None:
    stats = IngestStats(ingested=5, duplicates=2, rejected=1)
    stats.lag.record(1.25, T0)
    doc = status_doc(
        node="n1",
        queue="jobs",
        url="amqp://u:***@h/jobs",
        stats=stats,
        connected=True,
        now=T0 + 1,
    )
    assert doc == {
        "kind": "ingest",
        "node": "n1",
        "queue": "jobs",
        "url": "amqp://u:***@h/jobs",
        "ingested": 5,
        "duplicates": 2,
        "rejected": 1,
        "lag_s": 1.25,
        "connected": True,
    }
    assert component_name("n1", "jobs") == "ingest:n1:jobs"


def test_a_restarted_child_continues_the_counts_of_its_last_document() -> None:
    stats = IngestStats()
    stats.resume({"kind": "ingest", "ingested": 7, "duplicates": 1, "rejected": 2, "lag_s": 9})
    assert (stats.ingested, stats.duplicates, stats.rejected) == (7, 1, 2)
    other = IngestStats()
    other.resume({"kind": "scheduler", "ingested": 7})  # not ours: ignored
    other.resume({"kind": "ingest", "ingested": -1, "duplicates": "x", "rejected": True})
    other.resume(None)
    assert (other.ingested, other.duplicates, other.rejected) == (0, 0, 0)
