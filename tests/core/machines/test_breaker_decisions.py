"""The breaker's decisions for its driver: where a batch goes, and when a failure counts."""

from __future__ import annotations

import pytest

from ibkr_bridge.config import default_of
from ibkr_bridge.core.machines.breaker import (
    BreakerState,
    CircuitBreaker,
    Route,
)

from .test_breaker import CLOSED, HALF, OPEN, WALL, breaker_in

DEFAULT_RETRY_INTERVAL = 60.0


def test_the_default_retry_interval_is_one_minute() -> None:
    # One definition (config/settings.toml); the pure breaker has no default of its own.
    assert default_of("retry_interval") == DEFAULT_RETRY_INTERVAL
    assert CircuitBreaker(DEFAULT_RETRY_INTERVAL).retry_interval == DEFAULT_RETRY_INTERVAL


@pytest.mark.parametrize(
    ("state", "probe", "buffer_empty", "expected"),
    [
        (CLOSED, False, True, Route.DIRECT),
        # Rows already waiting would be overtaken by a direct write.
        (CLOSED, False, False, Route.BUFFER),
        (OPEN, False, True, Route.BUFFER),
        (OPEN, False, False, Route.BUFFER),
        (HALF, False, True, Route.BUFFER),
        (HALF, True, True, Route.BUFFER),
        (HALF, True, False, Route.BUFFER),
    ],
)
def test_route(state: BreakerState, probe: bool, buffer_empty: bool, expected: Route) -> None:
    b = breaker_in(state, probe=probe)
    assert b.route(buffer_empty=buffer_empty) is expected
    # A query: nothing changes, nothing is recorded.
    assert (b.state, b.probe_held) == (state, probe)
    assert b.pop_transitions() == []


def test_route_follows_the_state_through_a_cycle() -> None:
    b = CircuitBreaker(retry_interval=10.0)
    assert b.route(buffer_empty=True) is Route.DIRECT
    b.trip(1.0)
    assert b.route(buffer_empty=True) is Route.BUFFER
    assert b.retry_due(11.0)
    assert b.try_acquire_probe(11.0)
    assert b.route(buffer_empty=True) is Route.BUFFER
    assert b.drained(12.0)
    assert b.route(buffer_empty=True) is Route.DIRECT


def test_trip_opens_a_closed_breaker_like_failure() -> None:
    b = breaker_in(CLOSED)
    assert b.trip(5.0, wall=WALL, error="connection refused") is True
    assert (b.state, b.opened_at, b.next_retry_at) == (OPEN, 5.0, 65.0)
    [t] = b.pop_transitions()
    assert (t.trigger, t.source, t.dest) == ("failure", "CLOSED", "OPEN")
    assert t.detail == {"retry_at": 65.0, "error": "connection refused"}


def test_trip_reopens_half_open_and_releases_the_probe() -> None:
    b = breaker_in(HALF, probe=True)
    assert b.trip(100.0, error="probe failed") is True
    assert (b.state, b.probe_held, b.next_retry_at) == (OPEN, False, 160.0)
    [t] = b.pop_transitions()
    assert (t.trigger, t.source, t.dest) == ("failure", "HALF_OPEN", "OPEN")


def test_trip_while_open_changes_nothing() -> None:
    b = breaker_in(OPEN)
    before = (b.state, b.opened_at, b.next_retry_at)
    # A late failure must not push the retry back (failure() itself would raise here).
    assert b.trip(30.0, error="straggler") is False
    assert (b.state, b.opened_at, b.next_retry_at) == before
    assert b.pop_transitions() == []
    assert b.retry_due(DEFAULT_RETRY_INTERVAL) is True


def test_trip_checks_the_error_type_like_failure() -> None:
    b = breaker_in(CLOSED)
    with pytest.raises(TypeError):
        b.trip(1.0, error=42)  # type: ignore[arg-type]
    assert b.state is CLOSED
