"""The simulated Greeks, per share in IBKR's units: Black-Scholes and Black-76.

Equity and index options (OPT) use plain Black-Scholes (no dividends) on the spot; futures
options (FOP) use Black-76 on the future's price, as IB does, so that a test can recompute
every number the simulators send with :func:`model_greeks`. Vega is per volatility point,
theta per calendar day.

Not :mod:`ibkr_bridge.core.pricing`: that one has no figure at expiry or zero volatility
(the simulators send intrinsic value there) and rounds put delta, gamma and vega in another
order, so the simulators' numbers, and the tests that recompute them, would change.
"""

from __future__ import annotations

import math

from attrs import frozen

from ibkr_bridge.sim.portfolio._records import Instrument


@frozen(kw_only=True)
class OptionGreeks:
    """Per-share model values as IBKR's tickOptionComputation carries them."""

    delta: float
    gamma: float
    vega: float  # per 1 volatility point (0.01)
    theta: float  # per calendar day
    option_price: float
    implied_vol: float
    underlying_price: float


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(
    spot: float, strike: float, t_years: float, vol: float, rate: float, right: str
) -> OptionGreeks:
    """Black-Scholes price and Greeks per share (no dividends).

    Vega is per volatility point and theta per calendar day, as IBKR reports them. At or
    after expiry (``t_years <= 0``) or with zero volatility the option is worth its
    intrinsic value and only delta is non-zero.
    """
    if spot <= 0 or strike <= 0:
        raise ValueError(f"spot and strike must be positive, got {spot}, {strike}")
    if vol < 0:
        raise ValueError(f"volatility must not be negative, got {vol}")
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")
    call = right == "C"
    if t_years <= 0 or vol == 0:
        intrinsic = max(spot - strike, 0.0) if call else max(strike - spot, 0.0)
        in_the_money = spot > strike if call else spot < strike
        delta = (1.0 if call else -1.0) if in_the_money else 0.0
        return OptionGreeks(
            delta=delta,
            gamma=0.0,
            vega=0.0,
            theta=0.0,
            option_price=intrinsic,
            implied_vol=vol,
            underlying_price=spot,
        )
    sqrt_t = math.sqrt(t_years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * t_years) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    discount = math.exp(-rate * t_years)
    pdf_d1 = _norm_pdf(d1)
    decay = -spot * pdf_d1 * vol / (2.0 * sqrt_t)
    if call:
        price = spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2)
        delta = _norm_cdf(d1)
        theta_year = decay - rate * strike * discount * _norm_cdf(d2)
    else:
        price = strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
        delta = _norm_cdf(d1) - 1.0
        theta_year = decay + rate * strike * discount * _norm_cdf(-d2)
    return OptionGreeks(
        delta=delta,
        gamma=pdf_d1 / (spot * vol * sqrt_t),
        vega=spot * pdf_d1 * sqrt_t / 100.0,
        theta=theta_year / 365.0,
        option_price=price,
        implied_vol=vol,
        underlying_price=spot,
    )


def black76(
    forward: float, strike: float, t_years: float, vol: float, rate: float, right: str
) -> OptionGreeks:
    """Black-76 price and Greeks per share of an option on a futures price ``forward``.

    Delta and gamma are against the future's price (so delta is discounted,
    ``e^{-rT} N(d1)``); theta holds the future's price fixed. At or after expiry the option
    is worth its intrinsic value; with zero volatility before expiry, its discounted
    intrinsic value (the limit of the formula), and only delta is non-zero.
    """
    if forward <= 0 or strike <= 0:
        raise ValueError(f"forward and strike must be positive, got {forward}, {strike}")
    if vol < 0:
        raise ValueError(f"volatility must not be negative, got {vol}")
    if right not in ("C", "P"):
        raise ValueError(f"right must be 'C' or 'P', got {right!r}")
    sign = 1.0 if right == "C" else -1.0
    if t_years <= 0 or vol == 0:
        discount = math.exp(-rate * t_years) if t_years > 0 else 1.0
        in_the_money = sign * (forward - strike) > 0
        return OptionGreeks(
            delta=sign * discount if in_the_money else 0.0,
            gamma=0.0,
            vega=0.0,
            theta=0.0,
            option_price=discount * max(sign * (forward - strike), 0.0),
            implied_vol=vol,
            underlying_price=forward,
        )
    sqrt_t = math.sqrt(t_years)
    sd = vol * sqrt_t
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    discount = math.exp(-rate * t_years)
    pdf_d1 = _norm_pdf(d1)
    # w = +1 call, -1 put: V = e^{-rT} w (F N(w d1) - K N(w d2)).
    price = discount * sign * (forward * _norm_cdf(sign * d1) - strike * _norm_cdf(sign * d2))
    theta_year = rate * price - discount * forward * pdf_d1 * vol / (2.0 * sqrt_t)
    return OptionGreeks(
        delta=sign * discount * _norm_cdf(sign * d1),
        gamma=discount * pdf_d1 / (forward * sd),
        vega=discount * forward * pdf_d1 * sqrt_t / 100.0,
        theta=theta_year / 365.0,
        option_price=price,
        implied_vol=vol,
        underlying_price=forward,
    )


def model_greeks(
    sec_type: str,
    underlying: float,
    strike: float,
    t_years: float,
    vol: float,
    rate: float,
    right: str,
) -> OptionGreeks:
    """The simulators' model for ``sec_type``: :func:`black76` for FOP, else Black-Scholes."""
    model = black76 if sec_type == "FOP" else black_scholes
    return model(underlying, strike, t_years, vol, rate, right)


def option_greeks(
    inst: Instrument, spot: float, t_years: float | None, vol: float, rate: float
) -> OptionGreeks:
    """:func:`model_greeks` for an option instrument on its underlying's price ``spot``."""
    assert inst.strike is not None
    assert inst.right is not None
    assert t_years is not None  # an option always has an expiry
    return model_greeks(inst.sec_type, spot, inst.strike, t_years, vol, rate, inst.right)
