"""Which daily partitions of ``position_greeks`` to create and drop, given the time: pure.

``position_greeks`` is range-partitioned by day (UTC) on ``timestamp``: 1,000 legs every
5 s is ~17 million rows a day, and retention drops whole partitions, never a DELETE over
the table. :func:`plan` is the one rule; :mod:`ibkr_bridge.storage.partitions` carries it
out. Partitions are made ``ahead`` days in advance, so a row never finds no partition
(PostgreSQL would refuse it with SQLSTATE 23514, which is not the row's fault).

With ``retention_days=N`` the partitions kept are today's and the N days before; a day's
partition is dropped once its whole range is older than that.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from typing import Final

from attrs import frozen

DEFAULT_AHEAD: Final = 3
_SUFFIX: Final = re.compile(r"_p(\d{8})$")


@frozen
class PartitionPlan:
    """The partitions to create and to drop, oldest first."""

    create: tuple[date, ...]
    drop: tuple[date, ...]


def partition_name(table: str, day: date) -> str:
    """``position_greeks_p20270301``: the partition holding ``day`` (UTC)."""
    return f"{table}_p{day:%Y%m%d}"


def partition_day(table: str, name: str) -> date | None:
    """The day a partition named by :func:`partition_name` holds, or None for other names."""
    if not name.startswith(f"{table}_p"):
        return None
    match = _SUFFIX.search(name)
    if match is None or len(name) != len(table) + 10:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The partition's range: [00:00 UTC of ``day``, 00:00 UTC of the next day)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def plan(
    now: datetime,
    existing: Collection[date],
    *,
    ahead: int = DEFAULT_AHEAD,
    retention_days: int | None = None,
) -> PartitionPlan:
    """What to create (today and ``ahead`` days on) and drop (older than the horizon)."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1 day, got {ahead}")
    if retention_days is not None and retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    today = now.astimezone(UTC).date()
    have = set(existing)
    wanted = [today + timedelta(days=i) for i in range(ahead + 1)]
    create = tuple(day for day in wanted if day not in have)
    drop: tuple[date, ...] = ()
    if retention_days is not None:
        horizon = today - timedelta(days=retention_days)
        drop = tuple(sorted(day for day in have if day < horizon))
    return PartitionPlan(create=create, drop=drop)
