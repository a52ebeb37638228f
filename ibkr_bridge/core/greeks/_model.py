"""Model Greeks for option legs IB has not computed (BRIDGE_GREEKS_FALLBACK=model).

IB leaves a leg's Greeks as its "not computed" sentinels outside market hours, before the
first model tick, or when the option has no quote; a leg may also have Greeks that are
no longer current (:func:`~ibkr_bridge.core.greeks.judge_legs`). :func:`apply_model` gives
such legs Black-Scholes (OPT) or Black-76 (FOP) Greeks from :mod:`ibkr_bridge.core.pricing`:

* volatility: IB's implied volatility for the leg when it has one, else the volatility
  implied from the option's mid price, else none (the leg stays missing);
* underlying price: for a leg whose IB computation is current but incomplete (some
  Greeks "not computed"), that computation's own underlying price, which its implied
  volatility goes with; otherwise the underlying's current price (for an equity option
  the stock's, from the by-symbol map the feed passes, else the leg's own); for a futures
  option always the leg's own, its own future's price, never a price by symbol (a stock
  may share the future's root: Eversource and the E-mini are both "ES");
* time: calendar years from ``now`` to 16:00 New York on the expiry date;
* rate: BRIDGE_RISK_FREE_RATE, continuously compounded; no dividend yield (the bridge has
  no dividend data), which the docs state next to the comparison with QuantLib.

A leg that gets model Greeks is marked ``greeks_source="model"``; its figures are the
bridge's own, so IB's -2 sentinel rule no longer applies to them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, time
from typing import Final
from zoneinfo import ZoneInfo

import attrs

from ibkr_bridge.core import pricing
from ibkr_bridge.core.greeks._aggregate import Leg
from ibkr_bridge.core.greeks._values import (
    BY_SYMBOL_SEC_TYPES,
    OPTION_SEC_TYPES,
    clean_greek,
    clean_portal_greek,
    clean_price,
)

NEW_YORK: Final = ZoneInfo("America/New_York")
EXPIRY_CLOCK_TIME: Final = time(16, 0)
SECONDS_PER_YEAR: Final = 365.0 * 86400.0


def years_to_expiry(expiry: str | None, now: datetime) -> float | None:
    """Calendar years from ``now`` to 16:00 New York on ``expiry`` (YYYYMMDD), or None."""
    if expiry is None or len(expiry) != 8 or not expiry.isdigit():
        return None  # a month code (YYYYMM) or nothing: no exact expiry to price to
    try:
        day = datetime.strptime(expiry, "%Y%m%d").date()
    except ValueError:
        return None
    expires = datetime.combine(day, EXPIRY_CLOCK_TIME, tzinfo=NEW_YORK).astimezone(UTC)
    return (expires - now).total_seconds() / SECONDS_PER_YEAR


def needs_model(leg: Leg, omit: Collection[int] = ()) -> bool:
    """An option leg whose IB Greeks are missing (any of the four) or not current."""
    if leg.sec_type not in OPTION_SEC_TYPES:
        return False
    if leg.conid in omit:
        return True
    clean = clean_greek if leg.ib_sentinels else clean_portal_greek
    return any(clean(g) is None for g in (leg.delta, leg.gamma, leg.vega, leg.theta))


def model_greeks(
    leg: Leg, *, now: datetime, rate: float, underlying_price: float | None = None
) -> pricing.ModelGreeks | None:
    """Per-share model Greeks of one option leg, or None when an input is missing."""
    spot = clean_price(underlying_price) or clean_price(leg.underlying_price)
    strike = clean_price(leg.strike)
    t_years = years_to_expiry(leg.expiry, now)
    if spot is None or strike is None or t_years is None or t_years <= 0:
        return None
    if leg.right not in ("C", "P"):
        return None
    right: pricing.Right = "C" if leg.right == "C" else "P"
    model: pricing.Model = "black76" if leg.sec_type == "FOP" else "black_scholes"
    vol = clean_price(leg.implied_vol)  # IB's, when it has one (> 0, not a sentinel)
    if vol is None:
        mid = clean_price(leg.option_price)
        if mid is None:
            return None
        vol = pricing.implied_vol(model, mid, spot, strike, t_years, rate, right)
        if vol is None:
            return None
    return pricing.greeks(model, spot, strike, t_years, vol, rate, right)


def apply_model(
    legs: Sequence[Leg],
    *,
    now: datetime,
    rate: float,
    underlying_prices: Mapping[str, float] | None = None,
    omit: Collection[int] = (),
) -> tuple[list[Leg], frozenset[int]]:
    """The legs with model Greeks where IB has none, and what is still to omit.

    Returns the new legs (the same objects where nothing changed) and ``omit`` less the
    legs the model filled: those count as current, with ``greeks_source="model"``.
    """
    out: list[Leg] = []
    filled: set[int] = set()
    prices = underlying_prices or {}
    for leg in legs:
        if not needs_model(leg, omit):
            out.append(leg)
            continue
        # A current IB computation (only some Greeks "not computed") prices its implied vol
        # at its own underlying price: keep the pair. A missing or stale one: price now.
        own = None if leg.conid in omit else clean_price(leg.underlying_price)
        # The by-symbol map holds stocks: a futures option keeps its own future's price.
        now_price = prices.get(leg.symbol) if leg.sec_type in BY_SYMBOL_SEC_TYPES else None
        g = model_greeks(leg, now=now, rate=rate, underlying_price=own or now_price)
        if g is None:
            out.append(leg)
            continue
        filled.add(leg.conid)
        out.append(
            attrs.evolve(
                leg,
                delta=g.delta,
                gamma=g.gamma,
                vega=g.vega,
                theta=g.theta,
                implied_vol=g.implied_vol,
                ib_sentinels=False,
                greeks_source="model",
            )
        )
    return out, frozenset(c for c in omit if c not in filled)
