"""Nightly-reset timing: window membership, the next resume time, DST correctness."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ibkr_bridge.resetwindow import (
    WatchdogPolicy,
    in_reset_window,
    reset_wait_seconds,
    resume_time,
)

NY = ZoneInfo("America/New_York")
POLICY = WatchdogPolicy()


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def _nth_sunday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    first_sunday = first + timedelta(days=(6 - first.weekday()) % 7)
    return first_sunday + timedelta(weeks=n - 1)


def dst_days(year: int) -> tuple[date, date]:
    """US rules since 2007: second Sunday of March, first Sunday of November."""
    return _nth_sunday(year, 3, 2), _nth_sunday(year, 11, 1)


# Instants on and around both DST changes of every year in range: local midnight-ish,
# the 00:05 boundary, the 02:00 change itself, the reset window the evening before.
_OFFSETS = (
    timedelta(hours=-24, minutes=-1),
    timedelta(hours=-1),
    timedelta(minutes=-20),
    timedelta(0),
    timedelta(minutes=4, seconds=59),
    timedelta(minutes=5),
    timedelta(minutes=5, microseconds=1),
    timedelta(hours=1, minutes=59, seconds=59),
    timedelta(hours=2),
    timedelta(hours=3),
    timedelta(hours=23, minutes=45),
    timedelta(hours=24, minutes=4),
)


def _dst_instants() -> list[datetime]:
    out: list[datetime] = []
    for year in range(2020, 2036):
        for day in dst_days(year):
            midnight_utc = datetime.combine(day, time(0), tzinfo=NY).astimezone(UTC)
            out.extend(midnight_utc + offset for offset in _OFFSETS)
    return out


def check_resume_properties(wall: datetime) -> None:
    resume = resume_time(wall, POLICY)
    wait = reset_wait_seconds(wall, POLICY)
    # Strictly after, and never negative.
    assert resume.astimezone(UTC) > wall.astimezone(UTC)
    assert wait > 0
    # The wait is the real elapsed time (not naive local arithmetic).
    assert wait == (resume.astimezone(UTC) - wall.astimezone(UTC)).total_seconds()
    # Exactly 00:05 New York local time, aware, in the policy zone.
    local = resume.astimezone(NY)
    assert (local.hour, local.minute, local.second, local.microsecond) == (0, 5, 0, 0)
    assert resume.utcoffset() == local.utcoffset()
    # The FIRST such time: the 00:05 one local day earlier is not after the instant.
    previous = datetime.combine(local.date() - timedelta(days=1), time(0, 5), tzinfo=NY)
    assert previous.astimezone(UTC) <= wall.astimezone(UTC)
    # A day is at most 25 hours long in New York.
    assert wait <= 25 * 3600


@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1),
        max_value=datetime(2035, 12, 31),
        timezones=st.sampled_from([UTC, NY, timezone(timedelta(hours=9))]),
    )
)
@example(datetime(2025, 3, 9, 5, 4, 59, tzinfo=UTC))  # 00:04:59 EST on spring-forward day
@example(datetime(2025, 3, 9, 0, 5, tzinfo=NY))
@example(datetime(2025, 3, 9, 3, 0, tzinfo=NY))  # just after the gap
@example(datetime(2025, 11, 2, 0, 5, tzinfo=NY))  # fall-back day: next is 25 h away
@example(datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=NY))  # second 01:30
@example(datetime(2025, 11, 1, 23, 45, tzinfo=NY))
@example(datetime(2034, 11, 5, 5, 5, tzinfo=UTC))
def test_resume_is_the_first_0005_new_york_after_any_instant(wall: datetime) -> None:
    check_resume_properties(wall)


@pytest.mark.parametrize("wall", _dst_instants(), ids=lambda w: w.isoformat())
def test_resume_properties_around_every_dst_change_2020_2035(wall: datetime) -> None:
    check_resume_properties(wall)


def test_dst_day_helper_matches_the_zone_database() -> None:
    # Guards the example generator itself: the offset really changes on those days.
    for year in (2020, 2025, 2035):
        spring, fall = dst_days(year)
        assert ny(year, spring.month, spring.day, 1).utcoffset() == timedelta(hours=-5)
        assert ny(year, spring.month, spring.day, 3).utcoffset() == timedelta(hours=-4)
        assert ny(year, fall.month, fall.day, 0).utcoffset() == timedelta(hours=-4)
        assert ny(year, fall.month, fall.day, 3).utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize(
    ("wall", "expected", "hours"),
    [
        # Same local day when still before 00:05.
        (ny(2026, 1, 5, 0, 1), ny(2026, 1, 5, 0, 5), 4 / 60),
        # Exactly 00:05 is not "after": the next day.
        (ny(2026, 1, 5, 0, 5), ny(2026, 1, 6, 0, 5), 24),
        (ny(2026, 1, 5, 23, 45), ny(2026, 1, 6, 0, 5), 20 / 60),
        # Spring forward (2025-03-09 02:00 EST -> 03:00 EDT): that day has 23 hours.
        (ny(2025, 3, 8, 23, 50), ny(2025, 3, 9, 0, 5), 15 / 60),
        (ny(2025, 3, 9, 0, 5), ny(2025, 3, 10, 0, 5), 23),
        # Fall back (2025-11-02 02:00 EDT -> 01:00 EST): that day has 25 hours.
        (ny(2025, 11, 2, 0, 5), ny(2025, 11, 3, 0, 5), 25),
        (ny(2025, 11, 1, 23, 45), ny(2025, 11, 2, 0, 5), 20 / 60),
    ],
)
def test_resume_time_examples(wall: datetime, expected: datetime, hours: float) -> None:
    for given_as in (wall, wall.astimezone(UTC)):
        resume = resume_time(given_as, POLICY)
        assert resume == expected
        assert resume.tzinfo is NY
        assert resume.replace(tzinfo=None) == expected.replace(tzinfo=None)
        assert reset_wait_seconds(given_as, POLICY) == pytest.approx(hours * 3600)


def test_wait_uses_real_time_when_wall_is_in_the_policy_zone() -> None:
    # Same-tzinfo subtraction in Python is naive local arithmetic (23:55 here); the real
    # elapsed time across the fall-back change is 24:55.
    wall = ny(2025, 11, 2, 0, 10)
    assert reset_wait_seconds(wall, POLICY) == 24 * 3600 + 55 * 60


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        (time(23, 39, 59, 999999), False),
        (time(23, 40), True),
        (time(23, 45), True),
        (time(23, 59, 59), True),
        (time(23, 59, 59, 999999), True),  # whole-second resolution: still 23:59:59
        (time(0, 0), False),
        (time(0, 4), False),
        (time(12, 0), False),
    ],
)
@pytest.mark.parametrize("day", [date(2026, 1, 15), date(2026, 7, 15)], ids=["EST", "EDT"])
def test_in_reset_window_boundaries(local: time, inside: bool, day: date) -> None:
    wall = datetime.combine(day, local, tzinfo=NY)
    assert in_reset_window(wall, POLICY) is inside
    assert in_reset_window(wall.astimezone(UTC), POLICY) is inside


def test_in_reset_window_is_new_york_time_not_utc() -> None:
    # 23:45 UTC is 18:45 or 19:45 in New York: outside.
    assert not in_reset_window(datetime(2026, 1, 15, 23, 45, tzinfo=UTC), POLICY)
    assert in_reset_window(datetime(2026, 1, 16, 4, 45, tzinfo=UTC), POLICY)  # 23:45 EST
    assert in_reset_window(datetime(2026, 7, 16, 3, 45, tzinfo=UTC), POLICY)  # 23:45 EDT


def test_window_can_wrap_past_midnight() -> None:
    policy = WatchdogPolicy(
        reset_window_start=time(23, 50), reset_window_end=time(0, 10), resume_at=time(0, 30)
    )
    assert in_reset_window(ny(2026, 1, 5, 23, 55), policy)
    assert in_reset_window(ny(2026, 1, 6, 0, 10), policy)
    assert not in_reset_window(ny(2026, 1, 6, 0, 11), policy)
    assert not in_reset_window(ny(2026, 1, 5, 23, 49), policy)
    assert resume_time(ny(2026, 1, 5, 23, 55), policy) == ny(2026, 1, 6, 0, 30)


@pytest.mark.parametrize("func", [in_reset_window, resume_time, reset_wait_seconds])
def test_naive_datetimes_are_rejected(func: object) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        func(datetime(2026, 1, 5, 23, 45), POLICY)  # type: ignore[operator]


def test_policy_defaults() -> None:
    assert POLICY.backoff == (5.0, 10.0, 20.0)
    assert POLICY.steady_interval == 60.0
    assert (POLICY.reset_window_start, POLICY.reset_window_end) == (time(23, 40), time(23, 59, 59))
    assert POLICY.resume_at == time(0, 5)
    assert POLICY.zone is NY


def test_backoff_delay_follows_schedule_then_steady_forever() -> None:
    assert [POLICY.backoff_delay(n) for n in range(1, 7)] == [5.0, 10.0, 20.0, 60.0, 60.0, 60.0]
    assert POLICY.backoff_delay(10_000) == 60.0
    assert WatchdogPolicy(backoff=()).backoff_delay(1) == 60.0
    with pytest.raises(ValueError, match="1-based"):
        POLICY.backoff_delay(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backoff": (5.0, -1.0)},
        {"backoff": (float("nan"),)},
        {"steady_interval": 0.0},
        {"steady_interval": float("inf")},
        {"tz": "America/Nowhere"},
        {"reset_window_start": time(23, 40, tzinfo=UTC)},
        {"resume_at": time(23, 50)},  # inside the window: would wait a whole day again
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        WatchdogPolicy(**kwargs)  # type: ignore[arg-type]


def test_resume_time_in_a_zone_where_it_is_skipped_or_repeated() -> None:
    # Havana changes clocks at midnight: 00:05 does not exist on the spring day and
    # happens twice on the autumn day. Resume is still the first matching instant after.
    policy = WatchdogPolicy(tz="America/Havana")
    havana = ZoneInfo("America/Havana")
    # 2025-03-09 00:00 CST -> 01:00 CDT: the "00:05" instant is 05:05 UTC.
    before = datetime(2025, 3, 8, 23, 0, tzinfo=havana)
    assert resume_time(before, policy).astimezone(UTC) == datetime(2025, 3, 9, 5, 5, tzinfo=UTC)
    # 2025-11-02 01:00 CDT -> 00:00 CST: 00:05 happens at 04:05 and 05:05 UTC.
    first = datetime(2025, 11, 2, 4, 5, tzinfo=UTC)
    second = datetime(2025, 11, 2, 5, 5, tzinfo=UTC)
    assert resume_time(first - timedelta(minutes=1), policy).astimezone(UTC) == first
    assert resume_time(first, policy).astimezone(UTC) == second
    assert resume_time(second, policy).astimezone(UTC) == datetime(2025, 11, 3, 5, 5, tzinfo=UTC)
