"""The circuit breaker machine, and the shared machine contract in base.py."""

from __future__ import annotations

import ast
import enum
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import transitions
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import ibkr_bridge
from ibkr_bridge.core.machines import (
    BreakerState,
    CircuitBreaker,
    IllegalTransition,
    MachineSpec,
    Rule,
    Transition,
)
from ibkr_bridge.core.machines.breaker import TRANSITIONS

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
WALL = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


def breaker_in(
    state: BreakerState, *, probe: bool = False, interval: float = 60.0
) -> CircuitBreaker:
    b = CircuitBreaker(retry_interval=interval)
    if state is not CLOSED:
        b.failure(0.0)
    if state is HALF:
        assert b.retry_due(interval)
        if probe:
            assert b.try_acquire_probe(interval)
    b.pop_transitions()
    return b


def test_full_cycle_records_every_step_in_order() -> None:
    b = CircuitBreaker(retry_interval=60.0)
    assert (b.state, b.buffering, b.opened_at, b.next_retry_at) == (CLOSED, False, None, None)

    assert b.failure(100.0, wall=WALL, error="connection refused")
    assert (b.state, b.buffering, b.opened_at, b.next_retry_at) == (OPEN, True, 100.0, 160.0)
    assert b.retry_due(159.999) is False
    assert b.state is OPEN
    assert b.retry_due(160.0) is True
    assert (b.state, b.buffering, b.next_retry_at) == (HALF, True, None)
    assert b.try_acquire_probe(161.0) is True
    assert b.probe_done(162.0) is True
    assert b.try_acquire_probe(163.0) is True
    assert b.drained(164.0) is True
    assert (b.state, b.buffering, b.opened_at, b.probe_held) == (CLOSED, False, None, False)

    records = b.pop_transitions()
    assert [(t.trigger, t.source, t.dest, t.at) for t in records] == [
        ("failure", "CLOSED", "OPEN", 100.0),
        ("retry_due", "OPEN", "HALF_OPEN", 160.0),
        ("acquire_probe", "HALF_OPEN", "HALF_OPEN", 161.0),
        ("probe_done", "HALF_OPEN", "HALF_OPEN", 162.0),
        ("acquire_probe", "HALF_OPEN", "HALF_OPEN", 163.0),
        ("drained", "HALF_OPEN", "CLOSED", 164.0),
    ]
    assert all(t.machine == "breaker" for t in records)
    assert records[0].wall == WALL
    assert records[1].wall is None
    assert dict(records[0].detail) == {"retry_at": 160.0, "error": "connection refused"}
    assert dict(records[1].detail) == {"open_for": 60.0}
    assert [t.internal for t in records] == [False, False, True, True, True, False]
    assert b.pop_transitions() == []


def test_failed_probe_reopens_and_restarts_the_timer() -> None:
    b = breaker_in(HALF, probe=True)
    assert b.failure(500.0)
    assert (b.state, b.opened_at, b.next_retry_at, b.probe_held) == (OPEN, 500.0, 560.0, False)
    assert b.retry_due(559.0) is False
    assert b.retry_due(560.0) is True
    # The new HALF_OPEN phase has a free probe again.
    assert b.try_acquire_probe(561.0) is True


def test_only_one_caller_gets_the_probe() -> None:
    b = breaker_in(HALF)
    results = [b.try_acquire_probe(70.0) for _ in range(10)]
    assert results.count(True) == 1
    assert results[0] is True
    assert b.probe_held
    # Refusals are not transitions: only the one acquisition is recorded.
    assert [t.trigger for t in b.pop_transitions()] == ["acquire_probe"]
    assert b.probe_done(71.0)
    assert [b.try_acquire_probe(72.0) for _ in range(3)] == [True, False, False]


@pytest.mark.parametrize("state", [CLOSED, OPEN])
def test_no_probe_outside_half_open(state: BreakerState) -> None:
    b = breaker_in(state)
    assert b.try_acquire_probe(1000.0) is False
    assert b.state is state
    assert not b.probe_held
    assert b.pop_transitions() == []


@pytest.mark.parametrize("trigger", ["probe_done", "drained"])
def test_releasing_a_probe_nobody_holds_raises(trigger: str) -> None:
    b = breaker_in(HALF)
    with pytest.raises(IllegalTransition, match="probe_held") as info:
        getattr(b, trigger)(70.0)
    assert (info.value.machine, info.value.state, info.value.trigger) == (
        "breaker",
        "HALF_OPEN",
        trigger,
    )
    assert b.state is HALF
    assert not b.probe_held
    assert b.pop_transitions() == []


def _call(b: CircuitBreaker, trigger: str, now: float) -> bool:
    method: Callable[..., bool] = getattr(b, trigger)
    return method(now)


ILLEGAL = [
    (CLOSED, "retry_due"),
    (CLOSED, "probe_done"),
    (CLOSED, "drained"),
    (OPEN, "failure"),
    (OPEN, "probe_done"),
    (OPEN, "drained"),
    (HALF, "retry_due"),
]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_illegal_triggers_raise_and_change_nothing(state: BreakerState, trigger: str) -> None:
    b = breaker_in(state)
    before = (b.state, b.opened_at, b.probe_held)
    assert not b.can(trigger)
    assert trigger not in b.permitted_triggers()
    with pytest.raises(IllegalTransition) as info:
        _call(b, trigger, 10_000.0)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.machine, err.state, err.trigger) == ("breaker", state.value, trigger)
    assert "breaker" in str(err)
    assert state.value in str(err)
    assert repr(trigger) in str(err)
    assert (b.state, b.opened_at, b.probe_held) == before
    assert b.pop_transitions() == []


def test_transitions_library_really_raises_machine_error_underneath() -> None:
    # The trap we wrap: the raw transitions machine raises its own MachineError.
    b = breaker_in(CLOSED)
    with pytest.raises(transitions.MachineError):
        b._fsm.events["retry_due"].trigger(b._model, now=1.0, wall=None)
    assert b.state is CLOSED


def test_permitted_triggers_follow_the_table() -> None:
    for state in BreakerState:
        expected = {r.trigger for r in TRANSITIONS if r.source is state}
        assert breaker_in(state).permitted_triggers() == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", None, True])
def test_bad_now_is_rejected_before_anything_changes(bad: Any) -> None:
    b = CircuitBreaker(retry_interval=60.0)
    with pytest.raises(ValueError, match="now"):
        b.failure(bad)
    assert b.state is CLOSED
    assert b.pop_transitions() == []


def test_naive_wall_is_rejected_before_anything_changes() -> None:
    b = CircuitBreaker(retry_interval=60.0)
    with pytest.raises(ValueError, match="wall"):
        b.failure(1.0, wall=datetime(2026, 1, 5, 15, 0))
    assert b.state is CLOSED
    assert b.pop_transitions() == []


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_retry_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="retry_interval"):
        CircuitBreaker(retry_interval=bad)


def test_transition_records_are_frozen() -> None:
    b = CircuitBreaker(retry_interval=60.0)
    b.failure(1.0, error="x")
    (record,) = b.pop_transitions()
    with pytest.raises(AttributeError):
        record.dest = "CLOSED"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.detail["error"] = "y"  # type: ignore[index]


def test_repr_names_state() -> None:
    assert repr(breaker_in(OPEN)) == "<CircuitBreaker state=OPEN>"


# --- the spec contract (base.py) -----------------------------------------------------


class _Tiny(enum.StrEnum):
    A = "A"
    B = "B"


def test_spec_rejects_undocumented_guards_and_states() -> None:
    with pytest.raises(ValueError, match="guard 'g'"):
        MachineSpec(
            name="t",
            title="t",
            summary="",
            states=_Tiny,
            initial=_Tiny.A,
            rules=(Rule("go", _Tiny.A, _Tiny.B, conditions=("g",)),),
            state_docs={"A": "", "B": ""},
        )
    with pytest.raises(ValueError, match="states without docs"):
        MachineSpec(
            name="t",
            title="t",
            summary="",
            states=_Tiny,
            initial=_Tiny.A,
            rules=(Rule("go", _Tiny.A, _Tiny.B),),
            state_docs={"A": ""},
        )


def test_runtime_machine_is_built_from_the_table() -> None:
    b = CircuitBreaker(retry_interval=60.0)
    runtime = {
        (name, t.source, t.dest)
        for name, event in b._fsm.events.items()
        for ts in event.transitions.values()
        for t in ts
    }
    table = {
        (r.trigger, r.source.value, None if r.dest is None else r.dest.value) for r in TRANSITIONS
    }
    assert runtime == table


# --- property tests --------------------------------------------------------------------

TRIGGERS = ("failure", "retry_due", "try_acquire_probe", "probe_done", "drained")

# An independent model of the rules, written from the brief rather than from the table.
LEGAL_SOURCES = {
    "failure": {CLOSED, HALF},
    "retry_due": {OPEN},
    "probe_done": {HALF},
    "drained": {HALF},
}


class BreakerModelTest(RuleBasedStateMachine):
    """Random trigger sequences with random time steps against a reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.interval = 60.0
        self.b = CircuitBreaker(retry_interval=60.0)
        self.expected_state = CLOSED
        self.opened_at: float | None = None
        self.holders = 0
        self.changes: list[tuple[str, str]] = []
        self.records: list[Transition] = []

    @initialize(interval=st.sampled_from([0.0, 1.0, 60.0]) | st.floats(0.5, 120.0))
    def set_interval(self, interval: float) -> None:
        self.interval = interval
        self.b = CircuitBreaker(retry_interval=interval)

    @rule(dt=st.sampled_from([0.0, 1.0, 59.999, 60.0]) | st.floats(0.0, 200.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    def _do(self, trigger: str) -> bool | None:
        before_state = self.b.state
        before_outbox = len(self.b._outbox)
        try:
            result = getattr(self.b, trigger)(self.now)
        except IllegalTransition as err:
            error: IllegalTransition | None = err
        else:
            error = None
        if error is not None:
            assert error.trigger == trigger
            assert self.b.state is before_state, "illegal trigger changed the state"
            assert len(self.b._outbox) == before_outbox, "illegal trigger was recorded"
            return None
        if self.b.state is not before_state:
            self.changes.append((before_state.value, self.b.state.value))
        return bool(result)

    @rule()
    def failure(self) -> None:
        legal = self.expected_state in LEGAL_SOURCES["failure"]
        result = self._do("failure")
        assert (result is not None) == legal
        if legal:
            self.expected_state, self.opened_at, self.holders = OPEN, self.now, 0

    @rule()
    def retry_due(self) -> None:
        legal = self.expected_state in LEGAL_SOURCES["retry_due"]
        result = self._do("retry_due")
        assert (result is not None) == legal
        if legal:
            assert self.opened_at is not None
            due = self.now >= self.opened_at + self.interval  # the rule: next_retry_at
            assert result is due
            if due:
                self.expected_state = HALF

    @rule(callers=st.integers(1, 5))
    def try_acquire_probe(self, callers: int) -> None:
        wins = [self._do("try_acquire_probe") for _ in range(callers)]
        if self.expected_state is HALF and self.holders == 0:
            assert wins == [True] + [False] * (callers - 1)
            self.holders = 1
        else:
            assert wins == [False] * callers

    @rule()
    def probe_done(self) -> None:
        legal = self.expected_state is HALF and self.holders == 1
        result = self._do("probe_done")
        assert (result is not None) == legal
        if legal:
            self.holders = 0

    @rule()
    def drained(self) -> None:
        legal = self.expected_state is HALF and self.holders == 1
        result = self._do("drained")
        assert (result is not None) == legal
        if legal:
            self.expected_state, self.holders, self.opened_at = CLOSED, 0, None

    # Targeted rules so that long legal paths (OPEN -> HALF_OPEN -> probe -> CLOSED) are
    # common; the blind rules above still try every trigger in every state.
    @precondition(lambda self: self.expected_state is OPEN)
    @rule(extra=st.sampled_from([0.0, 0.0, 1e-6, 5.0]))
    def wait_exactly_until_due(self, extra: float) -> None:
        assert self.opened_at is not None
        self.now = max(self.now, self.opened_at + self.interval + extra)
        self.retry_due()

    @precondition(lambda self: self.expected_state is HALF and self.holders == 1)
    @rule(empty=st.booleans())
    def finish_batch(self, empty: bool) -> None:
        if empty:
            self.drained()
        else:
            self.probe_done()

    @precondition(lambda self: self.b._outbox)
    @rule()
    def pop(self) -> None:
        self.records.extend(self.b.pop_transitions())

    @invariant()
    def state_matches_model(self) -> None:
        assert self.b.state in set(BreakerState)
        assert self.b.state is self.expected_state
        assert self.b.buffering is (self.expected_state is not CLOSED)

    @invariant()
    def at_most_one_probe(self) -> None:
        assert self.holders <= 1
        assert self.b.probe_held is (self.holders == 1)
        assert not self.b.probe_held or self.b.state is HALF

    @invariant()
    def outbox_has_every_change_once_in_order(self) -> None:
        records = [*self.records, *self.b._outbox]
        assert [r.at for r in records] == sorted(r.at for r in records)
        assert [(r.source, r.dest) for r in records if not r.internal] == self.changes

    @invariant()
    def half_open_never_before_retry_interval(self) -> None:
        records = [*self.records, *self.b._outbox]
        last_open: float | None = None
        for r in records:
            if r.dest == "OPEN":
                last_open = r.at
            if r.trigger == "retry_due":
                assert last_open is not None
                assert r.at >= last_open + self.interval


BreakerModelTest.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_breaker_against_reference_model = BreakerModelTest.TestCase


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(TRIGGERS), st.floats(0.0, 90.0, allow_nan=False)),
        max_size=60,
    )
)
def test_random_sequences_keep_the_outbox_consistent(steps: list[tuple[str, float]]) -> None:
    b = CircuitBreaker(retry_interval=30.0)
    now = 0.0
    seen: list[tuple[str, str, str]] = []
    for trigger, dt in steps:
        now += dt
        before = b.state
        try:
            fired = getattr(b, trigger)(now)
        except IllegalTransition:
            assert b.state is before
            continue
        if fired:
            name = "acquire_probe" if trigger == "try_acquire_probe" else trigger
            seen.append((name, before.value, b.state.value))
        else:
            assert b.state is before
    assert [(t.trigger, t.source, t.dest) for t in b.pop_transitions()] == seen


PURE_MODULES = (
    "core/machines/base.py",
    "core/machines/breaker.py",
    "core/machines/connection.py",
    "core/machines/_connection_table.py",
    "core/resetwindow/__init__.py",
    "core/resetwindow/_dst.py",
    "core/resetwindow/_maintenance.py",
    "core/resetwindow/_nightly.py",
    "core/resetwindow/_policy.py",
    "core/resetwindow/_weekly.py",
    "core/cadence.py",
    "core/health.py",
    "core/_health_verdict.py",
)
FORBIDDEN_IMPORTS = {"asyncio", "logging", "time", "socket", "os", "io", "pathlib", "threading"}


@pytest.mark.parametrize("relpath", PURE_MODULES)
def test_machines_stay_pure(relpath: str) -> None:
    source = (Path(ibkr_bridge.__file__).parent / relpath).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # No clock reads (the time module is banned above): time is an argument.
            assert node.func.attr not in {"now", "utcnow", "today", "fromtimestamp"}, (
                f"{relpath} reads a clock at line {node.lineno}"
            )
    assert not imported & FORBIDDEN_IMPORTS


@settings(max_examples=500)
@given(
    opened_at=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    interval=st.floats(min_value=0.1, max_value=3600, allow_nan=False),
)
def test_retry_is_due_at_exactly_the_time_next_retry_at_names(
    opened_at: float, interval: float
) -> None:
    # A driver sleeps until next_retry_at and then asks; in floating point
    # (a + b) - a < b happens (e.g. 3.3 + 0.3), and a refusal there made the drain spin.
    b = CircuitBreaker(retry_interval=interval)
    b.failure(opened_at)
    deadline = b.next_retry_at
    assert deadline is not None
    assert b.retry_due(deadline)
    assert b.state is BreakerState.HALF_OPEN


def test_retry_due_where_the_subtraction_rounds_down() -> None:
    opened_at, interval = 3.3, 0.3
    assert (opened_at + interval) - opened_at < interval  # the case that spun
    b = CircuitBreaker(retry_interval=interval)
    b.failure(opened_at)
    assert b.retry_due(opened_at + interval)
