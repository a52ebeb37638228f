"""Option prices and Greeks when IB has not computed them: Black-Scholes and Black-76, pure.

Used by the ``BRIDGE_GREEKS_FALLBACK=model`` path: a leg whose Greeks IB left as its
"not computed" sentinels gets model Greeks from IB's implied volatility when it has one,
else from a volatility implied from the option's mid price.

Conventions follow IBKR's so model Greeks sum with IB's: everything is per share (per unit
of the underlying; the caller scales by position and multiplier), vega is per volatility
point (0.01), theta per calendar day (t in calendar years, 365 days). Rates and the
dividend yield are continuously compounded.

* equity and index options (OPT): Black-Scholes-Merton on the spot, with a dividend yield;
* futures options (FOP): Black-76 on the future's price (delta and gamma against it);
  Black-76 is Black-Scholes with zero cost of carry (``dividend == rate``).

Nothing here does IO, reads a clock or imports outside the standard library and attrs.
Every function returns ``None`` where a figure is not defined (expired, zero volatility, a
price outside the no-arbitrage bounds) rather than inventing one.
"""

from __future__ import annotations

import math
from typing import Final, Literal

import attrs
from attrs import frozen

Right = Literal["C", "P"]
Model = Literal["black_scholes", "black76"]

DAYS_PER_YEAR: Final = 365.0
VOL_POINT: Final = 0.01
# The implied-volatility search range: 0.01 % to 2,000 % a year covers every listed option.
MIN_VOL: Final = 1e-4
MAX_VOL: Final = 20.0
_SQRT_2PI: Final = math.sqrt(2.0 * math.pi)


@frozen
class ModelGreeks:
    """Price and Greeks of one option, per share, in IBKR's units."""

    price: float
    delta: float
    gamma: float
    vega: float  # per volatility point
    theta: float  # per calendar day
    implied_vol: float
    model: Model


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / _SQRT_2PI


def _check(underlying: float, strike: float, right: str) -> None:
    if not (math.isfinite(underlying) and underlying > 0):
        raise ValueError(f"underlying price must be a positive number, got {underlying!r}")
    if not (math.isfinite(strike) and strike > 0):
        raise ValueError(f"strike must be a positive number, got {strike!r}")
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")


def _defined(t_years: float, vol: float, *rates: float) -> bool:
    return (
        math.isfinite(t_years)
        and t_years > 0
        and math.isfinite(vol)
        and vol > 0
        and all(math.isfinite(r) for r in rates)
    )


def black_scholes(
    spot: float,
    strike: float,
    t_years: float,
    vol: float,
    rate: float,
    right: Right,
    dividend: float = 0.0,
) -> ModelGreeks | None:
    """Black-Scholes-Merton price and Greeks of a European option on a spot price.

    ``None`` at or after expiry or with zero volatility (the Greeks are not defined there).
    """
    _check(spot, strike, right)
    if not _defined(t_years, vol, rate, dividend):
        return None
    sqrt_t = math.sqrt(t_years)
    sd = vol * sqrt_t
    d1 = (math.log(spot / strike) + (rate - dividend + 0.5 * vol * vol) * t_years) / sd
    d2 = d1 - sd
    disc_r = math.exp(-rate * t_years)
    disc_q = math.exp(-dividend * t_years)
    pdf_d1 = _pdf(d1)
    decay = -spot * disc_q * pdf_d1 * vol / (2.0 * sqrt_t)
    if right == "C":
        price = spot * disc_q * _cdf(d1) - strike * disc_r * _cdf(d2)
        delta = disc_q * _cdf(d1)
        theta = decay - rate * strike * disc_r * _cdf(d2) + dividend * spot * disc_q * _cdf(d1)
    else:
        price = strike * disc_r * _cdf(-d2) - spot * disc_q * _cdf(-d1)
        delta = -disc_q * _cdf(-d1)
        theta = decay + rate * strike * disc_r * _cdf(-d2) - dividend * spot * disc_q * _cdf(-d1)
    return ModelGreeks(
        price=max(price, 0.0),  # far out of the money the difference rounds below zero
        delta=delta,
        gamma=disc_q * pdf_d1 / (spot * sd),
        vega=spot * disc_q * pdf_d1 * sqrt_t * VOL_POINT,
        theta=theta / DAYS_PER_YEAR,
        implied_vol=vol,
        model="black_scholes",
    )


def black76(
    forward: float, strike: float, t_years: float, vol: float, rate: float, right: Right
) -> ModelGreeks | None:
    """Black-76 price and Greeks of a European option on a futures price.

    Delta and gamma are against the future's price; theta holds the future's price fixed.
    ``None`` at or after expiry or with zero volatility.
    """
    # Black-76 is Black-Scholes-Merton on the forward with the carry equal to the rate
    # (q = r): the same d1, price e^{-rT}(F N(d1) - K N(d2)) and theta
    # r V - e^{-rT} F n(d1) vol / (2 sqrt T); one implementation serves both.
    greeks = black_scholes(forward, strike, t_years, vol, rate, right, dividend=rate)
    return None if greeks is None else attrs.evolve(greeks, model="black76")


def price_bounds(
    model: Model,
    underlying: float,
    strike: float,
    t_years: float,
    rate: float,
    right: Right,
    dividend: float = 0.0,
) -> tuple[float, float]:
    """The no-arbitrage range of a European option's price: (intrinsic, upper bound)."""
    carry = rate if model == "black76" else dividend
    fwd_pv = underlying * math.exp(-carry * t_years)  # present value of the underlying
    strike_pv = strike * math.exp(-rate * t_years)
    if right == "C":
        return max(fwd_pv - strike_pv, 0.0), fwd_pv
    return max(strike_pv - fwd_pv, 0.0), strike_pv


def greeks(
    model: Model,
    underlying: float,
    strike: float,
    t_years: float,
    vol: float,
    rate: float,
    right: Right,
    dividend: float = 0.0,
) -> ModelGreeks | None:
    """:func:`black_scholes` or :func:`black76`, by ``model``."""
    if model == "black76":
        return black76(underlying, strike, t_years, vol, rate, right)
    return black_scholes(underlying, strike, t_years, vol, rate, right, dividend)


def implied_vol(
    model: Model,
    price: float,
    underlying: float,
    strike: float,
    t_years: float,
    rate: float,
    right: Right,
    dividend: float = 0.0,
) -> float | None:
    """The volatility at which ``model`` prices the option at ``price``, or ``None``.

    ``None`` when the price is outside the no-arbitrage bounds (a stale or crossed quote),
    or so close to intrinsic value that no volatility in range reproduces it. Bisection on
    the bracket keeps it safe; Newton steps inside the bracket make it fast.
    """
    _check(underlying, strike, right)
    if not (math.isfinite(price) and _defined(t_years, 1.0, rate, dividend)):
        return None
    low_p, high_p = price_bounds(model, underlying, strike, t_years, rate, right, dividend)
    if not (low_p < price < high_p):
        return None
    lo, hi = MIN_VOL, MAX_VOL

    def value(vol: float) -> ModelGreeks:
        g = greeks(model, underlying, strike, t_years, vol, rate, right, dividend)
        assert g is not None  # t > 0 and vol > 0 here
        return g

    if not (value(lo).price <= price <= value(hi).price):
        return None
    vol = 0.5 if lo < 0.5 < hi else 0.5 * (lo + hi)
    for _ in range(200):
        g = value(vol)
        diff = g.price - price
        if diff > 0:
            hi = vol
        else:
            lo = vol
        if abs(diff) <= 1e-14 * max(1.0, price) or hi - lo <= 1e-15 * hi:
            return vol
        vega_unit = g.vega / VOL_POINT
        step = vol - diff / vega_unit if vega_unit > 0 else math.nan
        vol = step if lo < step < hi else 0.5 * (lo + hi)
    return vol
