"""Net Greeks of a portfolio from per-contract Greeks: one pure function for both feeds.

SOCKET (ib_async tickers) and PORTAL (Client Portal snapshot strings) each turn their
positions into :class:`Leg` records; :func:`aggregate` turns legs into
:class:`~ibkr_bridge.records.GreeksRow` records. Nothing here does IO or reads a clock.

Rules (see ``docs/greeks.md``):

* net Greek = sum of quantity * multiplier * per-share Greek for options (OPT, FOP); a stock or
  ETF contributes delta = shares, a future delta = quantity * multiplier;
* a missing Greek is never summed as 0: a column any option leg lacks is ``None``;
* with several underlyings the PORTFOLIO row is followed by one row per underlying.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Final

import attrs
from attrs import field, frozen

from ibkr_bridge.records import GreeksRow

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


def _net_of_underlying(legs: Sequence[Leg], price: float | None) -> _Net:
    delta: list[float | None] = []
    gamma: list[float | None] = []
    vega: list[float | None] = []
    theta: list[float | None] = []
    missing = 0
    for leg in legs:
        if leg.sec_type in OPTION_SEC_TYPES:
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
) -> list[GreeksRow]:
    """Net Greeks rows for one tick: ``[PORTFOLIO]`` or ``[PORTFOLIO, *per underlying]``.

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
        symbol: _net_of_underlying(group, _underlying_price(symbol, group, underlying_prices))
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
