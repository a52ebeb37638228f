"""FakeClock keeps its wall clock exactly in step with its monotonic clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ibkr_bridge.testing import FakeClock


async def test_the_wall_clock_does_not_drift_over_many_odd_steps() -> None:
    # Found by the soak: summing timedelta(seconds=1/3) rounds to microseconds each time,
    # and after hours of such steps rows looked 17 µs off the writer's 5 s grid.
    start = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
    clock = FakeClock(start=start, monotonic_start=1000.0)
    for _ in range(3000):
        await clock.advance(1 / 3)
    elapsed = clock.monotonic() - 1000.0
    assert abs((clock.now() - start).total_seconds() - elapsed) <= 1e-6


async def test_a_wall_step_moves_the_anchor() -> None:
    clock = FakeClock(start=datetime(2026, 3, 10, 14, 0, tzinfo=UTC))
    back = clock.now() - timedelta(seconds=5)
    clock.set_wall(back)
    await clock.advance(2.5)
    assert clock.now() == back + timedelta(seconds=2.5)
