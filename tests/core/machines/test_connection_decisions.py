"""The connection machine's driver decisions: wake, the LIVE-only feed signals, shutdown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.core.machines import ConnectionState, Transition
from ibkr_bridge.core.machines.connection import transition_status

from .test_connection import NOON, RESET, machine_in

S = ConnectionState


@pytest.mark.parametrize("state", list(ConnectionState))
def test_waiting_is_backoff_or_reset_wait(state: ConnectionState) -> None:
    assert machine_in(state).waiting is (state in (S.BACKOFF, S.RESET_WAIT))


def test_wake_in_backoff_is_retry_due() -> None:
    m = machine_in(S.BACKOFF)
    assert m.wake_at is not None
    assert not m.wake(m.wake_at - 0.5, NOON)
    assert m.state is S.BACKOFF
    assert m.pop_transitions() == []
    assert m.wake(m.wake_at, NOON)
    # mypy keeps m.state narrowed to BACKOFF across m.wake(), which changes it.
    assert m.state is S.CONNECTING  # type: ignore[comparison-overlap]
    assert [t.trigger for t in m.pop_transitions()] == ["retry_due"]


def test_wake_in_reset_wait_is_reset_over() -> None:
    m = machine_in(S.RESET_WAIT)
    assert m.wake_at is not None
    assert m.resume_at is not None
    assert not m.wake(0.0, RESET)
    assert m.wake(0.0, m.resume_at)  # the wall clock reached the resume time
    assert m.state is S.CONNECTING
    assert [t.trigger for t in m.pop_transitions()] == ["reset_over"]


@pytest.mark.parametrize("state", [s for s in ConnectionState if s is not S.LIVE])
def test_feed_signals_outside_live_change_nothing(state: ConnectionState) -> None:
    m = machine_in(state)
    assert not m.feed_data_lost(1.0)
    assert not m.feed_data_restored(1.0, True)
    assert m.state is state
    assert not m.stale
    assert m.pop_transitions() == []


def test_feed_signals_while_live() -> None:
    m = machine_in(S.LIVE)
    assert m.feed_data_lost(1.0)
    assert m.stale
    assert not m.should_write
    assert m.feed_data_restored(2.0, False)
    assert not m.stale
    assert m.should_write
    assert [t.trigger for t in m.pop_transitions()] == ["data_lost", "data_restored"]


@pytest.mark.parametrize("state", list(ConnectionState))
def test_shutdown_once_from_anywhere(state: ConnectionState) -> None:
    m = machine_in(state)
    assert m.shutdown(1.0, NOON) is (state is not S.STOPPED)
    assert m.state is S.STOPPED
    assert not m.shutdown(2.0, NOON)
    assert len(m.pop_transitions()) == (0 if state is S.STOPPED else 1)


@given(st.sampled_from(list(ConnectionState)), st.sampled_from(list(ConnectionState)))
def test_transition_status_warns_on_entering_a_wait(
    source: ConnectionState, dest: ConnectionState
) -> None:
    t = Transition(
        machine="connection", trigger="x", source=source.value, dest=dest.value, at=0.0, wall=None
    )
    expected = "warning" if dest in (S.BACKOFF, S.RESET_WAIT) else "info"
    assert transition_status(t) == expected
