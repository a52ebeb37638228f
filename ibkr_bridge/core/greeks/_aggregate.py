"""Legs and their net: the Leg record, the idempotency key, and aggregate() into GreeksRows."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypedDict

from attrs import field, frozen

from ibkr_bridge.core.greeks._values import (
    _KEY_NAMESPACE,
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    PORTFOLIO,
    SEC_TYPES,
    _check_finite,
    _check_multiplier,
    _sec_type,
    clean_greek,
    clean_portal_greek,
    clean_price,
    multiplier_from,
)
from ibkr_bridge.core.records import GreeksRow

_KEY_PREFIX = _KEY_NAMESPACE.bytes  # what uuid5 hashes before the name


class GreekFields(TypedDict, total=False):
    """The numbers a feed reads for a leg, passed on as ``Leg(**fields)``."""

    delta: float | None
    gamma: float | None
    vega: float | None
    theta: float | None
    underlying_price: float | None


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
    # What per-position rows and the model fallback need; a feed fills what it knows.
    account: str = ""
    local_symbol: str = ""  # the contract's own symbol, e.g. "SPY   270115C00500000"
    right: str | None = None
    strike: float | None = None
    expiry: str | None = None  # YYYYMMDD, IB's lastTradeDateOrContractMonth
    implied_vol: float | None = None  # IB's, per one (0.25 = 25 %)
    option_price: float | None = None  # the option's mid, to imply a volatility from
    greeks_source: str = "ib"  # "model" once core.greeks.apply_model filled them


def row_key(account: str, contract: str, timestamp: datetime, api_mode: str) -> str:
    """The idempotency key of a Greeks row: the same tick recomputed gets the same key."""
    if timestamp.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware, got {timestamp!r}")
    # UTC so one instant written with two offsets is still one key; JSON so no field
    # value can imitate a separator.
    name = json.dumps([account, contract, timestamp.astimezone(UTC).isoformat(), api_mode])
    # uuid.uuid5(_KEY_NAMESPACE, name).hex without building a UUID (a tick's rows spent
    # most of their construction time there): RFC 4122's version 5 is the first 16 bytes
    # of SHA-1(namespace + name) with the version nibble 5 and the variant bits 10.
    digest = bytearray(hashlib.sha1(_KEY_PREFIX + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


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
    legs_model: int = 0


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
    model = 0
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
            elif leg.greeks_source == "model":
                model += 1
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
        legs_model=model,
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
        legs_model=net.legs_model,
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
    return _net_rows(nets, account=account, timestamp=timestamp, api_mode=api_mode)


def _net_rows(
    nets: Mapping[str, _Net], *, account: str, timestamp: datetime, api_mode: str
) -> list[GreeksRow]:
    """The rows of per-underlying nets (in symbol order): PORTFOLIO, then each when several."""
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
            legs_model=sum(n.legs_model for n in parts),
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
