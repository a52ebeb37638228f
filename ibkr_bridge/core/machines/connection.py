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

    ``retry_due`` and ``reset_over`` return False and change nothing when not yet due.
    Entering BACKOFF records ``attempt`` and ``delay``; entering RESET_WAIT records
    ``window`` ("daily" or "weekly"), ``resume_at`` (ISO 8601, from
    ``resetwindow.maintenance_resume``) and ``wait`` seconds; entering RESET_WAIT starts back-off
    over, so a failed connect after the reset window is back-off attempt 1.

Inherited from ``StateMachine``: ``name``, ``can(trigger)``, ``permitted_triggers()``,
``pop_transitions() -> list[Transition]``.

``TRANSITIONS`` the rule table; ``SPEC`` the whole machine as data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import transitions

from ibkr_bridge.core.machines.base import MachineSpec, Rule, StateMachine
from ibkr_bridge.core.resetwindow import (
    WatchdogPolicy,
    in_maintenance,
    in_weekly_window,
    maintenance_resume,
)

__all__ = ["SPEC", "TRANSITIONS", "ConnectionMachine", "ConnectionState", "WatchdogPolicy"]


class ConnectionState(StrEnum):
    DISCONNECTED = "DISCONNECTED"
    CONNECTING = "CONNECTING"
    LIVE = "LIVE"
    RESET_WAIT = "RESET_WAIT"
    BACKOFF = "BACKOFF"
    STOPPED = "STOPPED"


_S = ConnectionState

TRANSITIONS: Final[tuple[Rule, ...]] = (
    Rule("start", _S.DISCONNECTED, _S.CONNECTING, note="the watchdog starts"),
    Rule("connected", _S.CONNECTING, _S.LIVE, note="handshake done; start writing"),
    Rule(
        "connect_failed",
        _S.CONNECTING,
        _S.RESET_WAIT,
        conditions=("in_reset_window",),
        note="failed during the nightly reset or weekly maintenance: wait for the resume time",
    ),
    Rule(
        "connect_failed",
        _S.CONNECTING,
        _S.BACKOFF,
        unless=("in_reset_window",),
        note="failed: wait the next back-off delay",
    ),
    Rule(
        "disconnected",
        _S.LIVE,
        _S.RESET_WAIT,
        conditions=("in_reset_window",),
        note="lost during the nightly reset or weekly maintenance: stop writing, wait",
    ),
    Rule(
        "disconnected",
        _S.LIVE,
        _S.BACKOFF,
        unless=("in_reset_window",),
        note="lost: stop writing, wait the first back-off delay",
    ),
    Rule(
        "data_lost",
        _S.LIVE,
        None,
        note="IB code 1100: data is stale, writing pauses",
    ),
    Rule(
        "data_restored",
        _S.LIVE,
        None,
        note="IB code 1101 (resubscribe) or 1102 (data kept): writing resumes",
    ),
    Rule(
        "retry_due",
        _S.BACKOFF,
        _S.CONNECTING,
        conditions=("backoff_elapsed",),
        note="the back-off delay is over: connect again",
    ),
    Rule(
        "reset_over",
        _S.RESET_WAIT,
        _S.CONNECTING,
        conditions=("resume_reached",),
        note="the reset or maintenance window is over: connect again",
    ),
    *(
        Rule("stop", state, _S.STOPPED, note="shutdown")
        for state in ConnectionState
        if state is not _S.STOPPED
    ),
)

SPEC: Final = MachineSpec(
    name="connection",
    title="SOCKET connection watchdog",
    summary=(
        "Keeps the ib_async connection to the Gateway up without ever giving up. With the "
        "default `WatchdogPolicy`, a failure inside IBKR's nightly reset window "
        "(23:40:00-23:59:59 New York time, inclusive) waits until the next 00:05 New York "
        "time, and one inside the weekly maintenance window (Friday 23:00 to Saturday 03:00 "
        "New York time) waits until its end; any other failure backs off 5, 10, 20 s and "
        "then retries every 60 s. Rows are written only while LIVE and not stale."
    ),
    states=ConnectionState,
    initial=ConnectionState.DISCONNECTED,
    rules=TRANSITIONS,
    state_docs={
        "DISCONNECTED": "Not started yet.",
        "CONNECTING": "A connect attempt is under way.",
        "LIVE": "Connected; the writer runs (paused while `stale`).",
        "RESET_WAIT": "Waiting out IBKR's nightly reset or weekly maintenance.",
        "BACKOFF": "Waiting `wake_at` before the next attempt.",
        "STOPPED": "Shut down; terminal.",
    },
    guard_docs={
        "in_reset_window": (
            "`wall` is inside the nightly reset window or the weekly maintenance window "
            "(New York time)"
        ),
        "backoff_elapsed": "`now >= wake_at`",
        "resume_reached": "`now >= wake_at` or `wall >= resume_at`",
    },
)


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
