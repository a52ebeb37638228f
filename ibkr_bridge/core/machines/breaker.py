"""The PostgreSQL circuit breaker as a pure state machine.

CLOSED: writes go straight to PostgreSQL. A transient write failure opens the breaker.
OPEN: writes go to the crash-safe buffer; after ``retry_interval`` seconds the driver may
move to HALF_OPEN. HALF_OPEN: writes still go to the buffer while exactly one probe (the
drain task) replays the buffer into PostgreSQL; a failed probe re-opens the breaker, a
fully drained buffer closes it. Letting every concurrent caller probe a recovering
database is the classic breaker bug, so the probe is a token only one caller can hold.

Public API (every trigger also takes an optional aware ``wall`` for the log record):

``BreakerState`` StrEnum: ``CLOSED``, ``OPEN``, ``HALF_OPEN``.

``Route`` StrEnum: ``DIRECT`` (straight to PostgreSQL), ``BUFFER`` (behind what waits).

``CircuitBreaker(retry_interval: float)``
    (its default, ``BRIDGE_RETRY_INTERVAL``, is the configuration's: this layer has none)
    ``state``, ``buffering`` (True in OPEN and HALF_OPEN), ``opened_at`` (monotonic time
    of the last opening, None when CLOSED), ``next_retry_at`` (``opened_at +
    retry_interval`` in OPEN, else None), ``probe_held``, ``retry_interval``.

    ``failure(now, *, wall=None, error=None) -> bool``  CLOSED->OPEN, HALF_OPEN->OPEN;
    sets ``opened_at = now`` and releases the probe.

    ``retry_due(now, *, wall=None) -> bool``  OPEN->HALF_OPEN if ``now >= next_retry_at``
    (``opened_at + retry_interval``); otherwise returns False and changes nothing.

    ``try_acquire_probe(now, *, wall=None) -> bool``  True for exactly one caller in
    HALF_OPEN (recorded as trigger ``acquire_probe``); False while the probe is held and
    in any other state (never raises).

    ``probe_done(now, *, wall=None) -> bool``  releases the probe (HALF_OPEN stays).

    ``drained(now, *, wall=None) -> bool``  HALF_OPEN->CLOSED; the caller must hold the
    probe (the drain task reports it after the buffer is empty).

    ``route(*, buffer_empty: bool) -> Route``  ``DIRECT`` only while CLOSED with nothing
    waiting (a direct write would overtake what waits); ``BUFFER`` otherwise. Pure query.

    ``trip(now, *, wall=None, error=None) -> bool``  what a writer reports a failure with:
    ``failure`` unless the breaker is already OPEN, where it changes nothing and returns
    False (rows keep waiting; the retry deadline is not pushed back).

    Triggers raise ``IllegalTransition`` in states with no rule for them; ``probe_done``
    and ``drained`` also raise when the probe is not held.

Inherited from ``StateMachine``: ``name``, ``can(trigger)``, ``permitted_triggers()``,
``pop_transitions() -> list[Transition]``.

``TRANSITIONS`` the rule table; ``SPEC`` the whole machine as data.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import transitions

from ibkr_bridge.core.machines.base import MachineSpec, Rule, StateMachine

__all__ = [
    "SPEC",
    "TRANSITIONS",
    "BreakerState",
    "CircuitBreaker",
    "Route",
]

# Seconds between retries while PostgreSQL is unreachable, when nobody says otherwise.


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class Route(StrEnum):
    """Where a new batch goes."""

    DIRECT = "direct"  # straight to PostgreSQL
    BUFFER = "buffer"  # to the crash-safe buffer, behind whatever waits there


_C, _O, _H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

TRANSITIONS: Final[tuple[Rule, ...]] = (
    Rule("failure", _C, _O, note="a transient write failure; writes now go to the buffer"),
    Rule("failure", _H, _O, note="the probe failed; the retry timer restarts"),
    Rule(
        "retry_due",
        _O,
        _H,
        conditions=("retry_interval_elapsed",),
        note="time to probe PostgreSQL with the buffered rows",
    ),
    Rule(
        "acquire_probe",
        _H,
        None,
        conditions=("probe_free",),
        note="try_acquire_probe(): one caller becomes the probe",
    ),
    Rule(
        "probe_done",
        _H,
        None,
        conditions=("probe_held",),
        strict=True,
        note="a drain batch committed; more remain",
    ),
    Rule(
        "drained",
        _H,
        _C,
        conditions=("probe_held",),
        strict=True,
        note="the buffer is empty; writes go straight to PostgreSQL again",
    ),
)

SPEC: Final = MachineSpec(
    name="breaker",
    title="PostgreSQL circuit breaker",
    summary=(
        "Decides where a row goes: straight to PostgreSQL (CLOSED) or to the crash-safe "
        "buffer (OPEN, HALF_OPEN). After `retry_interval` seconds "
        "(BRIDGE_RETRY_INTERVAL) OPEN "
        "becomes HALF_OPEN; exactly one probe, the drain task, then replays the buffer. "
        "A failed probe re-opens the breaker; an empty buffer closes it."
    ),
    states=BreakerState,
    initial=BreakerState.CLOSED,
    rules=TRANSITIONS,
    state_docs={
        "CLOSED": "Writes go to PostgreSQL.",
        "OPEN": "PostgreSQL failed; writes go to the buffer until the retry is due.",
        "HALF_OPEN": "Writes still go to the buffer; one probe drains it into PostgreSQL.",
    },
    guard_docs={
        "retry_interval_elapsed": "`now - opened_at >= retry_interval`",
        "probe_free": "no caller holds the probe",
        "probe_held": "the probe is held (otherwise the trigger raises)",
    },
)


class CircuitBreaker(StateMachine[BreakerState]):
    """The breaker; see the module docstring for the triggers."""

    SPEC = SPEC

    def __init__(self, retry_interval: float) -> None:
        retry_interval = float(retry_interval)
        if not math.isfinite(retry_interval) or retry_interval < 0:
            raise ValueError(f"retry_interval must be finite and >= 0, got {retry_interval!r}")
        self._retry_interval = retry_interval
        self._opened_at: float | None = None
        self._probe_held = False
        super().__init__()

    @property
    def retry_interval(self) -> float:
        return self._retry_interval

    @property
    def buffering(self) -> bool:
        """True while writes must go to the buffer instead of PostgreSQL."""
        return self.state is not BreakerState.CLOSED

    @property
    def opened_at(self) -> float | None:
        """Monotonic time the breaker last opened; None while CLOSED."""
        return self._opened_at

    @property
    def next_retry_at(self) -> float | None:
        """Monotonic time from which ``retry_due`` succeeds; None unless OPEN."""
        if self.state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self._retry_interval

    @property
    def probe_held(self) -> bool:
        return self._probe_held

    # Decisions: pure queries and guarded triggers for the driver ----------------------

    def route(self, *, buffer_empty: bool) -> Route:
        """Where a new batch goes: straight to PostgreSQL only while CLOSED and nothing waits.

        Rows already waiting (``buffer_empty`` False) would be overtaken by a direct write,
        so order forces the buffer even when the breaker is CLOSED.
        """
        if self.state is BreakerState.CLOSED and buffer_empty:
            return Route.DIRECT
        return Route.BUFFER

    def trip(self, now: float, *, wall: datetime | None = None, error: str | None = None) -> bool:
        """Report a failure from any writer: opens the breaker unless it is OPEN already.

        While OPEN a failure (a straggling write, a drain in CLOSED racing a live write)
        changes nothing: the rows wait anyway, and ``failure`` there would raise.
        """
        if self.state is BreakerState.OPEN:
            return False
        return self.failure(now, wall=wall, error=error)

    # Triggers -------------------------------------------------------------------------

    def failure(
        self, now: float, *, wall: datetime | None = None, error: str | None = None
    ) -> bool:
        """A transient write failure (CLOSED) or a failed probe (HALF_OPEN): open."""
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be a str or None, got {error!r}")
        return self._fire("failure", now=now, wall=wall, error=error)

    def retry_due(self, now: float, *, wall: datetime | None = None) -> bool:
        """OPEN->HALF_OPEN once ``retry_interval`` has passed; False (no change) before."""
        return self._fire("retry_due", now=now, wall=wall)

    def try_acquire_probe(self, now: float, *, wall: datetime | None = None) -> bool:
        """Become the single probe; False for everyone else and outside HALF_OPEN."""
        if self.state is not BreakerState.HALF_OPEN:
            return False
        return self._fire("acquire_probe", now=now, wall=wall)

    def probe_done(self, now: float, *, wall: datetime | None = None) -> bool:
        """Give the probe back after a successful batch; the buffer is not empty yet."""
        return self._fire("probe_done", now=now, wall=wall)

    def drained(self, now: float, *, wall: datetime | None = None) -> bool:
        """The probe emptied the buffer: close."""
        return self._fire("drained", now=now, wall=wall)

    # Guards and effects ---------------------------------------------------------------

    def _guard_retry_interval_elapsed(self, event: transitions.EventData) -> bool:
        now: float = event.kwargs["now"]
        # The same sum as next_retry_at, never ``now - opened_at >= interval``: in floating
        # point (a + b) - a can be less than b, and a driver that slept until next_retry_at
        # would then be refused for ever and spin (seen in the soak: 100 % CPU, no retries).
        deadline = self.next_retry_at
        return deadline is not None and now >= deadline

    def _guard_probe_free(self, event: transitions.EventData) -> bool:
        return not self._probe_held

    def _guard_probe_held(self, event: transitions.EventData) -> bool:
        return self._probe_held

    def _apply(
        self,
        trigger: str,
        source: BreakerState,
        dest: BreakerState,
        *,
        now: float,
        wall: datetime | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {}
        if trigger == "failure":
            self._opened_at = float(now)
            self._probe_held = False
            detail["retry_at"] = self._opened_at + self._retry_interval
            if kwargs.get("error") is not None:
                detail["error"] = kwargs["error"]
        elif trigger == "retry_due":
            assert self._opened_at is not None  # the guard checked it
            detail["open_for"] = float(now) - self._opened_at
        elif trigger == "acquire_probe":
            self._probe_held = True
        elif trigger == "probe_done":
            self._probe_held = False
        elif trigger == "drained":
            self._probe_held = False
            self._opened_at = None
        return detail
