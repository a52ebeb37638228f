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

from ibkr_bridge.core.resetwindow._maintenance import in_maintenance, maintenance_resume
from ibkr_bridge.core.resetwindow._nightly import in_reset_window, reset_wait_seconds, resume_time
from ibkr_bridge.core.resetwindow._policy import (
    MAX_WEEKLY_HOURS,
    NORTH_AMERICA_WEEKLY,
    WatchdogPolicy,
    WeeklyWindow,
)
from ibkr_bridge.core.resetwindow._weekly import in_weekly_window, weekly_window_end

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
