"""The nightly reset: whether an instant is inside its window, and when to resume after it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from ibkr_bridge.core.resetwindow._dst import exists, require_aware
from ibkr_bridge.core.resetwindow._policy import WatchdogPolicy, time_in_window


def in_reset_window(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True when ``wall`` is inside the nightly reset window (inclusive, local time)."""
    require_aware(wall)
    local = wall.astimezone(policy.zone).time().replace(microsecond=0, fold=0)
    return time_in_window(local, policy.reset_window_start, policy.reset_window_end)


def _candidates(day: date, policy: WatchdogPolicy) -> list[datetime]:
    # Where the resume time happens twice (a fall-back across it) the first occurrence may
    # already be past while the second (fold=1) is not. Where it does not exist (a
    # spring-forward gap) only fold=0 counts: it names the instant the clock would have
    # shown it; fold=1 there would map to before the gap, on the previous local day.
    zone = policy.zone
    first = datetime.combine(day, policy.resume_at, tzinfo=zone)
    second = first.replace(fold=1)
    if exists(second):
        return [first, second]
    return [first]


def resume_time(wall: datetime, policy: WatchdogPolicy) -> datetime:
    """The first ``policy.resume_at`` local time strictly after ``wall`` (aware, local)."""
    require_aware(wall)
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
