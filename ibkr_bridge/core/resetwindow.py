"""Timing rules for IBKR's nightly reset and weekly maintenance, as pure functions.

IBKR resets its servers around 23:45 New York time every night, and has a longer weekly
maintenance at the weekend (North America: Friday 23:00 to Saturday 03:00 New York time,
per IBKR's status page). A SOCKET connection lost inside either window is not retried with
back-off (every attempt would fail and the Gateway may lock out the client id); the
watchdog instead waits: until a fixed resume time after the nightly window, until the end
of the weekly one. Everything here is pure: no clock is read, the instant is an argument.

Public API:

``WatchdogPolicy``
    Frozen attrs record of the watchdog's timing rules: ``backoff`` (5.0, 10.0, 20.0),
    ``steady_interval`` 60.0, ``reset_window_start`` 23:40, ``reset_window_end``
    23:59:59, ``resume_at`` 00:05, ``tz`` "America/New_York", ``weekly_window``
    ``NORTH_AMERICA_WEEKLY`` (None: no weekly window). Invalid values raise
    ``ValueError`` at construction. ``policy.zone`` is the ``ZoneInfo``;
    ``policy.backoff_delay(attempt)`` is the wait before back-off attempt ``attempt``
    (1-based): ``backoff[attempt - 1]`` while the schedule lasts, then ``steady_interval``
    forever.

``WeeklyWindow(start_day, start, end_day, end)``
    Frozen record: from weekday ``start_day`` (0 Monday .. 6 Sunday) at local time
    ``start`` (inclusive) to ``end_day`` at ``end`` (exclusive, the reconnect time), local
    time in ``policy.tz``; longer than 0, at most ``MAX_WEEKLY_HOURS``. ``parse(text)``
    reads ``"Fri 23:00-Sat 03:00"`` (day names in English, any case, 3 letters or full);
    ``str()`` writes it back. ``NORTH_AMERICA_WEEKLY`` is Friday 23:00 to Saturday 03:00.

``in_weekly_window(wall, policy) -> bool`` and ``weekly_window_end(wall, policy)``
    Whether ``wall`` is inside an occurrence of the weekly window, and that occurrence's
    end (an aware datetime in ``policy.zone``, or None outside). An occurrence is a real
    interval of elapsed time: it starts at the first instant the local clock shows the
    start and ends at the last instant it shows the end (a repeated hour at a fall-back
    lengthens it, a skipped one shortens it), so a DST change never makes an instant leave
    and re-enter the window.

``in_maintenance(wall, policy) -> bool``
    ``in_reset_window`` or ``in_weekly_window``: the watchdog's RESET_WAIT condition.

``maintenance_resume(wall, policy) -> datetime``
    When a connection lost at ``wall`` may be retried: the end of the weekly window when
    inside it, else :func:`resume_time`; repeated while that instant is itself inside a
    window (a weekly end inside the nightly window, a nightly resume inside the weekly
    window), so the result is never inside either. Strictly after ``wall``.

``in_reset_window(wall, policy) -> bool``
    Whether ``wall`` falls inside the reset window, local time in ``policy.tz``, both ends
    inclusive at whole-second resolution (23:59:59.999 is still inside). A window whose
    start is after its end wraps past midnight.

``resume_time(wall, policy) -> datetime``
    The first ``resume_at`` local time strictly after ``wall``, as an aware datetime in
    ``policy.zone``. It is built from the local calendar date with the zone attached, so
    it is 00:05 local on DST change days too (not 00:05 plus or minus an hour).

``reset_wait_seconds(wall, policy) -> float``
    Real elapsed seconds from ``wall`` to ``resume_time(wall, policy)``; always > 0.

All functions raise ``ValueError`` for a naive ``wall``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from attrs import field, frozen

__all__ = [
    "MAX_WEEKLY_HOURS",
    "NORTH_AMERICA_WEEKLY",
    "WatchdogPolicy",
    "WeeklyWindow",
    "in_maintenance",
    "in_reset_window",
    "in_weekly_window",
    "maintenance_resume",
    "reset_wait_seconds",
    "resume_time",
    "weekly_window_end",
]

#: A longer "weekly window" is a typo (a wrong day), not a maintenance.
MAX_WEEKLY_HOURS: Final = 48
_DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES: Final = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
_WEEKLY_TEXT: Final = re.compile(
    r"\s*([A-Za-z]+)\s+([0-9]{1,2}):([0-9]{2})\s*-\s*([A-Za-z]+)\s+([0-9]{1,2}):([0-9]{2})\s*"
)
_WEEK_SECONDS: Final = 7 * 86400


def _delays(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _check_delays(_: Any, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    for delay in value:
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"{attribute.name} delays must be finite and >= 0, got {value!r}")


def _check_interval(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    # Zero would make the watchdog hammer the Gateway in a tight loop.
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be finite and > 0, got {value!r}")


def _check_local_time(_: Any, attribute: attrs.Attribute[Any], value: time) -> None:
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueError(f"{attribute.name} must be a naive local time, got {value!r}")


def _check_zone(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"{attribute.name}: unknown time zone {value!r} ({exc})") from None


def _check_day(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 6:
        raise ValueError(f"{attribute.name} must be a weekday 0 (Monday) .. 6, got {value!r}")


def _day(name: str) -> int:
    word = name.lower()
    for index, (short, full) in enumerate(zip(_DAY_NAMES, _FULL_DAY_NAMES, strict=True)):
        if word in (short.lower(), full):
            return index
    raise ValueError(f"{name[:20]!r} is not a day of the week (Mon, Tue, ... Sun)")


@frozen
class WeeklyWindow:
    """A weekly maintenance window in local time: [start_day start, end_day end)."""

    start_day: int = field(validator=_check_day)
    start: time = field(validator=_check_local_time)
    end_day: int = field(validator=_check_day)
    end: time = field(validator=_check_local_time)

    def __attrs_post_init__(self) -> None:
        length = self.seconds
        if length == 0:
            raise ValueError(f"weekly window {self} is empty (its end is its start)")
        if length > MAX_WEEKLY_HOURS * 3600:
            raise ValueError(
                f"weekly window {self} lasts {length / 3600:g} h (at most {MAX_WEEKLY_HOURS} h)"
            )

    @property
    def seconds(self) -> int:
        """Nominal length in local clock seconds (a DST change makes the real one differ)."""
        return (_week_second(self.end_day, self.end) - _week_second(self.start_day, self.start)) % (
            _WEEK_SECONDS
        )

    @classmethod
    def parse(cls, text: str) -> WeeklyWindow:
        """``"Fri 23:00-Sat 03:00"``; raises ValueError naming what is wrong."""
        match = _WEEKLY_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"{text[:40]!r} is not a weekly window like 'Fri 23:00-Sat 03:00'")
        start_day, end_day = _day(match[1]), _day(match[4])
        times = []
        for hour, minute in ((match[2], match[3]), (match[5], match[6])):
            if int(hour) > 23 or int(minute) > 59:
                raise ValueError(f"{hour}:{minute} is not a time of day (00:00 to 23:59)")
            times.append(time(int(hour), int(minute)))
        return cls(start_day, times[0], end_day, times[1])

    def __str__(self) -> str:
        return (
            f"{_DAY_NAMES[self.start_day]} {self.start:%H:%M}-"
            f"{_DAY_NAMES[self.end_day]} {self.end:%H:%M}"
        )


def _week_second(day: int, t: time) -> int:
    return day * 86400 + t.hour * 3600 + t.minute * 60 + t.second


#: IBKR's weekend maintenance for North America (status page): Friday 23:00 to Saturday
#: 03:00 New York time.
NORTH_AMERICA_WEEKLY: Final = WeeklyWindow(4, time(23, 0), 5, time(3, 0))


def _check_weekly(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, WeeklyWindow):
        raise ValueError(f"{attribute.name} must be a WeeklyWindow or None, got {value!r}")


@frozen(kw_only=True)
class WatchdogPolicy:
    """How the SOCKET watchdog waits between connection attempts."""

    backoff: tuple[float, ...] = field(
        default=(5.0, 10.0, 20.0), converter=_delays, validator=_check_delays
    )
    steady_interval: float = field(default=60.0, converter=float, validator=_check_interval)
    reset_window_start: time = field(default=time(23, 40), validator=_check_local_time)
    reset_window_end: time = field(default=time(23, 59, 59), validator=_check_local_time)
    resume_at: time = field(default=time(0, 5), validator=_check_local_time)
    tz: str = field(default="America/New_York", validator=_check_zone)
    weekly_window: WeeklyWindow | None = field(
        default=NORTH_AMERICA_WEEKLY, validator=_check_weekly
    )

    def __attrs_post_init__(self) -> None:
        # Resuming inside the window would fail, land back in RESET_WAIT and wait a whole day.
        if _time_in_window(self.resume_at, self.reset_window_start, self.reset_window_end):
            raise ValueError(
                f"resume_at {self.resume_at} lies inside the reset window "
                f"{self.reset_window_start}-{self.reset_window_end}"
            )

    @property
    def zone(self) -> ZoneInfo:
        """The policy's time zone (ZoneInfo caches instances, so this is cheap)."""
        return ZoneInfo(self.tz)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before back-off attempt ``attempt`` (1-based); never gives up."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if attempt <= len(self.backoff):
            return self.backoff[attempt - 1]
        return self.steady_interval


def _require_aware(wall: datetime) -> None:
    if not isinstance(wall, datetime) or wall.tzinfo is None or wall.utcoffset() is None:
        raise ValueError(f"wall time must be a timezone-aware datetime, got {wall!r}")


def _time_in_window(t: time, start: time, end: time) -> bool:
    if start <= end:
        return start <= t <= end
    return t >= start or t <= end


def in_reset_window(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True when ``wall`` is inside the nightly reset window (inclusive, local time)."""
    _require_aware(wall)
    local = wall.astimezone(policy.zone).time().replace(microsecond=0, fold=0)
    return _time_in_window(local, policy.reset_window_start, policy.reset_window_end)


def _candidates(day: date, policy: WatchdogPolicy) -> list[datetime]:
    # Where the resume time happens twice (a fall-back across it) the first occurrence may
    # already be past while the second (fold=1) is not. Where it does not exist (a
    # spring-forward gap) only fold=0 counts: it names the instant the clock would have
    # shown it; fold=1 there would map to before the gap, on the previous local day.
    zone = policy.zone
    first = datetime.combine(day, policy.resume_at, tzinfo=zone)
    second = first.replace(fold=1)
    if _exists(second):
        return [first, second]
    return [first]


def _exists(local: datetime) -> bool:
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None, fold=0) == local.replace(tzinfo=None, fold=0)


def resume_time(wall: datetime, policy: WatchdogPolicy) -> datetime:
    """The first ``policy.resume_at`` local time strictly after ``wall`` (aware, local)."""
    _require_aware(wall)
    zone = policy.zone
    instant = wall.astimezone(UTC)
    today = wall.astimezone(zone).date()
    # Tomorrow's resume time is always later than ``wall``, so ``later`` is never empty.
    # Compare in UTC: aware datetimes sharing one tzinfo compare as naive local times.
    later = [
        c.astimezone(UTC)
        for day in (today, today + timedelta(days=1))
        for c in _candidates(day, policy)
        if c.astimezone(UTC) > instant
    ]
    return min(later).astimezone(zone)


def reset_wait_seconds(wall: datetime, policy: WatchdogPolicy) -> float:
    """Real seconds from ``wall`` until :func:`resume_time` (UTC arithmetic, DST-safe)."""
    resume = resume_time(wall, policy)
    return (resume.astimezone(UTC) - wall.astimezone(UTC)).total_seconds()


def _local_instant(day: date, t: time, zone: ZoneInfo, *, last: bool) -> datetime:
    """The UTC instant the local clock shows ``t`` on ``day``: the first one, or ``last``.

    A repeated time (fall-back) has two; a skipped one (spring-forward) is taken as fold=0,
    the instant the clock would have shown it, as for the resume time.
    """
    first = datetime.combine(day, t, tzinfo=zone)
    second = first.replace(fold=1)
    if last and _exists(second):
        return second.astimezone(UTC)
    return first.astimezone(UTC)


def _weekly_span(wall: datetime, policy: WatchdogPolicy) -> tuple[datetime, datetime] | None:
    window = policy.weekly_window
    if window is None:
        return None
    zone = policy.zone
    instant = wall.astimezone(UTC)
    today = wall.astimezone(zone).date()
    span_days = (window.end_day - window.start_day) % 7
    # The occurrence holding ``wall`` started at most MAX_WEEKLY_HOURS (+ a DST hour) ago.
    for back in range(MAX_WEEKLY_HOURS // 24 + 2):
        day = today - timedelta(days=back)
        if day.weekday() != window.start_day:
            continue
        start = _local_instant(day, window.start, zone, last=False)
        end = _local_instant(day + timedelta(days=span_days), window.end, zone, last=True)
        if start <= instant < end:
            return start, end
    return None


def in_weekly_window(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True when ``wall`` is inside an occurrence of the weekly maintenance window."""
    _require_aware(wall)
    return _weekly_span(wall, policy) is not None


def weekly_window_end(wall: datetime, policy: WatchdogPolicy) -> datetime | None:
    """The end of the weekly window occurrence holding ``wall`` (aware, local), or None."""
    _require_aware(wall)
    span = _weekly_span(wall, policy)
    return None if span is None else span[1].astimezone(policy.zone)


def in_maintenance(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True inside the nightly reset window or the weekly maintenance window."""
    return in_reset_window(wall, policy) or in_weekly_window(wall, policy)


def maintenance_resume(wall: datetime, policy: WatchdogPolicy) -> datetime:
    """When to reconnect after a loss at ``wall``: the first instant after every window."""
    _require_aware(wall)
    resume = weekly_window_end(wall, policy) or resume_time(wall, policy)
    # Each step ends one window; a weekly window <= 48 h cannot reach the next week's, so
    # at most a weekly end inside the nightly window, then its resume: three steps.
    for _ in range(4):
        end = weekly_window_end(resume, policy)
        if end is not None:
            resume = end
        elif in_reset_window(resume, policy):
            resume = resume_time(resume, policy)
        else:
            return resume
    raise AssertionError(f"no resume time found after {wall.isoformat()}")  # pragma: no cover
