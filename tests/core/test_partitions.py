"""The daily-partition rule: always a partition ahead, drops only past the horizon."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.core.partitions import day_bounds, partition_day, partition_name, plan

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@given(instants, st.integers(1, 7), st.one_of(st.none(), st.integers(1, 400)))
def test_applying_the_plan_covers_now_and_ahead_and_keeps_the_horizon(
    now: datetime, ahead: int, keep: int | None
) -> None:
    existing = {now.date() - timedelta(days=d) for d in range(0, 500, 3)}
    p = plan(now, existing, ahead=ahead, retention_days=keep)
    after = (existing | set(p.create)) - set(p.drop)
    for d in range(ahead + 1):
        assert now.date() + timedelta(days=d) in after
    assert not set(p.create) & existing
    assert set(p.drop) <= existing
    if keep is None:
        assert p.drop == ()
    else:
        for day in p.drop:  # the whole day is past the horizon
            assert day_bounds(day)[1] <= datetime.combine(
                now.date() - timedelta(days=keep - 1), datetime.min.time(), tzinfo=UTC
            )
        for day in after:
            assert day >= now.date() - timedelta(days=keep)
    # Applying the plan again changes nothing: the rule is idempotent.
    again = plan(now, after, ahead=ahead, retention_days=keep)
    assert (again.create, again.drop) == ((), ())


def test_forty_days_on_a_fake_clock() -> None:
    have: set[date] = set()
    dropped: list[date] = []
    start = datetime(2027, 3, 1, 12, tzinfo=UTC)
    for hour in range(0, 40 * 24, 6):
        p = plan(start + timedelta(hours=hour), have, ahead=2, retention_days=30)
        have |= set(p.create)
        have -= set(p.drop)
        dropped.extend(p.drop)
    # The last step is 2027-04-10 06:00 UTC: the horizon is 30 days before 2027-04-10.
    assert dropped == [date(2027, 3, 1) + timedelta(days=d) for d in range(10)]
    assert min(have) == date(2027, 3, 11)
    assert max(have) == date(2027, 4, 12)


def test_names_round_trip_and_foreign_names_are_ignored() -> None:
    day = date(2027, 3, 1)
    assert partition_name("position_greeks", day) == "position_greeks_p20270301"
    assert partition_day("position_greeks", "position_greeks_p20270301") == day
    for other in (
        "position_greeks_p2027030",
        "position_greeks_p20271301",
        "x_p20270301",
        "position_greeks_archive",
        "position_greeks_p20270301_old",
    ):
        assert partition_day("position_greeks", other) is None


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(datetime(2027, 1, 1), ())
    with pytest.raises(ValueError, match="ahead"):
        plan(datetime(2027, 1, 1, tzinfo=UTC), (), ahead=0)
    with pytest.raises(ValueError, match="retention_days"):
        plan(datetime(2027, 1, 1, tzinfo=UTC), (), retention_days=0)
