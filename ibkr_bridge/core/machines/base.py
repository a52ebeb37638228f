"""What every lifecycle state machine shares: rule tables, the outbox, illegal moves.

The machines are pure, in the style of python-hyper/h11: no asyncio, no IO, no clock
reads. Time is passed in by the caller (``now`` monotonic seconds, ``wall`` an aware
datetime), transitions are declared as data (:class:`Rule` tables run by a synchronous
``transitions.Machine``), and a trigger that is not allowed in the current state raises
:class:`IllegalTransition` and changes nothing. A thin async driver turns outside events
into triggers, does the IO, and drains the outbox into ``api_logs`` rows.

Public API:

``Rule(trigger, source, dest, conditions=(), unless=(), strict=False, note="")``
    One row of a transition table. ``dest=None`` is an internal transition (state kept,
    still recorded). ``conditions`` must all hold and ``unless`` must all fail for the rule
    to fire; names refer to the machine's guards. When no rule for (trigger, state) fires,
    the trigger returns False and nothing changes, unless every candidate rule is
    ``strict``, in which case it raises :class:`IllegalTransition` instead.

``MachineSpec(name, title, summary, states, initial, rules, state_docs, guard_docs)``
    A whole machine as data; ``spec.transitions_config(resolve)`` gives the dicts
    ``transitions.Machine`` takes, with guard names mapped through ``resolve``.

``Transition`` (frozen record)
    ``machine``, ``trigger``, ``source``, ``dest`` (state values, str), ``at`` (monotonic
    seconds), ``wall`` (aware datetime or None), ``detail`` (read-only mapping of
    JSON-friendly values); ``internal`` is True when source == dest.

``IllegalTransition(ValueError)``
    ``machine``, ``state``, ``trigger``, ``reason``.

``StateMachine[S]``
    Base class. ``state -> S`` (a StrEnum member), ``name -> str``, ``can(trigger) -> bool``
    (a rule exists for the current state; guards not evaluated), ``permitted_triggers() ->
    frozenset[str]``, ``pop_transitions() -> list[Transition]`` (oldest first; empties the
    outbox, which is unbounded: pop after every trigger).
    Subclasses set ``SPEC``, define ``_guard_<name>(event) -> bool`` for each guard, and
    override ``_apply(...)`` to update their own fields and return the record's detail.
    ``_apply`` runs after the state changed, so it must not raise: triggers validate their
    arguments before firing (``now`` finite, ``wall`` aware or None, else ``ValueError``).

Not thread-safe: drive one machine from one event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import transitions
from attrs import field, frozen

__all__ = [
    "IllegalTransition",
    "MachineSpec",
    "Rule",
    "StateMachine",
    "Transition",
]

S = TypeVar("S", bound=StrEnum)

Guard = Callable[[transitions.EventData], bool]


@frozen
class Rule:
    """One transition-table row: ``trigger`` moves ``source`` to ``dest`` when guards pass."""

    trigger: str
    source: StrEnum
    dest: StrEnum | None
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    strict: bool = False
    note: str = ""

    @property
    def internal(self) -> bool:
        """An internal transition keeps the state (and runs no exit/enter)."""
        return self.dest is None

    @property
    def guard_label(self) -> str:
        """Guards as the diagrams print them: ``a & !b``."""
        return " & ".join([*self.conditions, *(f"!{name}" for name in self.unless)])


@frozen
class MachineSpec:
    """A machine declared as data: states, initial state, rules and their documentation."""

    name: str
    title: str
    summary: str
    states: type[StrEnum]
    initial: StrEnum
    rules: tuple[Rule, ...]
    state_docs: Mapping[str, str]
    guard_docs: Mapping[str, str] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        members = set(self.states)
        if self.initial not in members:
            raise ValueError(f"{self.name}: initial state {self.initial!r} is not a state")
        for rule in self.rules:
            if rule.source not in members or (rule.dest is not None and rule.dest not in members):
                raise ValueError(f"{self.name}: rule {rule!r} names an unknown state")
            for guard in (*rule.conditions, *rule.unless):
                if guard not in self.guard_docs:
                    raise ValueError(f"{self.name}: guard {guard!r} is not documented")
        undocumented = {s.value for s in self.states} - set(self.state_docs)
        if undocumented:
            raise ValueError(f"{self.name}: states without docs: {sorted(undocumented)}")

    @property
    def triggers(self) -> tuple[str, ...]:
        """Trigger names in table order, each once."""
        return tuple(dict.fromkeys(rule.trigger for rule in self.rules))

    def transitions_config(
        self, resolve: Callable[[str], Any] = lambda name: name
    ) -> list[dict[str, Any]]:
        """The rules as ``transitions`` dicts; ``resolve`` maps a guard name to a callback."""
        config: list[dict[str, Any]] = []
        for rule in self.rules:
            entry: dict[str, Any] = {
                "trigger": rule.trigger,
                "source": rule.source,
                "dest": rule.dest,
            }
            if rule.conditions:
                entry["conditions"] = [resolve(name) for name in rule.conditions]
            if rule.unless:
                entry["unless"] = [resolve(name) for name in rule.unless]
            config.append(entry)
        return config


def _frozen_detail(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@frozen(kw_only=True)
class Transition:
    """One fired trigger, waiting in a machine's outbox for the driver to log it."""

    machine: str
    trigger: str
    source: str
    dest: str
    at: float
    wall: datetime | None = None
    detail: Mapping[str, Any] = field(factory=dict, converter=_frozen_detail)

    @property
    def internal(self) -> bool:
        return self.source == self.dest


from ibkr_bridge.core.errors import IllegalTransition  # noqa: E402  (in core.errors)


@attrs.define(slots=False)
class _Model:
    """What ``transitions`` drives. Private, because transitions binds a method per trigger
    onto its model and those names would collide with the public trigger methods."""

    state: Any = None


def _check_now(now: float) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite monotonic time in seconds, got {now!r}")


def _check_wall(wall: datetime | None) -> None:
    if wall is not None and (not isinstance(wall, datetime) or wall.utcoffset() is None):
        raise ValueError(f"wall must be a timezone-aware datetime or None, got {wall!r}")


class StateMachine(Generic[S]):
    """Base of the lifecycle machines: runs a :class:`MachineSpec`, keeps the outbox."""

    SPEC: ClassVar[MachineSpec]

    def __init__(self) -> None:
        spec = self.SPEC
        self._model = _Model(state=spec.initial)
        self._outbox: list[Transition] = []
        self._fsm = transitions.Machine(
            model=self._model,
            states=spec.states,
            initial=spec.initial,
            transitions=spec.transitions_config(self._guard),
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
        )

    def _guard(self, name: str) -> Guard:
        guard = getattr(self, f"_guard_{name}", None)
        if not callable(guard):
            raise TypeError(f"{type(self).__name__} has no guard method _guard_{name}")
        return guard  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The machine's name as it appears in :class:`Transition` records."""
        return self.SPEC.name

    @property
    def state(self) -> S:
        """The current state."""
        return self._model.state  # type: ignore[no-any-return]

    def can(self, trigger: str) -> bool:
        """Whether some rule for ``trigger`` starts in the current state (guards not run)."""
        return any(r.trigger == trigger and r.source is self.state for r in self.SPEC.rules)

    def permitted_triggers(self) -> frozenset[str]:
        """Triggers that would not raise for a missing rule in the current state."""
        return frozenset(r.trigger for r in self.SPEC.rules if r.source is self.state)

    def pop_transitions(self) -> list[Transition]:
        """Every recorded transition since the last call, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self.state.value}>"

    def _fire(self, trigger: str, *, now: float, wall: datetime | None, **kwargs: Any) -> bool:
        """Run ``trigger``; record and return True if a rule fired, False if guards refused."""
        _check_now(now)
        _check_wall(wall)
        source = self.state
        try:
            fired = self._fsm.events[trigger].trigger(self._model, now=now, wall=wall, **kwargs)
        except transitions.MachineError:
            # transitions found no rule for this state; it raises before touching the model.
            raise IllegalTransition(self.name, source.value, trigger) from None
        if not fired:
            candidates = [r for r in self.SPEC.rules if r.trigger == trigger and r.source is source]
            if all(r.strict for r in candidates):
                guards = " or ".join(f"[{r.guard_label}]" for r in candidates)
                raise IllegalTransition(self.name, source.value, trigger, f"{guards} not met")
            return False
        dest = self.state
        detail = self._apply(trigger, source, dest, now=now, wall=wall, **kwargs)
        self._outbox.append(
            Transition(
                machine=self.name,
                trigger=trigger,
                source=source.value,
                dest=dest.value,
                at=float(now),
                wall=wall,
                detail=detail,
            )
        )
        return True

    def _apply(
        self, trigger: str, source: S, dest: S, *, now: float, wall: datetime | None, **kwargs: Any
    ) -> dict[str, Any]:
        """Update the machine's own fields after a fired rule; return the record's detail."""
        return {}
