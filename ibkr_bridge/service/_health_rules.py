"""The health rules: thresholds (HealthPolicy), the verdict (HealthReport), episode tracking."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from ibkr_bridge.core.machines import BreakerState, ConnectionState
from ibkr_bridge.core.records import ApiEvent

if TYPE_CHECKING:
    from ibkr_bridge.config import Settings

log = logging.getLogger(__name__)


_S = ConnectionState
_RECONNECTING: Final = frozenset({_S.DISCONNECTED, _S.CONNECTING, _S.BACKOFF})


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
    def from_settings(cls, settings: Settings) -> HealthPolicy:
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


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


class _Tracker:
    """Monotonic times of what the health rules measure, kept from the bridge's events."""

    def __init__(self, now: float) -> None:
        # Until an event says otherwise, episodes are measured from when watching began.
        self.started_at = now
        self.down_since: float | None = now
        self.writing_expected_since = now
        self.stale_since: float | None = None
        self.db_down_since: float | None = None
        self.last_row_at: float | None = None

    def transition(self, event: ApiEvent, now: float) -> None:
        source, dest = event.source_state, event.dest_state
        if event.machine == "breaker":
            if dest == BreakerState.CLOSED:
                self.db_down_since = None
            elif self.db_down_since is None:
                self.db_down_since = now
            return
        if event.machine != "connection":
            return
        if source == dest == _S.LIVE:
            trigger = event.detail.get("trigger")
            if trigger == "data_lost":
                self.stale_since = now
            elif trigger == "data_restored":
                self.stale_since = None
                self.writing_expected_since = now
            return
        self.stale_since = None
        if dest == _S.LIVE:
            self.down_since = None
            self.writing_expected_since = now
        elif dest == _S.RESET_WAIT:
            # An expected wait: the outage clock starts again when it is over.
            self.down_since = None
        elif dest in _RECONNECTING and self.down_since is None:
            self.down_since = now
