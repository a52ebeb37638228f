"""The health rules as a pure function: a bridge's status and episodes in, a verdict out.

:func:`evaluate` applies the rules of ``docs/operations-metrics.md`` to what a bridge
shows (:class:`HealthStatus`, which ``BridgeStatus`` satisfies) and to the episode times
:class:`HealthEpisodes` keeps from its ``api_logs`` events. Times are passed in: ``now``
on the monotonic clock (a wall-clock jump never makes a row look older or younger),
``wall`` only for the reset windows and rows written before watching began. No IO here;
the HTTP server only renders the :class:`HealthReport`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Protocol

from ibkr_bridge.core._health_verdict import HealthPolicy, HealthReport, TimingSettings
from ibkr_bridge.core.machines import BreakerState, ConnectionState
from ibkr_bridge.core.records import ApiEvent
from ibkr_bridge.core.resetwindow import WatchdogPolicy, in_maintenance, in_weekly_window

__all__ = [
    "BufferHealth",
    "HealthEpisodes",
    "HealthPolicy",
    "HealthReport",
    "HealthStatus",
    "TimingSettings",
    "evaluate",
]

_S = ConnectionState
_RECONNECTING: Final = frozenset({_S.DISCONNECTED, _S.CONNECTING, _S.BACKOFF})


class HealthStatus(Protocol):
    """The read-only status the rules judge (``BridgeStatus`` satisfies it)."""

    @property
    def mode(self) -> str: ...
    @property
    def connection(self) -> str: ...
    @property
    def breaker(self) -> str: ...
    @property
    def stale(self) -> bool: ...
    @property
    def greeks_stale(self) -> bool: ...
    @property
    def last_row_at(self) -> datetime | None: ...
    @property
    def buffer_pending_bytes(self) -> int: ...
    @property
    def rows_submitted(self) -> int: ...
    @property
    def degraded(self) -> str | None: ...
    @property
    def legs_missing(self) -> tuple[str, ...]: ...


class BufferHealth(Protocol):
    """The durable writer's buffer state (``SinkStats`` satisfies it)."""

    @property
    def buffer_error(self) -> str | None: ...
    @property
    def memory_queue_depth(self) -> int: ...
    @property
    def memory_queue_size(self) -> int: ...


class HealthEpisodes:
    """Monotonic times of what the health rules measure, kept from the bridge's events."""

    def __init__(self, now: float) -> None:
        # Until an event says otherwise, episodes are measured from when watching began.
        self.started_at = now
        self.down_since: float | None = now
        self.writing_expected_since = now
        self.stale_since: float | None = None
        self.db_down_since: float | None = None
        self.last_row_at: float | None = None

    def since(self, start: float | None) -> float:
        """When an episode began: ``start``, or when watching began if it predates that."""
        return start if start is not None else self.started_at

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


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


def _over(what: str, elapsed: float, limit: float, extra: str = "") -> str:
    return f"{what} for {_seconds(elapsed)} (limit {_seconds(limit)}{extra})"


def _connection_rule(
    status: HealthStatus,
    t: HealthEpisodes,
    now: float,
    wall: datetime,
    policy: HealthPolicy,
    watchdog: WatchdogPolicy,
) -> tuple[str | None, str | None]:
    """What the connection's state says: (a reason it is unhealthy, or a note)."""
    state = status.connection
    if state == _S.STOPPED:
        return "the bridge is stopped", None
    if state == _S.RESET_WAIT:
        return None, "waiting out IBKR's nightly reset or weekly maintenance"
    if state == _S.LIVE and status.stale:
        stale_for = now - t.since(t.stale_since)
        if in_maintenance(wall, watchdog):
            which = "weekly maintenance" if in_weekly_window(wall, watchdog) else "nightly reset"
            return None, f"IB reports lost connectivity (1100) during the {which} window"
        if stale_for > policy.stale_grace:
            lost = "IB has reported lost connectivity (1100)"
            return _over(lost, stale_for, policy.stale_grace) + ": no rows are written", None
        return None, f"IB reports lost connectivity (1100) for {_seconds(stale_for)}"
    if state == _S.LIVE:
        if t.last_row_at is not None and t.last_row_at >= t.writing_expected_since:
            since_row = now - t.last_row_at
            if since_row > policy.max_row_age:
                return _over("no row written", since_row, policy.max_row_age), None
            return None, None
        waited = now - t.writing_expected_since
        if waited > policy.first_row_grace:
            return (
                f"connected for {_seconds(waited)} but no row written "
                f"(limit {_seconds(policy.first_row_grace)})"
            ), None
        return None, "connected; waiting for complete market data"
    down_for = now - t.since(t.down_since)
    if down_for > policy.outage_grace:
        return _over(
            "not connected to IBKR", down_for, policy.outage_grace, f"; state {state}"
        ), None
    return None, f"reconnecting to IBKR (state {state})"


def evaluate(
    status: HealthStatus,
    episodes: HealthEpisodes,
    *,
    now: float,
    wall: datetime,
    policy: HealthPolicy,
    watchdog: WatchdogPolicy,
    buffer_max_bytes: int,
    buffer: BufferHealth | None,
) -> HealthReport:
    """Judge ``status`` at ``now``; ``buffer`` is None before the bridge has started."""
    t = episodes
    reasons: list[str] = []
    reason, note = _connection_rule(status, t, now, wall, policy, watchdog)
    if reason is not None:
        reasons.append(reason)

    if status.breaker != BreakerState.CLOSED:
        db_for = now - t.since(t.db_down_since)
        if db_for > policy.db_outage_grace:
            extra = f"; breaker {status.breaker}"
            unreachable = _over("database unreachable", db_for, policy.db_outage_grace, extra)
            reasons.append(unreachable + "; rows are kept in the buffer")
        elif note is None:
            note = f"database unreachable (breaker {status.breaker}); rows are buffered"

    if reasons and status.degraded:
        # The rows stopped or are partial because of these legs: say which.
        reasons.append(status.degraded)

    cap, pending = buffer_max_bytes, status.buffer_pending_bytes
    if pending >= policy.buffer_full_ratio * cap:
        reasons.append(
            f"the buffer is {100 * pending / cap:.0f}% full "
            f"({pending} of {cap} bytes): new rows will be refused"
        )
    if buffer is not None and buffer.buffer_error is not None:
        reasons.append(
            f"the buffer is failing ({buffer.buffer_error}): {buffer.memory_queue_depth} "
            f"records wait in memory (at most {buffer.memory_queue_size}), more are "
            "refused; rows still reach the database while it is reachable"
        )

    return HealthReport(
        healthy=not reasons,
        reason="; ".join(reasons) if reasons else None,
        note=None if reasons else note,
        mode=status.mode,
        connection=str(status.connection),
        breaker=str(status.breaker),
        # IB's 1100, or some option leg's Greeks too old / a market-data farm broken.
        stale=status.stale or status.greeks_stale,
        last_row_at=status.last_row_at,
        last_row_age_seconds=_row_age(status, t, now, wall),
        buffer_pending_bytes=pending,
        rows_submitted=status.rows_submitted,
        degraded=status.degraded,
        legs_missing=status.legs_missing,
    )


def _row_age(status: HealthStatus, t: HealthEpisodes, now: float, wall: datetime) -> float | None:
    if t.last_row_at is not None:
        return now - t.last_row_at
    if status.last_row_at is not None:
        # Rows written before watching began: only the wall clock knows.
        return (wall - status.last_row_at).total_seconds()
    return None
