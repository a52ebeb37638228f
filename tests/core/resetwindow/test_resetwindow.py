"""Nightly-reset timing: window membership, the next resume time, DST correctness."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ibkr_bridge.core.resetwindow import (
    MAX_WEEKLY_HOURS,
    NORTH_AMERICA_WEEKLY,
    WatchdogPolicy,
    WeeklyWindow,
    in_maintenance,
    in_reset_window,
    in_weekly_window,
    maintenance_resume,
    reset_wait_seconds,
    resume_time,
    weekly_window_end,
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


# --- the weekly maintenance window (issue 14.7) ----------------------------------------

NA = NORTH_AMERICA_WEEKLY


def test_default_weekly_window_is_north_america_friday_2300_to_saturday_0300() -> None:
    assert POLICY.weekly_window == NA == WeeklyWindow(4, time(23, 0), 5, time(3, 0))
    assert str(NA) == "Fri 23:00-Sat 03:00"
    assert WeeklyWindow.parse(str(NA)) == NA
    assert NA.seconds == 4 * 3600


@pytest.mark.parametrize(
    ("wall", "inside"),
    [
        (ny(2026, 3, 6, 22, 59), False),  # Friday
        (datetime(2026, 3, 6, 22, 59, 59, 999999, tzinfo=NY), False),
        (ny(2026, 3, 6, 23, 0), True),
        (ny(2026, 3, 7, 0, 30), True),  # Saturday
        (datetime(2026, 3, 7, 2, 59, 59, 999999, tzinfo=NY), True),
        (ny(2026, 3, 7, 3, 0), False),  # the end is the reconnect time: outside
        (ny(2026, 3, 5, 23, 30), False),  # a Thursday night
        (ny(2026, 3, 7, 23, 30), False),  # a Saturday night
        (ny(2026, 7, 10, 23, 30), True),  # summer time: New York local, not UTC
        (datetime(2026, 7, 11, 3, 30, tzinfo=UTC), True),  # 23:30 EDT Friday
        (datetime(2026, 1, 9, 23, 30, tzinfo=UTC), False),  # 18:30 EST Friday
    ],
)
def test_in_weekly_window_boundaries(wall: datetime, inside: bool) -> None:
    assert in_weekly_window(wall, POLICY) is inside
    assert in_weekly_window(wall.astimezone(UTC), POLICY) is inside
    end = weekly_window_end(wall, POLICY)
    assert (end is not None) is inside


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        # Inside the weekly window only: its end.
        (ny(2026, 3, 6, 23, 10), ny(2026, 3, 7, 3, 0)),
        (ny(2026, 3, 7, 2, 0), ny(2026, 3, 7, 3, 0)),
        # Inside both (23:45 Friday): the nightly 00:05 resume is inside the weekly window.
        (ny(2026, 3, 6, 23, 45), ny(2026, 3, 7, 3, 0)),
        # A nightly reset on any other day: 00:05 as before.
        (ny(2026, 3, 5, 23, 45), ny(2026, 3, 6, 0, 5)),
        (ny(2026, 3, 7, 23, 45), ny(2026, 3, 8, 0, 5)),  # Saturday night, spring-forward day
    ],
)
def test_maintenance_resume_examples(wall: datetime, expected: datetime) -> None:
    assert in_maintenance(wall, POLICY)
    for given_as in (wall, wall.astimezone(UTC)):
        resume = maintenance_resume(given_as, POLICY)
        assert resume == expected
        assert resume.tzinfo is NY


def test_weekly_window_off_leaves_the_nightly_reset_alone() -> None:
    policy = WatchdogPolicy(weekly_window=None)
    assert not in_weekly_window(ny(2026, 3, 6, 23, 10), policy)
    assert not in_maintenance(ny(2026, 3, 6, 23, 10), policy)
    assert weekly_window_end(ny(2026, 3, 6, 23, 10), policy) is None
    assert maintenance_resume(ny(2026, 3, 6, 23, 45), policy) == ny(2026, 3, 7, 0, 5)


def test_a_weekly_end_inside_the_nightly_window_waits_for_the_nightly_resume() -> None:
    policy = WatchdogPolicy(weekly_window=WeeklyWindow(5, time(20, 0), 5, time(23, 50)))
    assert maintenance_resume(ny(2026, 3, 7, 21, 0), policy) == ny(2026, 3, 8, 0, 5)


def test_a_window_may_wrap_the_week() -> None:
    policy = WatchdogPolicy(weekly_window=WeeklyWindow.parse("Sun 22:00-Mon 01:00"))
    sunday = ny(2026, 3, 15, 22, 30)
    assert sunday.weekday() == 6
    assert in_weekly_window(sunday, policy)
    assert in_weekly_window(ny(2026, 3, 16, 0, 59), policy)
    assert maintenance_resume(sunday, policy) == ny(2026, 3, 16, 1, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Fri 23:00", "is not a weekly window"),
        ("Fri 23:00-Sat 03:00 extra", "is not a weekly window"),
        ("Frid 23:00-Sat 03:00", "'Frid' is not a day of the week"),
        ("Fri 25:00-Sat 03:00", "25:00 is not a time of day"),
        ("Fri 23:00-Fri 23:00", "is empty"),
        ("Thu 23:00-Sat 23:01", "lasts 48.0167 h (at most 48 h)"),
    ],
)
def test_weekly_window_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        WeeklyWindow.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_day": 7, "start": time(1), "end_day": 0, "end": time(2)},
        {"start_day": -1, "start": time(1), "end_day": 0, "end": time(2)},
        {"start_day": True, "start": time(1), "end_day": 0, "end": time(2)},
        {"start_day": 0, "start": time(1, tzinfo=UTC), "end_day": 0, "end": time(2)},
    ],
)
def test_weekly_window_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        WeeklyWindow(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weekly_window"):
        WatchdogPolicy(weekly_window="Fri 23:00-Sat 03:00")  # type: ignore[arg-type]


# A window across the US change (Sunday 02:00): Saturday 23:00 to Sunday 03:00 New York.
ACROSS_DST = WatchdogPolicy(weekly_window=WeeklyWindow.parse("Sat 23:00-Sun 03:00"))


@pytest.mark.parametrize("year", range(2020, 2036))
def test_weekly_window_across_every_dst_change_2020_2035(year: int) -> None:
    for day, hours in zip(dst_days(year), (3, 5), strict=True):  # spring: 3 h, fall: 5 h
        start = datetime.combine(day - timedelta(days=1), time(23, 0), tzinfo=NY)
        end = weekly_window_end(start, ACROSS_DST)
        assert end is not None
        assert (end.hour, end.minute, end.date()) == (3, 0, day)
        assert (end.astimezone(UTC) - start.astimezone(UTC)) == timedelta(hours=hours)
        # Never leaves and re-enters: every minute of the real span is inside, the end not.
        instant = start.astimezone(UTC)
        while instant < end.astimezone(UTC):
            assert in_weekly_window(instant, ACROSS_DST), instant
            assert maintenance_resume(instant, ACROSS_DST) == end
            instant += timedelta(minutes=7)
        assert not in_weekly_window(end, ACROSS_DST)
        assert not in_weekly_window(start - timedelta(microseconds=1), ACROSS_DST)


def test_a_repeated_end_hour_waits_for_its_last_occurrence() -> None:
    # 2026-11-01 01:30 happens twice in New York; the window ends at the second (EST) one,
    # so the local clock showing 01:00-01:30 again does not look like "after the window".
    policy = WatchdogPolicy(weekly_window=WeeklyWindow.parse("Sun 00:30-Sun 01:30"))
    end = weekly_window_end(ny(2026, 11, 1, 0, 45), policy)
    assert end is not None
    assert end.astimezone(UTC) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert in_weekly_window(datetime(2026, 11, 1, 6, 15, tzinfo=UTC), policy)  # 01:15 EST


_ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "America/Havana", "UTC"]


@st.composite
def weekly_policies(draw: st.DrawFn) -> WatchdogPolicy:
    start_day = draw(st.integers(0, 6))
    start_minute = draw(st.integers(0, 24 * 60 - 1))
    length = draw(st.integers(1, MAX_WEEKLY_HOURS * 60))
    end_minute = (start_day * 1440 + start_minute + length) % (7 * 1440)
    window = WeeklyWindow(
        start_day,
        time(start_minute // 60, start_minute % 60),
        end_minute // 1440,
        time(end_minute % 1440 // 60, end_minute % 60),
    )
    return WatchdogPolicy(tz=draw(st.sampled_from(_ZONES)), weekly_window=window)


def _offset_steady(wall: datetime, zone: ZoneInfo) -> bool:
    """No UTC-offset change within 50 h either side (so local and real time agree)."""
    instant = wall.astimezone(UTC)
    offsets = {(instant + timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-50, 51)}
    return len(offsets) == 1


def _naive_inside(wall: datetime, policy: WatchdogPolicy) -> bool:
    window = policy.weekly_window
    assert window is not None
    local = wall.astimezone(policy.zone)
    second = local.weekday() * 86400 + local.hour * 3600 + local.minute * 60 + local.second
    start = window.start_day * 86400 + window.start.hour * 3600 + window.start.minute * 60
    return (second - start) % (7 * 86400) < window.seconds


@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1),
        max_value=datetime(2035, 12, 31),
        timezones=st.sampled_from([UTC, NY, timezone(timedelta(hours=9))]),
    ),
    weekly_policies(),
)
@example(datetime(2026, 3, 8, 6, 59, tzinfo=UTC), ACROSS_DST)  # 01:59 EST, spring-forward
@example(datetime(2026, 11, 1, 5, 59, tzinfo=UTC), ACROSS_DST)  # 01:59 EDT, fall-back
@example(datetime(2026, 3, 7, 4, 45, tzinfo=UTC), POLICY)  # 23:45 Friday EST: both windows
def test_weekly_window_properties(wall: datetime, policy: WatchdogPolicy) -> None:
    window = policy.weekly_window
    assert window is not None
    resume = maintenance_resume(wall, policy)
    instant = wall.astimezone(UTC)
    # Strictly after, outside every window, within a weekly window + a day (+ DST hours).
    assert resume.astimezone(UTC) > instant
    assert not in_maintenance(resume, policy)
    assert resume.astimezone(UTC) - instant <= timedelta(hours=MAX_WEEKLY_HOURS + 1 + 25)
    end = weekly_window_end(wall, policy)
    assert (end is not None) is in_weekly_window(wall, policy)
    if _offset_steady(wall, policy.zone):
        # Away from DST changes the window is exactly the local-clock one.
        assert in_weekly_window(wall, policy) is _naive_inside(wall, policy)
    if end is None:
        return
    real = end.astimezone(UTC)
    assert real > instant
    assert real <= instant + timedelta(seconds=window.seconds, hours=1)
    assert not in_weekly_window(end, policy)
    assert resume.astimezone(UTC) >= real
    # The occurrence is an interval: every instant from ``wall`` to its end is inside.
    for k in range(1, 12):
        assert in_weekly_window(instant + (real - instant) * k / 12, policy)
    local = end.astimezone(policy.zone)
    if _offset_steady(end, policy.zone):
        assert (local.weekday(), local.time()) == (window.end_day, window.end)
