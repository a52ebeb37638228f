"""RowTimes: the pure rule that keeps row timestamps strictly increasing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.core.clock import ROW_TIME_STEP, RowTimes

T0 = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)


def test_wall_clock_used_as_is_while_it_moves_forward() -> None:
    times = RowTimes()
    got = [times.next(T0 + timedelta(seconds=5 * i)) for i in range(3)]
    assert [t.timestamp for t in got] == [T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)]
    assert all(t.stepped_back is None for t in got)


def test_a_step_back_is_one_episode_until_the_wall_clock_catches_up() -> None:
    times = RowTimes()
    times.next(T0)
    first = times.next(T0 - timedelta(seconds=5))
    second = times.next(T0 - timedelta(seconds=1))
    caught_up = times.next(T0 + timedelta(seconds=1))
    assert first.timestamp == T0 + ROW_TIME_STEP
    assert first.stepped_back == 5.0
    assert second.timestamp == T0 + 2 * ROW_TIME_STEP
    assert second.stepped_back is None  # the same episode: no second event
    assert caught_up.timestamp == T0 + timedelta(seconds=1)
    assert not times.behind
    again = times.next(T0)  # a new step back: a new episode
    assert again.stepped_back == 1.0


def test_naive_wall_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RowTimes().next(datetime(2026, 3, 10, 18, 0))


@given(st.lists(st.integers(min_value=-10_000_000, max_value=10_000_000), max_size=60))
def test_strictly_increasing_and_one_event_per_episode(offsets_us: list[int]) -> None:
    times = RowTimes()
    walls = [T0 + timedelta(microseconds=o) for o in offsets_us]
    out = [times.next(w) for w in walls]
    stamps = [t.timestamp for t in out]
    assert all(b > a for a, b in pairwise(stamps))
    # The wall clock is used whenever it is past every timestamp handed out before.
    for i, (wall, stamp) in enumerate(zip(walls, stamps, strict=True)):
        if i == 0 or wall > stamps[i - 1]:
            assert stamp == wall
        else:
            assert stamp == stamps[i - 1] + ROW_TIME_STEP
    # An event opens each run of adjusted ticks, and only then.
    adjusted = [i > 0 and w <= stamps[i - 1] for i, w in enumerate(walls)]
    starts = [a and (i == 0 or not adjusted[i - 1]) for i, a in enumerate(adjusted)]
    assert [t.stepped_back is not None for t in out] == starts
