"""Timing rules for IBKR's nightly reset, as pure functions of a wall-clock instant.

IBKR resets its servers around 23:45 New York time. A SOCKET connection lost inside the
reset window is not retried with back-off (every attempt would fail and the Gateway may
lock out the client id); the watchdog instead waits until a fixed resume time the next
New York day. Everything here is pure: no clock is read, the instant is an argument.

Public API:

``WatchdogPolicy``
    Frozen attrs record of the watchdog's timing rules: ``backoff`` (5.0, 10.0, 20.0),
    ``steady_interval`` 60.0, ``reset_window_start`` 23:40, ``reset_window_end``
    23:59:59, ``resume_at`` 00:05, ``tz`` "America/New_York". Invalid values raise
    ``ValueError`` at construction. ``policy.zone`` is the ``ZoneInfo``;
    ``policy.backoff_delay(attempt)`` is the wait before back-off attempt ``attempt``
    (1-based): ``backoff[attempt - 1]`` while the schedule lasts, then ``steady_interval``
    forever.

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

All three raise ``ValueError`` for a naive ``wall``.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from attrs import field, frozen

__all__ = [
    "WatchdogPolicy",
    "in_reset_window",
    "reset_wait_seconds",
    "resume_time",
]


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
