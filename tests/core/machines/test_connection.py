"""The SOCKET connection watchdog machine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_bridge.core.machines import (
    ConnectionMachine,
    ConnectionState,
    IllegalTransition,
    WatchdogPolicy,
)
from ibkr_bridge.core.machines.connection import TRANSITIONS

S = ConnectionState
NY = ZoneInfo("America/New_York")
NOON = datetime(2026, 1, 5, 12, 0, tzinfo=NY)  # outside the reset window
RESET = datetime(2026, 1, 5, 23, 45, tzinfo=NY)  # inside it


def current(m: ConnectionMachine) -> ConnectionState:
    """Re-read the state (mypy would keep an earlier ``assert m.state is ...`` narrowing)."""
    return m.state


def live(
    now: float = 0.0, wall: datetime = NOON, policy: WatchdogPolicy | None = None
) -> ConnectionMachine:
    m = ConnectionMachine(policy)
    assert m.start(now, wall)
    assert m.connected(now, wall)
    m.pop_transitions()
    return m


def machine_in(state: ConnectionState) -> ConnectionMachine:
    m = ConnectionMachine()
    if state is S.DISCONNECTED:
        return m
    if state is S.STOPPED:
        m.stop(0.0)
    else:
        m.start(0.0, NOON)
        if state is S.LIVE:
            m.connected(0.0, NOON)
        elif state is S.BACKOFF:
            m.connect_failed(0.0, NOON, "refused")
        elif state is S.RESET_WAIT:
            m.connect_failed(0.0, RESET, "refused")
    assert m.state is state
    m.pop_transitions()
    return m


def test_start_connect_and_live() -> None:
    m = ConnectionMachine()
    assert (m.state, m.is_live, m.should_write, m.attempt, m.wake_at) == (
        S.DISCONNECTED,
        False,
        False,
        0,
        None,
    )
    assert m.start(1.0, NOON)
    assert m.state is S.CONNECTING
    assert m.connected(2.0, NOON)
    assert (m.state, m.is_live, m.should_write, m.stale) == (S.LIVE, True, True, False)
    records = m.pop_transitions()
    assert [(t.machine, t.trigger, t.source, t.dest, t.at, t.wall) for t in records] == [
        ("connection", "start", "DISCONNECTED", "CONNECTING", 1.0, NOON),
        ("connection", "connected", "CONNECTING", "LIVE", 2.0, NOON),
    ]


def test_backoff_schedule_then_steady_interval_forever() -> None:
    m = live()
    assert m.disconnected(10.0, NOON, "socket closed")
    now = 10.0
    delays = []
    for attempt in range(1, 9):
        assert m.state is S.BACKOFF
        assert m.attempt == attempt
        assert m.wake_at is not None
        delays.append(m.wake_at - now)
        # Not due a moment before the deadline: nothing happens.
        assert m.retry_due(m.wake_at - 0.001, NOON) is False
        assert current(m) is S.BACKOFF
        now = m.wake_at
        assert m.retry_due(now, NOON)
        assert current(m) is S.CONNECTING
        assert m.wake_at is None
        assert m.connect_failed(now, NOON, f"refused {attempt}")
    assert delays == [5.0, 10.0, 20.0, 60.0, 60.0, 60.0, 60.0, 60.0]

    records = [t for t in m.pop_transitions() if t.dest == "BACKOFF"]
    assert [(t.detail["attempt"], t.detail["delay"]) for t in records] == [
        (n, d) for n, d in enumerate([5.0, 10.0, 20.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0], 1)
    ]
    assert records[0].trigger == "disconnected"
    assert records[0].detail["reason"] == "socket closed"
    assert records[1].detail["error"] == "refused 1"
    assert m.last_error == "refused 8"


def test_connected_starts_backoff_over() -> None:
    m = live()
    m.disconnected(0.0, NOON, "eof")
    m.retry_due(5.0, NOON)
    m.connect_failed(5.0, NOON, "refused")
    assert m.attempt == 2
    m.retry_due(15.0, NOON)
    assert m.connected(15.0, NOON)
    assert (m.attempt, m.last_error) == (0, None)
    m.disconnected(20.0, NOON, "eof")
    assert (m.attempt, m.wake_at) == (1, 25.0)


def test_custom_policy() -> None:
    policy = WatchdogPolicy(backoff=(1.0, 2.0), steady_interval=7.0)
    m = ConnectionMachine(policy)
    assert m.policy is policy
    m.start(0.0, NOON)
    waits = []
    now = 0.0
    for _ in range(4):
        m.connect_failed(now, NOON, "x")
        assert m.wake_at is not None
        waits.append(m.wake_at - now)
        now = m.wake_at
        m.retry_due(now, NOON)
    assert waits == [1.0, 2.0, 7.0, 7.0]


def test_disconnect_in_reset_window_waits_until_0005_new_york() -> None:
    m = live(now=100.0)
    assert m.disconnected(100.0, RESET, "socket closed")
    assert m.state is S.RESET_WAIT
    assert not m.is_live
    assert m.resume_at == datetime(2026, 1, 6, 0, 5, tzinfo=NY)
    assert m.wake_at == 100.0 + 20 * 60
    (record,) = m.pop_transitions()
    assert (record.trigger, record.source, record.dest) == ("disconnected", "LIVE", "RESET_WAIT")
    assert dict(record.detail) == {
        "reason": "socket closed",
        "window": "daily",
        "resume_at": "2026-01-06T00:05:00-05:00",
        "wait": 1200.0,
    }
    # Not due until the deadline.
    assert m.reset_over(100.0 + 1199.0, RESET + timedelta(seconds=1199)) is False
    assert current(m) is S.RESET_WAIT
    assert m.reset_over(100.0 + 1200.0, RESET + timedelta(seconds=1200))
    assert current(m) is S.CONNECTING
    assert (m.wake_at, m.resume_at) == (None, None)  # type: ignore[comparison-overlap]


def test_failed_connect_after_reset_wait_is_backoff_attempt_1() -> None:
    m = ConnectionMachine()
    m.start(0.0, RESET)
    m.connect_failed(0.0, RESET - timedelta(minutes=6), "refused")  # 23:39, outside
    assert (m.state, m.attempt) == (S.BACKOFF, 1)
    m.retry_due(5.0, RESET)
    m.connect_failed(5.0, RESET, "refused")  # 23:45, inside
    assert (m.state, m.attempt) == (S.RESET_WAIT, 0)
    after = datetime(2026, 1, 6, 0, 5, tzinfo=NY)
    assert m.reset_over(5.0 + 1200.0, after)
    assert m.connect_failed(5.0 + 1200.0, after, "still down")
    assert (m.state, m.attempt, m.wake_at) == (S.BACKOFF, 1, 1205.0 + 5.0)


def test_reset_over_also_due_by_wall_clock() -> None:
    # A host that slept keeps its monotonic clock still; the wall clock still says 00:05.
    m = machine_in(S.RESET_WAIT)
    assert m.wake_at is not None
    assert m.reset_over(1.0, datetime(2026, 1, 6, 0, 5, tzinfo=NY))
    assert m.state is S.CONNECTING


def test_reset_wait_uses_real_seconds_with_any_wall_zone() -> None:
    a = live()
    b = live()
    a.disconnected(0.0, RESET, "x")
    b.disconnected(0.0, RESET.astimezone(UTC), "x")
    assert a.wake_at == b.wake_at == 1200.0
    assert a.resume_at == b.resume_at


def test_reset_wait_across_a_dst_change_counts_real_seconds() -> None:
    # A window that straddles the 2025-11-02 fall-back: 01:10 EDT to 03:00 EST is 2h50m of
    # real time, though the local clock moves only 1h50m.
    policy = WatchdogPolicy(
        reset_window_start=time(1, 0), reset_window_end=time(1, 30), resume_at=time(3, 0)
    )
    m = live(policy=policy)
    wall = datetime(2025, 11, 2, 1, 10, tzinfo=NY)  # fold=0: the EDT one
    assert m.disconnected(0.0, wall, "reset")
    assert m.state is S.RESET_WAIT
    assert m.wake_at == 2 * 3600 + 50 * 60
    assert m.resume_at == datetime(2025, 11, 2, 3, 0, tzinfo=NY)


@pytest.mark.parametrize(
    ("local", "dest"),
    [
        (time(23, 39, 59), S.BACKOFF),
        (time(23, 40, 0), S.RESET_WAIT),
        (time(23, 59, 59), S.RESET_WAIT),
        (time(0, 0, 0), S.BACKOFF),
    ],
)
@pytest.mark.parametrize("trigger", ["connect_failed", "disconnected"])
def test_window_edges_pick_the_destination(
    local: time, dest: ConnectionState, trigger: str
) -> None:
    wall = datetime.combine(NOON.date(), local, tzinfo=NY)
    m = machine_in(S.CONNECTING if trigger == "connect_failed" else S.LIVE)
    assert getattr(m, trigger)(0.0, wall, "lost")
    assert m.state is dest


FRIDAY_NIGHT = datetime(2026, 3, 6, 23, 30, tzinfo=NY)  # inside the weekly window only
SATURDAY_0300 = datetime(2026, 3, 7, 3, 0, tzinfo=NY)  # its end


def test_disconnect_in_the_weekly_window_waits_until_its_end() -> None:
    m = live(now=100.0)
    assert m.disconnected(100.0, FRIDAY_NIGHT, "Gateway closed the socket")
    assert m.state is S.RESET_WAIT
    assert m.resume_at == SATURDAY_0300
    assert m.wake_at == 100.0 + 3.5 * 3600
    (record,) = m.pop_transitions()
    assert dict(record.detail) == {
        "reason": "Gateway closed the socket",
        "window": "weekly",
        "resume_at": "2026-03-07T03:00:00-05:00",
        "wait": 3.5 * 3600,
    }
    assert m.reset_over(100.0 + 3.5 * 3600 - 1, SATURDAY_0300 - timedelta(seconds=1)) is False
    assert m.reset_over(100.0 + 3.5 * 3600, SATURDAY_0300)
    assert current(m) is S.CONNECTING


@pytest.mark.parametrize(
    ("wall", "dest", "resume"),
    [
        (datetime(2026, 3, 6, 22, 59, 59, tzinfo=NY), S.BACKOFF, None),
        (datetime(2026, 3, 6, 23, 0, tzinfo=NY), S.RESET_WAIT, SATURDAY_0300),
        # Both windows: the nightly 00:05 would fall inside the weekly one, so 03:00.
        (datetime(2026, 3, 6, 23, 45, tzinfo=NY), S.RESET_WAIT, SATURDAY_0300),
        (datetime(2026, 3, 7, 2, 59, 59, tzinfo=NY), S.RESET_WAIT, SATURDAY_0300),
        (SATURDAY_0300, S.BACKOFF, None),
    ],
)
@pytest.mark.parametrize("trigger", ["connect_failed", "disconnected"])
def test_weekly_window_edges_pick_the_destination(
    wall: datetime, dest: ConnectionState, resume: datetime | None, trigger: str
) -> None:
    m = machine_in(S.CONNECTING if trigger == "connect_failed" else S.LIVE)
    assert getattr(m, trigger)(0.0, wall, "lost")
    assert (m.state, m.resume_at) == (dest, resume)


def test_weekly_window_can_be_off() -> None:
    m = live(policy=WatchdogPolicy(weekly_window=None))
    assert m.disconnected(0.0, FRIDAY_NIGHT, "lost")
    assert m.state is S.BACKOFF


def test_data_lost_and_restored_are_recorded_internal_transitions() -> None:
    m = live()
    assert m.data_lost(1.0)
    assert (m.state, m.is_live, m.stale, m.should_write) == (S.LIVE, True, True, False)
    assert m.data_restored(2.0, resubscribe=True)
    assert (m.stale, m.should_write) == (False, True)
    m.data_lost(3.0)
    assert m.data_restored(4.0, resubscribe=False, wall=NOON)
    records = m.pop_transitions()
    assert [(t.trigger, t.source, t.dest, t.internal) for t in records] == [
        ("data_lost", "LIVE", "LIVE", True),
        ("data_restored", "LIVE", "LIVE", True),
        ("data_lost", "LIVE", "LIVE", True),
        ("data_restored", "LIVE", "LIVE", True),
    ]
    assert [dict(t.detail) for t in records] == [
        {},
        {"resubscribe": True},
        {},
        {"resubscribe": False},
    ]


def test_leaving_live_clears_stale() -> None:
    m = live()
    m.data_lost(1.0)
    m.disconnected(2.0, NOON, "eof")
    assert not m.stale
    assert not m.should_write


def test_data_restored_needs_a_real_bool() -> None:
    m = live()
    with pytest.raises(TypeError):
        m.data_restored(1.0, resubscribe=1)  # type: ignore[arg-type]
    assert m.pop_transitions() == []


@pytest.mark.parametrize("state", [s for s in S if s is not S.STOPPED])
def test_stop_from_every_state(state: ConnectionState) -> None:
    m = machine_in(state)
    assert m.stop(50.0)
    assert (m.state, m.is_live, m.wake_at, m.should_write) == (S.STOPPED, False, None, False)
    (record,) = m.pop_transitions()
    assert (record.trigger, record.source, record.dest) == ("stop", state.value, "STOPPED")


def test_entering_and_leaving_live_is_observable() -> None:
    m = ConnectionMachine()
    m.start(0.0, NOON)
    m.connected(1.0, NOON)
    m.disconnected(2.0, NOON, "eof")
    m.retry_due(7.0, NOON)
    m.connected(8.0, NOON)
    m.stop(9.0)
    edges = [(t.source, t.dest) for t in m.pop_transitions() if "LIVE" in (t.source, t.dest)]
    assert edges == [
        ("CONNECTING", "LIVE"),
        ("LIVE", "BACKOFF"),
        ("CONNECTING", "LIVE"),
        ("LIVE", "STOPPED"),
    ]


CALLS: dict[str, Callable[[ConnectionMachine], bool]] = {
    "start": lambda m: m.start(1e6, NOON),
    "connected": lambda m: m.connected(1e6, NOON),
    "connect_failed": lambda m: m.connect_failed(1e6, NOON, "x"),
    "disconnected": lambda m: m.disconnected(1e6, NOON, "x"),
    "retry_due": lambda m: m.retry_due(1e6, NOON),
    "reset_over": lambda m: m.reset_over(1e6, NOON),
    "data_lost": lambda m: m.data_lost(1e6),
    "data_restored": lambda m: m.data_restored(1e6, resubscribe=True),
    "stop": lambda m: m.stop(1e6),
}


def test_calls_cover_every_trigger() -> None:
    assert set(CALLS) == {r.trigger for r in TRANSITIONS}


ILLEGAL = [
    (state, trigger)
    for state in S
    for trigger in CALLS
    if not any(r.source is state and r.trigger == trigger for r in TRANSITIONS)
]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_illegal_triggers_raise_and_change_nothing(state: ConnectionState, trigger: str) -> None:
    m = machine_in(state)
    before = (m.state, m.attempt, m.wake_at, m.resume_at, m.stale)
    assert not m.can(trigger)
    with pytest.raises(IllegalTransition) as info:
        CALLS[trigger](m)
    assert (info.value.machine, info.value.state, info.value.trigger) == (
        "connection",
        state.value,
        trigger,
    )
    assert (m.state, m.attempt, m.wake_at, m.resume_at, m.stale) == before
    assert m.pop_transitions() == []


def test_illegal_list_is_not_trivial() -> None:
    # STOPPED is terminal: every trigger, stop included, is illegal there.
    assert {t for s, t in ILLEGAL if s is S.STOPPED} == set(CALLS)
    assert (S.LIVE, "start") in ILLEGAL
    assert (S.BACKOFF, "data_lost") in ILLEGAL


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.connect_failed(1.0, datetime(2026, 1, 5, 23, 45), "x"),
        lambda m: m.connect_failed(1.0, None, "x"),
        lambda m: m.connect_failed(float("nan"), NOON, "x"),
    ],
)
def test_bad_time_arguments_change_nothing(call: Callable[[ConnectionMachine], Any]) -> None:
    m = machine_in(S.CONNECTING)
    with pytest.raises(ValueError):  # noqa: PT011 - naive, missing or NaN time
        call(m)
    assert m.state is S.CONNECTING
    assert m.pop_transitions() == []


# --- freezegun: the driver reads datetime.now(), the machine only sees the argument ----


@pytest.mark.parametrize(
    ("frozen", "expected"),
    [
        ("2026-01-06 04:45:00", S.RESET_WAIT),  # 23:45 EST on Jan 5
        ("2026-07-06 03:45:00", S.RESET_WAIT),  # 23:45 EDT on Jul 5
        ("2026-01-06 03:45:00", S.BACKOFF),  # 22:45 EST
    ],
)
def test_driven_with_datetime_now_under_freezegun(frozen: str, expected: ConnectionState) -> None:
    m = live()
    with freeze_time(frozen):
        wall = datetime.now(UTC)
        assert m.disconnected(5.0, wall, "socket closed")
    assert m.state is expected
    if expected is S.RESET_WAIT:
        assert m.resume_at is not None
        assert m.resume_at.astimezone(NY).time() == time(0, 5)
        assert m.wake_at == 5.0 + 20 * 60


# --- property test ----------------------------------------------------------------------

ACTIONS = tuple(CALLS)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(ACTIONS),
            st.floats(0.0, 120.0, allow_nan=False),
            st.sampled_from([NOON, RESET, RESET + timedelta(minutes=19)]),
        ),
        max_size=50,
    )
)
def test_random_sequences_keep_the_invariants(
    steps: list[tuple[str, float, datetime]],
) -> None:
    m = ConnectionMachine()
    now = 0.0
    changes: list[tuple[str, str]] = []
    for action, dt, wall in steps:
        now += dt
        before = m.state
        deadline = m.wake_at
        kwargs: dict[str, Any] = {}
        if action in ("connect_failed", "disconnected"):
            args: tuple[Any, ...] = (now, wall, "x")
        elif action in ("start", "connected", "retry_due", "reset_over"):
            args = (now, wall)
        elif action == "data_restored":
            args, kwargs = (now,), {"resubscribe": dt > 60}
        else:
            args = (now,)
        try:
            fired = getattr(m, action)(*args, **kwargs)
        except IllegalTransition:
            assert m.state is before
            continue
        if m.state is not before:
            changes.append((before.value, m.state.value))
        if action == "retry_due":
            assert deadline is not None
            assert fired is (now >= deadline)
        # Deadlines exist exactly in the waiting states.
        assert (m.wake_at is not None) is (m.state in (S.BACKOFF, S.RESET_WAIT))
        assert (m.resume_at is not None) is (m.state is S.RESET_WAIT)
        assert m.should_write is (m.state is S.LIVE and not m.stale)
        if m.state is S.BACKOFF:
            assert m.attempt >= 1
    records = m.pop_transitions()
    assert [(r.source, r.dest) for r in records if not r.internal] == changes
    assert [r.at for r in records] == sorted(r.at for r in records)
    for r in records:
        if r.dest == "BACKOFF":
            assert r.detail["delay"] == m.policy.backoff_delay(r.detail["attempt"])
