"""The SOCKET connection watchdog as a pure state machine.

DISCONNECTED -start-> CONNECTING -connected-> LIVE. A failed connect or a lost connection
goes to RESET_WAIT when the wall time is inside IBKR's nightly reset window (then waits
until the resume time, 00:05 New York by default) or its weekly maintenance window (then
waits until the window's end, Saturday 03:00 New York by default), and to BACKOFF otherwise
(5, 10, 20 s, then every 60 s, never giving up). While LIVE, IB's connectivity codes
1100 / 1101 / 1102 mark market data stale and fresh again without leaving LIVE. ``stop``
ends everything.

Deadlines are monotonic (``wake_at``); the driver sleeps until then and calls the due
trigger with fresh ``now`` and ``wall``. The driver starts its writer task on entering
LIVE and stops it on leaving LIVE: both show up in the outbox and in ``is_live``.

Public API:

``ConnectionState`` StrEnum: ``DISCONNECTED``, ``CONNECTING``, ``LIVE``, ``RESET_WAIT``,
``BACKOFF``, ``STOPPED`` (terminal: every trigger raises there, ``stop`` included).

``WatchdogPolicy`` re-exported from :mod:`ibkr_bridge.core.resetwindow`.

``ConnectionMachine(policy: WatchdogPolicy = WatchdogPolicy())``
    Properties: ``state``, ``policy``, ``is_live``, ``stale`` (LIVE with data lost, code
    1100), ``should_write`` (LIVE and not stale), ``attempt`` (the current back-off attempt,
    1-based; 0 when none), ``wake_at`` (monotonic deadline in BACKOFF and RESET_WAIT, else
    None), ``resume_at`` (the aware New York resume time in RESET_WAIT, else None),
    ``last_error`` (the error or reason of the last failure, or None).

    ``start(now, wall) -> bool``                 DISCONNECTED->CONNECTING
    ``connected(now, wall) -> bool``             CONNECTING->LIVE; back-off starts over
    ``connect_failed(now, wall, error) -> bool`` CONNECTING->RESET_WAIT if ``wall`` is in
                                                 the reset or weekly window, else ->BACKOFF
    ``disconnected(now, wall, reason) -> bool``  LIVE->RESET_WAIT / ->BACKOFF, same rule
    ``retry_due(now, wall) -> bool``             BACKOFF->CONNECTING once ``now >= wake_at``
    ``reset_over(now, wall) -> bool``            RESET_WAIT->CONNECTING once ``now >= wake_at``
                                                 or ``wall >= resume_at`` (the monotonic
                                                 clock stands still while a host sleeps)
    ``data_lost(now, wall=None) -> bool``        LIVE, internal: code 1100, ``stale = True``
    ``data_restored(now, resubscribe, wall=None) -> bool``
                                                 LIVE, internal: 1101 (resubscribe=True) or
                                                 1102 (False); ``stale = False``
    ``stop(now, wall=None) -> bool``             any state but STOPPED -> STOPPED

    Driver decisions (what an outside event means in the current state):
    ``waiting`` (BACKOFF or RESET_WAIT), ``wake(now, wall)`` (the wait's due trigger),
    ``feed_data_lost(now)`` / ``feed_data_restored(now, resubscribe)`` (the LIVE-only
    triggers, False and no change elsewhere), ``shutdown(now, wall)`` (``stop`` unless
    STOPPED).

    ``retry_due`` and ``reset_over`` return False and change nothing when not yet due.
    Entering BACKOFF records ``attempt`` and ``delay``; entering RESET_WAIT records
    ``window`` ("daily" or "weekly"), ``resume_at`` (ISO 8601, from
    ``resetwindow.maintenance_resume``) and ``wait`` seconds; entering RESET_WAIT starts back-off
    over, so a failed connect after the reset window is back-off attempt 1.

Inherited from ``StateMachine``: ``name``, ``can(trigger)``, ``permitted_triggers()``,
``pop_transitions() -> list[Transition]``.

``TRANSITIONS`` the rule table; ``SPEC`` the whole machine as data (both in
``_connection_table``, with ``transition_status(t)``: "warning" on entering a wait).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import transitions

from ibkr_bridge.core.machines._connection_table import (
    SPEC,
    TRANSITIONS,
    WAITING,
    ConnectionState,
    transition_status,
)
from ibkr_bridge.core.machines.base import StateMachine
from ibkr_bridge.core.resetwindow import (
    WatchdogPolicy,
    in_maintenance,
    in_weekly_window,
    maintenance_resume,
)

__all__ = [
    "SPEC",
    "TRANSITIONS",
    "ConnectionMachine",
    "ConnectionState",
    "WatchdogPolicy",
    "transition_status",
]


def _utc(wall: datetime) -> datetime:
    return wall.astimezone(UTC)


class ConnectionMachine(StateMachine[ConnectionState]):
    """The watchdog; see the module docstring for the triggers."""

    SPEC = SPEC

    def __init__(self, policy: WatchdogPolicy | None = None) -> None:
        self._policy = policy if policy is not None else WatchdogPolicy()
        self._attempt = 0
        self._wake_at: float | None = None
        self._resume_at: datetime | None = None
        self._stale = False
        self._last_error: str | None = None
        super().__init__()

    @property
    def policy(self) -> WatchdogPolicy:
        return self._policy

    @property
    def is_live(self) -> bool:
        return self.state is ConnectionState.LIVE

    @property
    def stale(self) -> bool:
        """LIVE but IB reported lost connectivity (1100): the data is not fresh."""
        return self._stale

    @property
    def waiting(self) -> bool:
        """In BACKOFF or RESET_WAIT: nothing happens until ``wake_at``, then :meth:`wake`."""
        return self.state in WAITING

    @property
    def should_write(self) -> bool:
        return self.is_live and not self._stale

    @property
    def attempt(self) -> int:
        """The back-off attempt being waited for (1-based); 0 after a success or a reset."""
        return self._attempt

    @property
    def wake_at(self) -> float | None:
        """Monotonic deadline of BACKOFF or RESET_WAIT; None in other states."""
        return self._wake_at

    @property
    def resume_at(self) -> datetime | None:
        """The wall-clock resume time while in RESET_WAIT; None otherwise."""
        return self._resume_at

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # Triggers -------------------------------------------------------------------------

    def start(self, now: float, wall: datetime) -> bool:
        return self._fire("start", now=now, wall=_required(wall))

    def connected(self, now: float, wall: datetime) -> bool:
        return self._fire("connected", now=now, wall=_required(wall))

    def connect_failed(self, now: float, wall: datetime, error: str) -> bool:
        return self._fire("connect_failed", now=now, wall=_required(wall), error=_text(error))

    def disconnected(self, now: float, wall: datetime, reason: str) -> bool:
        return self._fire("disconnected", now=now, wall=_required(wall), reason=_text(reason))

    def retry_due(self, now: float, wall: datetime) -> bool:
        return self._fire("retry_due", now=now, wall=_required(wall))

    def reset_over(self, now: float, wall: datetime) -> bool:
        return self._fire("reset_over", now=now, wall=_required(wall))

    def data_lost(self, now: float, wall: datetime | None = None) -> bool:
        return self._fire("data_lost", now=now, wall=wall)

    def data_restored(self, now: float, resubscribe: bool, wall: datetime | None = None) -> bool:
        if not isinstance(resubscribe, bool):
            raise TypeError(f"resubscribe must be a bool, got {resubscribe!r}")
        return self._fire("data_restored", now=now, wall=wall, resubscribe=resubscribe)

    def stop(self, now: float, wall: datetime | None = None) -> bool:
        return self._fire("stop", now=now, wall=wall)

    # Decisions for the driver: which trigger an outside event means in this state ---------

    def wake(self, now: float, wall: datetime) -> bool:
        """The deadline of the current wait came: ``retry_due`` or ``reset_over``."""
        if self.state is ConnectionState.BACKOFF:
            return self.retry_due(now, wall)
        return self.reset_over(now, wall)

    def feed_data_lost(self, now: float) -> bool:
        """IB 1100: ``data_lost`` while LIVE; elsewhere it means nothing (no data flows)."""
        return self.can("data_lost") and self.data_lost(now)

    def feed_data_restored(self, now: float, resubscribe: bool) -> bool:
        """IB 1101 / 1102: ``data_restored`` while LIVE; ignored elsewhere, like 1100."""
        return self.can("data_restored") and self.data_restored(now, resubscribe)

    def shutdown(self, now: float, wall: datetime) -> bool:
        """``stop`` unless already STOPPED, so shutting down twice is harmless."""
        return self.can("stop") and self.stop(now, wall)

    # Guards and effects ---------------------------------------------------------------

    def _guard_in_reset_window(self, event: transitions.EventData) -> bool:
        return in_maintenance(event.kwargs["wall"], self._policy)

    def _guard_backoff_elapsed(self, event: transitions.EventData) -> bool:
        now: float = event.kwargs["now"]
        return self._wake_at is not None and now >= self._wake_at

    def _guard_resume_reached(self, event: transitions.EventData) -> bool:
        now: float = event.kwargs["now"]
        wall: datetime = event.kwargs["wall"]
        if self._wake_at is not None and now >= self._wake_at:
            return True
        return self._resume_at is not None and _utc(wall) >= _utc(self._resume_at)

    def _apply(
        self,
        trigger: str,
        source: ConnectionState,
        dest: ConnectionState,
        *,
        now: float,
        wall: datetime | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {}
        if source is not dest:
            # Deadlines and staleness belong to the state being left.
            self._wake_at = None
            self._resume_at = None
            self._stale = False
        for key in ("error", "reason"):
            if key in kwargs:
                self._last_error = kwargs[key]
                detail[key] = kwargs[key]
        if dest is ConnectionState.BACKOFF:
            self._attempt += 1
            delay = self._policy.backoff_delay(self._attempt)
            self._wake_at = float(now) + delay
            detail.update(attempt=self._attempt, delay=delay)
        elif dest is ConnectionState.RESET_WAIT:
            assert wall is not None  # required by the triggers that lead here
            self._attempt = 0
            resume = maintenance_resume(wall, self._policy)
            wait = (_utc(resume) - _utc(wall)).total_seconds()
            self._resume_at = resume
            self._wake_at = float(now) + wait
            window = "weekly" if in_weekly_window(wall, self._policy) else "daily"
            detail.update(window=window, resume_at=resume.isoformat(), wait=wait)
        elif dest is ConnectionState.CONNECTING and source is not ConnectionState.DISCONNECTED:
            detail["after"] = source.value
            if self._attempt:
                detail["attempt"] = self._attempt
        elif dest is ConnectionState.LIVE and source is ConnectionState.CONNECTING:
            self._attempt = 0
            self._last_error = None
        elif trigger == "data_lost":
            self._stale = True
        elif trigger == "data_restored":
            self._stale = False
            detail["resubscribe"] = kwargs["resubscribe"]
        return detail


def _required(wall: datetime) -> datetime:
    if wall is None:
        raise ValueError("wall time is required for this trigger")
    return wall


def _text(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {value!r}")
    return value
