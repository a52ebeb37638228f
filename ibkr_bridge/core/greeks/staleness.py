"""The one staleness rule for option legs' Greeks (judge_legs), for both feeds."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from attrs import frozen


@frozen(kw_only=True)
class LegGreeks:
    """How current one option leg's Greeks are, as its feed measured them just now.

    ``age`` is the seconds since the leg's last Greeks arrived (``None``: none since its
    market data was requested); ``waited`` the seconds since that request (or since the
    leg was first seen, when it could not be requested at all).
    """

    conid: int
    name: str
    age: float | None
    waited: float


@frozen(kw_only=True)
class LegProblem:
    """An option leg without current Greeks, past its grace: named in events and /healthz."""

    conid: int
    name: str
    why: str

    def describe(self) -> str:
        return f"{self.name} (conid {self.conid}): {self.why}"


@frozen(kw_only=True)
class GreeksRule:
    """The staleness rule of ``docs/greeks.md`` (BRIDGE_STALE_AFTER, BRIDGE_LEG_GRACE,
    BRIDGE_MISSING_LEGS)."""

    stale_after: float = 15.0
    leg_grace: float = 30.0
    partial: bool = False  # BRIDGE_MISSING_LEGS=partial
    # BRIDGE_GREEKS_FALLBACK=model: a leg without IB Greeks past its grace gets model
    # Greeks at BRIDGE_RISK_FREE_RATE (the settings carry its default) instead of missing.
    model: bool = False
    risk_free_rate: float = 0.0
    # BRIDGE_POSITION_ROWS: one position_greeks row per leg with each tick's net rows.
    position_rows: bool = False

    @classmethod
    def from_settings(cls, settings: object, *, default_stale_after: float) -> GreeksRule:
        """From BRIDGE_STALE_AFTER (empty: ``default_stale_after``, three of the feed's own
        update periods), BRIDGE_LEG_GRACE and BRIDGE_MISSING_LEGS; a settings object
        without them (an older test double) gets the defaults."""
        default = cls()
        stale_after = getattr(settings, "stale_after", None)
        return cls(
            stale_after=float(stale_after) if stale_after is not None else default_stale_after,
            leg_grace=float(getattr(settings, "leg_grace", default.leg_grace)),
            partial=str(getattr(settings, "missing_legs", "skip")) == "partial",
            model=str(getattr(settings, "greeks_fallback", "skip")) == "model",
            risk_free_rate=float(getattr(settings, "risk_free_rate", default.risk_free_rate)),
            position_rows=bool(getattr(settings, "position_rows", False)),
        )


@frozen(kw_only=True)
class LegsVerdict:
    """What :func:`judge_legs` decided for one tick."""

    write: bool  # a row may be written (from the legs not in ``omit``)
    omit: frozenset[int]  # option legs written as missing (partial policy)
    missing: tuple[LegProblem, ...]  # legs past grace without current Greeks
    waiting: frozenset[int]  # legs still inside their grace, no Greeks yet
    legs: frozenset[int]  # every option leg judged
    stale: bool  # some leg's Greeks are too old, or a market-data farm is broken
    reason: str | None  # why nothing is written, or what the written rows lack

    @property
    def missing_conids(self) -> frozenset[int]:
        return frozenset(p.conid for p in self.missing)


#: Why a current leg is missing under BRIDGE_GREEKS_FALLBACK=model: see ``unpriced``.
UNPRICED: Final = (
    "IB did not compute its Greeks and the model cannot price it (no implied volatility "
    "from IB and no usable option price: no bid/ask mid or last within the no-arbitrage "
    "bounds, or no underlying price or exact expiry)"
)


def _s(seconds: float) -> str:
    return f"{seconds:.0f} s"


def judge_legs(
    legs: Sequence[LegGreeks],
    rule: GreeksRule,
    *,
    broken_farms: Collection[str] = (),
    unpriced: Collection[int] = (),
) -> LegsVerdict:
    """Apply the one staleness rule, the same in both modes (pure; ages are passed in).

    An option leg's Greeks are *current* when some arrived, the latest no more than
    ``rule.stale_after`` seconds ago, and no market-data farm is reported broken (IB 2103
    until 2104/2108). A leg that has had no Greeks yet is *waiting* for ``rule.leg_grace``
    seconds after its request; nothing is written while a leg waits (a fresh subscription
    is not a missing leg). Any other leg without current Greeks is *missing*: the row is
    skipped, or with ``rule.partial`` written from the other legs with the missing ones
    counted in ``legs_missing``. A leg in ``unpriced`` (current, but IB did not compute its
    Greeks and the model has no figure for it either) is missing in the same way.
    """
    farms = sorted(broken_farms)
    missing: list[LegProblem] = []
    waiting: set[int] = set()
    stale = bool(farms)
    for leg in sorted(legs, key=lambda g: g.conid):
        if farms:
            why = f"market data farm reported broken ({', '.join(farms)})"
        elif leg.age is None:
            if leg.waited <= rule.leg_grace:
                waiting.add(leg.conid)
                continue
            why = (
                f"no Greeks {_s(leg.waited)} after its market data was requested "
                f"(BRIDGE_LEG_GRACE {_s(rule.leg_grace)})"
            )
        elif leg.age > rule.stale_after:
            stale = True
            why = f"Greeks {_s(leg.age)} old (BRIDGE_STALE_AFTER {_s(rule.stale_after)})"
        elif leg.conid in unpriced:
            why = UNPRICED
        else:
            continue
        missing.append(LegProblem(conid=leg.conid, name=leg.name, why=why))
    # Names only (ages change every tick): the reason is a skip reason, logged once a change.
    named = ", ".join(f"{p.name} (conid {p.conid})" for p in missing[:10])
    if len(missing) > 10:
        named += f" and {len(missing) - 10} more"
    count = f"{len(missing)} option leg(s) without current Greeks"
    reason: str | None
    if waiting:
        reason = f"waiting for the first Greeks of {len(waiting)} option leg(s)"
        if missing:
            reason += f"; {count}: {named}"
        write = False
    elif missing and not rule.partial:
        reason = f"{count}: {named} (BRIDGE_MISSING_LEGS=skip)"
        write = False
    elif missing:
        reason = f"rows written without {count}: {named} (BRIDGE_MISSING_LEGS=partial)"
        write = True
    else:
        reason, write = None, True
    return LegsVerdict(
        write=write,
        omit=frozenset(p.conid for p in missing) if write else frozenset(),
        missing=tuple(missing),
        waiting=frozenset(waiting),
        legs=frozenset(leg.conid for leg in legs),
        stale=stale,
        reason=reason,
    )
