"""The model's clock conventions: New York expiries at 16:00, calendar years, relative expiries."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

SECONDS_PER_YEAR: Final = 365.0 * 86400.0
NEW_YORK: Final = ZoneInfo("America/New_York")
# US equity and CME equity-index options stop trading at the 16:00 ET close.
EXPIRY_CLOCK_TIME: Final = time(16, 0)


def aware(when: datetime) -> datetime:
    """``when`` itself, refusing a naive datetime (the model never guesses a time zone)."""
    if when.tzinfo is None:
        raise ValueError(f"datetime must be timezone-aware, got {when!r}")
    return when


def years_between(now: datetime, then: datetime) -> float:
    """Calendar years from ``now`` to ``then`` (negative when ``then`` is past)."""
    return (then - now).total_seconds() / SECONDS_PER_YEAR


def resolve_expiry(text: str, as_of: datetime) -> str:
    """``YYYYMMDD`` as is; ``+Nd`` → the first Friday at least N days after ``as_of``.

    Relative expiries keep example files valid whatever day they are loaded.
    """
    text = text.strip()
    if text.startswith("+") and text.endswith("d"):
        days = int(text[1:-1])
        day: date = as_of.astimezone(NEW_YORK).date() + timedelta(days=days)
        day += timedelta(days=(4 - day.weekday()) % 7)
        return day.strftime("%Y%m%d")
    return text
