"""Local-time helpers that stay right across DST changes: awareness, folds, gaps."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo


def require_aware(wall: datetime) -> None:
    if not isinstance(wall, datetime) or wall.tzinfo is None or wall.utcoffset() is None:
        raise ValueError(f"wall time must be a timezone-aware datetime, got {wall!r}")


def exists(local: datetime) -> bool:
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None, fold=0) == local.replace(tzinfo=None, fold=0)


def local_instant(day: date, t: time, zone: ZoneInfo, *, last: bool) -> datetime:
    """The UTC instant the local clock shows ``t`` on ``day``: the first one, or ``last``.

    A repeated time (fall-back) has two; a skipped one (spring-forward) is taken as fold=0,
    the instant the clock would have shown it, as for the resume time.
    """
    first = datetime.combine(day, t, tzinfo=zone)
    second = first.replace(fold=1)
    if last and exists(second):
        return second.astimezone(UTC)
    return first.astimezone(UTC)
