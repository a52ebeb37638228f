"""The watchdog's timing rules as data: the weekly window record and ``WatchdogPolicy``."""

from __future__ import annotations

import math
import re
from datetime import time
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from attrs import field, frozen

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
            shown = repr(text)  # cut after repr: an unprintable character is ten characters
            shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
            raise ValueError(f"{shown} is not a weekly window like 'Fri 23:00-Sat 03:00'")
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
        if time_in_window(self.resume_at, self.reset_window_start, self.reset_window_end):
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


def time_in_window(t: time, start: time, end: time) -> bool:
    if start <= end:
        return start <= t <= end
    return t >= start or t <= end
