"""The weekly maintenance window: the occurrence holding an instant, as real elapsed time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ibkr_bridge.core.resetwindow._dst import local_instant, require_aware
from ibkr_bridge.core.resetwindow._policy import MAX_WEEKLY_HOURS, WatchdogPolicy


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
        start = local_instant(day, window.start, zone, last=False)
        end = local_instant(day + timedelta(days=span_days), window.end, zone, last=True)
        if start <= instant < end:
            return start, end
    return None


def in_weekly_window(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True when ``wall`` is inside an occurrence of the weekly maintenance window."""
    require_aware(wall)
    return _weekly_span(wall, policy) is not None


def weekly_window_end(wall: datetime, policy: WatchdogPolicy) -> datetime | None:
    """The end of the weekly window occurrence holding ``wall`` (aware, local), or None."""
    require_aware(wall)
    span = _weekly_span(wall, policy)
    return None if span is None else span[1].astimezone(policy.zone)
