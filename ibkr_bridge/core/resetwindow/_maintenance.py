"""Both windows together: the watchdog's RESET_WAIT condition and its resume time."""

from __future__ import annotations

from datetime import datetime

from ibkr_bridge.core.resetwindow._dst import require_aware
from ibkr_bridge.core.resetwindow._nightly import in_reset_window, resume_time
from ibkr_bridge.core.resetwindow._policy import WatchdogPolicy
from ibkr_bridge.core.resetwindow._weekly import in_weekly_window, weekly_window_end


def in_maintenance(wall: datetime, policy: WatchdogPolicy) -> bool:
    """True inside the nightly reset window or the weekly maintenance window."""
    return in_reset_window(wall, policy) or in_weekly_window(wall, policy)


def maintenance_resume(wall: datetime, policy: WatchdogPolicy) -> datetime:
    """When to reconnect after a loss at ``wall``: the first instant after every window."""
    require_aware(wall)
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
