"""The health verdict and its thresholds: what ``/healthz`` answers, and when it turns 503."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

__all__ = ["HealthPolicy", "HealthReport", "TimingSettings"]


class TimingSettings(Protocol):
    """The bridge settings the thresholds derive from (``Settings`` satisfies it)."""

    @property
    def poll_interval(self) -> float: ...

    @property
    def backoff(self) -> Sequence[float]: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def retry_interval(self) -> float: ...


@attrs.frozen(kw_only=True)
class HealthPolicy:
    """When ``/healthz`` turns 503. All values are seconds except ``buffer_full_ratio``."""

    max_row_age: float  # LIVE with fresh data: the last row may be this old
    first_row_grace: float  # LIVE (or data restored) and no row yet: wait this long
    stale_grace: float  # LIVE but IB reports lost connectivity (1100) outside the reset window
    outage_grace: float  # not connected to IBKR (and not waiting out the nightly reset)
    db_outage_grace: float  # the database circuit breaker not CLOSED
    buffer_full_ratio: float = 0.9  # the buffer this full: rows are about to be refused

    @classmethod
    def from_settings(cls, settings: TimingSettings) -> HealthPolicy:
        """Thresholds derived from the bridge's own timing settings."""
        poll = settings.poll_interval
        return cls(
            max_row_age=3 * poll,
            first_row_grace=max(60.0, 3 * poll),
            stale_grace=120.0,
            # The longest the quick back-off can take: every delay, plus every attempt
            # (the first one included) running into the connect timeout.
            outage_grace=sum(settings.backoff)
            + (len(settings.backoff) + 1) * settings.connect_timeout,
            # At least one database retry has failed.
            db_outage_grace=2 * settings.retry_interval,
        )


@attrs.frozen(kw_only=True)
class HealthReport:
    """One evaluation of the bridge's health: what ``/healthz`` returns."""

    healthy: bool
    reason: str | None  # why unhealthy (several reasons joined by "; "), else None
    note: str | None  # healthy but not writing: the wait the bridge expects
    mode: str
    connection: str
    breaker: str
    stale: bool
    last_row_at: datetime | None
    last_row_age_seconds: float | None
    buffer_pending_bytes: int
    rows_submitted: int
    # Option legs without current Greeks past their grace (docs/greeks.md): what the rows
    # lack or why none are written. Healthy with this set is "degraded".
    degraded: str | None = None
    legs_missing: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        if not self.healthy:
            return "unhealthy"
        return "degraded" if self.degraded else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "degraded": self.degraded,
            "legs_missing": list(self.legs_missing),
            "note": self.note,
            "mode": self.mode,
            "connection": self.connection,
            "breaker": self.breaker,
            "stale": self.stale,
            "last_row_at": self.last_row_at.isoformat() if self.last_row_at else None,
            "last_row_age_seconds": self.last_row_age_seconds,
            "buffer_pending_bytes": self.buffer_pending_bytes,
            "rows_submitted": self.rows_submitted,
        }
