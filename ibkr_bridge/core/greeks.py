"""Net Greeks of a portfolio from per-contract Greeks: one pure function for both feeds.

SOCKET (ib_async tickers) and PORTAL (Client Portal snapshot strings) each turn their
positions into :class:`Leg` records; :func:`aggregate` turns legs into
:class:`~ibkr_bridge.core.records.GreeksRow` records. Nothing here does IO or reads a clock.

Rules (see ``docs/greeks.md``):

* net Greek = sum of quantity * multiplier * per-share Greek for options (OPT, FOP); a stock or
  ETF contributes delta = shares, a future delta = quantity * multiplier;
* a missing Greek is never summed as 0: a column any option leg lacks is ``None``;
* with several underlyings the PORTFOLIO row is followed by one row per underlying;
* an option leg's Greeks count only while they are current (:func:`judge_legs`): received,
  no older than ``stale_after`` and no market-data farm reported broken; a leg without
  current Greeks past ``leg_grace`` is named, and the row is skipped (the default) or
  written from the other legs with the leg counted in ``legs_missing`` (``partial``).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Final

import attrs
from attrs import field, frozen

from ibkr_bridge.core.records import GreeksRow

PORTFOLIO: Final = "PORTFOLIO"

OPTION_SEC_TYPES: Final = frozenset({"OPT", "FOP"})
STOCK_SEC_TYPES: Final = frozenset({"STK", "ETF"})
FUTURE_SEC_TYPES: Final = frozenset({"FUT"})
#: Security types :func:`aggregate` counts; legs of any other type (CASH, BOND, IND, ...)
#: carry no Greek the bridge can express and are skipped.
SEC_TYPES: Final = OPTION_SEC_TYPES | STOCK_SEC_TYPES | FUTURE_SEC_TYPES

# IB's "unset double" is sys.float_info.max; nothing real is anywhere near 1e300.
_UNSET_FLOOR: Final = 1e300
# IB's "not computed" sentinel for delta, gamma, vega and theta is exactly -2.
_GREEK_SENTINEL: Final = -2.0

_KEY_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "ibkr-bridge/portfolio_greeks")


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a real, finite number below IB's unset marker."""
    if type(value) is float:
        # The common case, checked first: the ABC isinstance below costs ~1 us a call,
        # which is 10 ms a tick for a 1,000-leg book.
        return value if math.isfinite(value) and abs(value) < _UNSET_FLOOR else None
    # bool is an int subclass; True as a Greek is a bug upstream, not the number 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or abs(number) >= _UNSET_FLOOR:
        return None
    return number


def clean_greek(value: object) -> float | None:
    """A per-share Greek as IB sent it, or ``None`` when it is not data.

    ``None``, bools, non-numbers, NaN, ±inf, IB's unset double (1.797e308, anything with
    magnitude >= 1e300) and IB's sentinel -2 are all missing. For ib_async's fields (SOCKET
    mode) only: Client Portal strings have no -2 sentinel (see :func:`clean_portal_greek`).
    """
    number = _finite_number(value)
    # IB marks "not computed" with exactly -2 for delta, gamma, vega and theta (ib_async
    # 2.1.0 passes vega and theta through unchanged). A real delta lies in [-1, 1] and a
    # real gamma/vega is >= 0, so only theta could genuinely equal -2.0 to the last bit;
    # a coincidence that rare costs one tick of NULL, while summing the sentinel would
    # write a wrong number.
    if number is None or number == _GREEK_SENTINEL:
        return None
    return number


def clean_portal_greek(value: object) -> float | None:
    """A per-share Greek parsed from a Client Portal string, or ``None`` when it is not data.

    Only non-numbers and non-finite values are missing: the Client Portal API marks a Greek
    it has not computed by leaving the field empty or out, so ``-2.0`` here is a real theta.
    """
    return _finite_number(value)


def clean_price(value: object) -> float | None:
    """A price, or ``None`` for IB's sentinels (-1, 0, unset double) and garbage."""
    number = _finite_number(value)
    # IB reports an unknown price as -1 (or 0 before the first tick); no traded
    # underlying has a price <= 0.
    if number is None or number <= 0:
        return None
    return number


_PORTAL_NUMBER: Final = re.compile(
    r"""
    [CH]?                       # C = previous close, H = halted: a marker, not part of the value
    (?P<number>
        [+-]?
        (?:\d{1,3}(?:,\d{3})+|\d+)?    # strictly grouped thousands ("1,5" is not 15)
        (?:\.\d*)?
        (?:[eE][+-]?\d+)?
    )
    (?P<suffix>[KMB]?)
    """,
    re.VERBOSE,
)
_SUFFIX_SCALE: Final = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


def parse_portal_number(text: str | float | int | None) -> float | None:
    """A Client Portal snapshot value as a float, or ``None``; never raises.

    Accepts ``"2.61"``, ``"-0.282"``, ``"C2.61"`` / ``"H2.61"`` (prefix stripped),
    ``"1,300"``, ``"10.2K"``, ``"1.5M"``, ``"2B"``, exponent notation and plain numbers.
    Empty, ``"N/A"``, ``"-"``, non-finite values and anything else give ``None``. A number is
    always data here: ``"-2.000"`` is -2.0 (the -2 sentinel is ib_async's, not this API's).
    """
    if isinstance(text, bool):
        return None
    if not isinstance(text, str):
        if not isinstance(text, numbers.Real):
            return None
        try:
            number = float(text)
        except (TypeError, ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    match = _PORTAL_NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    digits = match["number"].replace(",", "")
    mantissa = digits.split("e")[0].split("E")[0]
    if not any(ch.isdigit() for ch in mantissa):
        return None
    scale = _SUFFIX_SCALE[match["suffix"]]
    try:
        if scale == 1:
            # float() of the text itself: exact round trip of repr/str output.
            number = float(digits)
        else:
            # Decimal so "1.1K" is 1100, not 1100.0000000000002.
            with localcontext() as ctx:
                ctx.prec = 60
                number = float(Decimal(digits) * scale)
    except (ArithmeticError, ValueError):
        return None
    return number if math.isfinite(number) else None


def multiplier_from(value: str | float | None) -> float:
    """A contract multiplier as a float; ``None``, ``""`` and 0 mean 1.

    ib_async's ``contract.multiplier`` is a string, empty for stocks; Client Portal gives
    0.0 for stocks. Raises ValueError for text that is not a number and for negative or
    non-finite values: a guessed multiplier would be wrong by a factor of 100.
    """
    if type(value) is float and 0.0 < value < _UNSET_FLOOR:
        return value  # already a valid multiplier (the per-tick path)
    if value is None or (isinstance(value, str) and not value.strip()):
        return 1.0
    number = parse_portal_number(value)
    if number is None or number < 0 or abs(number) >= _UNSET_FLOOR:
        raise ValueError(f"not a contract multiplier: {value!r}")
    return number if number > 0 else 1.0


def _check_multiplier(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a number or None; use multiplier_from()")
    multiplier_from(value)


def _check_finite(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _sec_type(value: str) -> str:
    return value.strip().upper()


@frozen(kw_only=True)
class Leg:
    """One position as a feed sees it, with IB's per-share (per-unit) Greeks.

    ``symbol`` is the UNDERLYING's symbol (legs are grouped by it). ``quantity`` is
    negative for short positions. The Greeks may be raw (sentinels, NaN): aggregation
    cleans them again. ``ib_sentinels`` says whether they come from an API that marks "not
    computed" with -2 (ib_async, SOCKET mode: True); the Client Portal does not (False), so
    there -2.0 is a real value.
    """

    conid: int
    symbol: str
    sec_type: str = field(converter=_sec_type)
    quantity: float = field(converter=float, validator=_check_finite)
    multiplier: float | None = field(default=None, validator=_check_multiplier)
    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    underlying_price: float | None = None
    ib_sentinels: bool = True


def row_key(account: str, contract: str, timestamp: datetime, api_mode: str) -> str:
    """The idempotency key of a Greeks row: the same tick recomputed gets the same key."""
    if timestamp.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware, got {timestamp!r}")
    # UTC so one instant written with two offsets is still one key; JSON so no field
    # value can imitate a separator.
    name = json.dumps([account, contract, timestamp.astimezone(UTC).isoformat(), api_mode])
    return uuid.uuid5(_KEY_NAMESPACE, name).hex


def _sum(values: Iterable[float | None]) -> float | None:
    """Exact, order-independent sum; ``None`` if any term is missing or it overflows."""
    terms = list(values)
    if any(term is None or not math.isfinite(term) for term in terms):
        return None
    try:
        total = math.fsum(term for term in terms if term is not None)
    except OverflowError:
        return None
    return total if math.isfinite(total) else None


def _times(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    product = a * b
    return product if math.isfinite(product) else None


@frozen
class _Net:
    """Net Greeks of one underlying (or of the whole portfolio)."""

    delta: float | None
    gamma: float | None
    vega: float | None
    theta: float | None
    price: float | None
    dollar_delta: float | None
    legs: int
    legs_missing: int


def _underlying_price(
    symbol: str, legs: Sequence[Leg], underlying_prices: Mapping[str, float] | None
) -> float | None:
    if underlying_prices is not None:
        given = clean_price(underlying_prices.get(symbol))
        if given is not None:
            return given
    # Option tickers of one underlying report slightly different prices; take the
    # lowest conid's so the result does not depend on the order of the legs.
    candidates = sorted(
        (leg.conid, price) for leg in legs if (price := clean_price(leg.underlying_price))
    )
    return candidates[0][1] if candidates else None


def _net_of_underlying(
    legs: Sequence[Leg], price: float | None, omit: Collection[int] = ()
) -> _Net:
    delta: list[float | None] = []
    gamma: list[float | None] = []
    vega: list[float | None] = []
    theta: list[float | None] = []
    missing = 0
    for leg in legs:
        if leg.sec_type in OPTION_SEC_TYPES and leg.conid in omit:
            # No current Greeks: counted, never summed (as 0 or as an old value).
            missing += 1
        elif leg.sec_type in OPTION_SEC_TYPES:
            size = leg.quantity * multiplier_from(leg.multiplier)
            clean = clean_greek if leg.ib_sentinels else clean_portal_greek
            greeks = [clean(g) for g in (leg.delta, leg.gamma, leg.vega, leg.theta)]
            if any(g is None for g in greeks):
                missing += 1
            for column, greek in zip((delta, gamma, vega, theta), greeks, strict=True):
                column.append(_times(size, greek))
        else:
            linear = leg.quantity
            if leg.sec_type in FUTURE_SEC_TYPES:
                linear *= multiplier_from(leg.multiplier)
            delta.append(linear)
            # Stocks and futures have gamma, vega and theta of exactly zero.
            for column in (gamma, vega, theta):
                column.append(0.0)
    net_delta = _sum(delta)
    return _Net(
        delta=net_delta,
        gamma=_sum(gamma),
        vega=_sum(vega),
        theta=_sum(theta),
        price=price,
        dollar_delta=_times(net_delta, price),
        legs=len(legs),
        legs_missing=missing,
    )


def _row(
    net: _Net, *, contract: str, account: str, timestamp: datetime, api_mode: str
) -> GreeksRow:
    return GreeksRow(
        timestamp=timestamp,
        account=account,
        api_mode=api_mode,
        contract=contract,
        delta=net.delta,
        gamma=net.gamma,
        vega=net.vega,
        theta=net.theta,
        underlying_price=net.price,
        dollar_delta=net.dollar_delta,
        legs=net.legs,
        legs_missing=net.legs_missing,
        key=row_key(account, contract, timestamp, api_mode),
    )


def aggregate(
    legs: Sequence[Leg],
    *,
    account: str,
    timestamp: datetime,
    api_mode: str,
    underlying_prices: Mapping[str, float] | None = None,
    omit: Collection[int] = (),
) -> list[GreeksRow]:
    """Net Greeks rows for one tick: ``[PORTFOLIO]`` or ``[PORTFOLIO, *per underlying]``.

    Option legs whose conid is in ``omit`` (no current Greeks, see :func:`judge_legs`) are
    counted in ``legs`` and ``legs_missing`` but contribute nothing to the sums.

    Legs with quantity 0 (closed positions IB still lists) and legs whose ``sec_type`` is
    not in :data:`SEC_TYPES` are skipped. A price in ``underlying_prices`` wins over the
    legs' ``underlying_price``. Raises ValueError when no leg is left: whether that is a
    flat account (:func:`flat_row`) or positions not synced yet (write nothing) is the
    feed's call.
    """
    by_symbol: dict[str, list[Leg]] = {}
    for leg in legs:
        if leg.quantity != 0 and leg.sec_type in SEC_TYPES:
            by_symbol.setdefault(leg.symbol, []).append(leg)
    if not by_symbol:
        raise ValueError("no open legs to aggregate: use flat_row() for a flat account")

    nets = {
        symbol: _net_of_underlying(group, _underlying_price(symbol, group, underlying_prices), omit)
        for symbol, group in sorted(by_symbol.items())
    }
    if len(nets) == 1:
        (portfolio,) = nets.values()
    else:
        parts = list(nets.values())
        portfolio = _Net(
            # Share deltas of different underlyings do not add up to anything physical;
            # the sum is kept for the PORTFOLIO column and dollar_delta is the real total.
            delta=_sum(n.delta for n in parts),
            gamma=_sum(n.gamma for n in parts),
            vega=_sum(n.vega for n in parts),
            theta=_sum(n.theta for n in parts),
            price=None,
            dollar_delta=_sum(n.dollar_delta for n in parts),
            legs=sum(n.legs for n in parts),
            legs_missing=sum(n.legs_missing for n in parts),
        )
    named = [(PORTFOLIO, portfolio)] + (list(nets.items()) if len(nets) > 1 else [])
    return [
        _row(net, contract=contract, account=account, timestamp=timestamp, api_mode=api_mode)
        for contract, net in named
    ]


def flat_row(account: str, timestamp: datetime, api_mode: str) -> GreeksRow:
    """The PORTFOLIO row of an account known to hold no position: all Greeks zero."""
    return GreeksRow(
        timestamp=timestamp,
        account=account,
        api_mode=api_mode,
        contract=PORTFOLIO,
        delta=0.0,
        gamma=0.0,
        vega=0.0,
        theta=0.0,
        underlying_price=None,
        dollar_delta=0.0,
        legs=0,
        legs_missing=0,
        key=row_key(account, PORTFOLIO, timestamp, api_mode),
    )


# -- how current each option leg's Greeks are -------------------------------------------


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


def _s(seconds: float) -> str:
    return f"{seconds:.0f} s"


def judge_legs(
    legs: Sequence[LegGreeks], rule: GreeksRule, *, broken_farms: Collection[str] = ()
) -> LegsVerdict:
    """Apply the one staleness rule, the same in both modes (pure; ages are passed in).

    An option leg's Greeks are *current* when some arrived, the latest no more than
    ``rule.stale_after`` seconds ago, and no market-data farm is reported broken (IB 2103
    until 2104/2108). A leg that has had no Greeks yet is *waiting* for ``rule.leg_grace``
    seconds after its request; nothing is written while a leg waits (a fresh subscription
    is not a missing leg). Any other leg without current Greeks is *missing*: the row is
    skipped, or with ``rule.partial`` written from the other legs with the missing ones
    counted in ``legs_missing``.
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
