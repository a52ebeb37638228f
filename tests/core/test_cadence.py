"""The writer's tick schedule: no drift, no bunching after a stall, monotonic, all counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.core.cadence import Cadence, Wake

starts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
intervals = st.floats(min_value=0.01, max_value=3600.0, allow_nan=False)
# How late each wake-up is, in intervals: mostly on time, sometimes a long stall.
lateness = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=50.0, allow_nan=False)),
    max_size=40,
)


def run(cadence: Cadence, late_by: list[float]) -> tuple[list[float], list[int], int]:
    """Drive the schedule like the writer: sleep until due, wake late by the given amount."""
    k, ran_at, missed = 1, [], []
    for late in late_by:
        now = cadence.due(k) + late * cadence.interval
        wake = cadence.woke(k, now)
        ran_at.append(now)
        missed.append(wake.missed)
        k = wake.next_k
    return ran_at, missed, k


def test_on_time_wake_misses_nothing() -> None:
    c = Cadence(100.0, 5.0)
    assert c.due(1) == 105.0
    assert c.woke(1, 105.0) == Wake(missed=0, next_k=2)
    assert c.woke(1, 109.9) == Wake(missed=0, next_k=2)  # late, but before tick 2 was due


def test_a_stall_skips_the_ticks_it_covered() -> None:
    c = Cadence(0.0, 5.0)
    # Woke at 23 s for tick 1 (due at 5): ticks 2, 3, 4 (10, 15, 20 s) were missed.
    assert c.woke(1, 23.0) == Wake(missed=3, next_k=5)
    assert c.due(5) == 25.0


@pytest.mark.parametrize(("start", "interval"), [(float("nan"), 1.0), (0.0, 0.0), (0.0, -1.0)])
def test_invalid_schedules_are_refused(start: float, interval: float) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        Cadence(start, interval)


@given(starts, intervals, st.integers(min_value=1, max_value=10**6))
def test_no_drift_due_times_come_from_start(start: float, interval: float, k: int) -> None:
    c = Cadence(start, interval)
    assert c.due(k) == start + k * interval


@given(starts, intervals, lateness)
def test_no_drift_whatever_the_wake_ups(start: float, interval: float, late: list[float]) -> None:
    # Each tick runs at (or after) its own slot start + k * interval, however late the
    # ones before it ran: lateness never accumulates into the schedule.
    c = Cadence(start, interval)
    k = 1
    for x in late:
        now = c.due(k) + x * interval
        assert c.due(k) == start + k * interval
        k = c.woke(k, now).next_k


@given(starts, intervals, lateness)
def test_no_bunching_after_a_stall(start: float, interval: float, late: list[float]) -> None:
    c = Cadence(start, interval)
    k = 1
    for x in late:
        now = c.due(k) + x * interval
        nxt = c.woke(k, now).next_k
        # The next tick is not due yet: a stall never makes ticks run back to back.
        assert c.due(nxt) > now
        assert c.due(nxt) - now <= interval * (1 + 1e-9)
        k = nxt


@given(starts, intervals, lateness)
def test_only_passed_slots_count_as_missed(
    start: float, interval: float, late: list[float]
) -> None:
    c = Cadence(start, interval)
    k = 1
    for x in late:
        now = c.due(k) + x * interval
        wake = c.woke(k, now)
        if wake.missed:
            assert c.due(k + wake.missed) <= now
        k = wake.next_k


def test_a_wake_on_a_slot_boundary_is_not_followed_by_an_immediate_tick() -> None:
    # 0.15 // 0.01 == 14.0 in floating point: plain floor division would make tick 16
    # due exactly now and run it back to back with tick 1.
    c = Cadence(0.0, 0.01)
    now = c.due(1) + 15 * 0.01
    wake = c.woke(1, now)
    assert c.due(wake.next_k) > now
    assert wake.missed == wake.next_k - 2


@given(starts, intervals, lateness)
def test_monotonic_and_every_slot_counted_once(
    start: float, interval: float, late: list[float]
) -> None:
    c = Cadence(start, interval)
    ran_at, missed, next_k = run(c, late)
    assert ran_at == sorted(ran_at)
    assert all(m >= 0 for m in missed)
    # Slots 1 .. next_k - 1 were each either run or missed, exactly once.
    assert len(ran_at) + sum(missed) == next_k - 1


@given(starts, intervals, st.integers(min_value=1, max_value=10**4))
def test_due_is_strictly_increasing(start: float, interval: float, k: int) -> None:
    c = Cadence(start, interval)
    assert c.due(k + 1) > c.due(k)
    assert c.woke(k, c.due(k)).next_k == k + 1
