"""The pure option-pricing module: no-arbitrage identities, Greeks against finite differences
of the price, Black-76 against Black-Scholes with zero carry, and QuantLib as an independent
implementation (the figures ``BRIDGE_GREEKS_FALLBACK=model`` writes are checked against it)."""

from __future__ import annotations

import math

import pytest
import QuantLib as ql  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_bridge.core import pricing
from ibkr_bridge.core.pricing import ModelGreeks, Right, black76, black_scholes, implied_vol

spots = st.floats(1.0, 10_000.0)
moneyness = st.floats(0.7, 1.4)  # strike / underlying
days = st.integers(7, 3 * 365)
vols = st.floats(0.08, 1.5)
rates = st.floats(0.0, 0.10)
dividends = st.floats(0.0, 0.05)
rights = st.sampled_from(["C", "P"])


def close(a: float, b: float, rel: float, abs_: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def _bs(s: float, k: float, t: float, v: float, r: float, right: Right, q: float) -> ModelGreeks:
    g = black_scholes(s, k, t, v, r, right, q)
    assert g is not None
    return g


@given(spots, moneyness, days, vols, rates, dividends)
def test_put_call_parity_black_scholes(
    s: float, m: float, d: int, v: float, r: float, q: float
) -> None:
    k, t = s * m, d / 365.0
    call, put = _bs(s, k, t, v, r, "C", q), _bs(s, k, t, v, r, "P", q)
    parity = s * math.exp(-q * t) - k * math.exp(-r * t)
    assert close(call.price - put.price, parity, 1e-9, s * 1e-13)
    assert close(call.delta - put.delta, math.exp(-q * t), 1e-12, 1e-15)
    assert close(call.gamma, put.gamma, 1e-12, 1e-18)
    assert close(call.vega, put.vega, 1e-12, 1e-18)


@given(spots, moneyness, days, vols, rates)
def test_put_call_parity_black76(f: float, m: float, d: int, v: float, r: float) -> None:
    k, t = f * m, d / 365.0
    call, put = black76(f, k, t, v, r, "C"), black76(f, k, t, v, r, "P")
    assert call is not None
    assert put is not None
    assert close(call.price - put.price, math.exp(-r * t) * (f - k), 1e-9, f * 1e-13)


@given(spots, moneyness, days, vols, rates, rights)
def test_black76_is_black_scholes_with_zero_carry(
    f: float, m: float, d: int, v: float, r: float, right: Right
) -> None:
    k, t = f * m, d / 365.0
    b76, bs = black76(f, k, t, v, r, right), _bs(f, k, t, v, r, right, r)
    assert b76 is not None
    for name in ("price", "delta", "gamma", "vega", "theta"):
        assert close(getattr(b76, name), getattr(bs, name), 1e-9, f * 1e-15), name


@settings(max_examples=200)
@given(spots, moneyness, days, vols, rates, dividends, rights, st.booleans())
def test_greeks_are_derivatives_of_the_price(
    s: float, m: float, d: int, v: float, r: float, q: float, right: Right, futures: bool
) -> None:
    k, t = s * m, d / 365.0

    def price(s_: float = s, t_: float = t, v_: float = v) -> float:
        g = black76(s_, k, t_, v_, r, right) if futures else _bs(s_, k, t_, v_, r, right, q)
        assert g is not None
        return g.price

    g = black76(s, k, t, v, r, right) if futures else _bs(s, k, t, v, r, right, q)
    assert g is not None
    # Steps scaled to the width of the distribution (s * vol * sqrt(t)): fixed steps are too
    # coarse for a week-old option and too fine (rounding) for a long one.
    width = s * v * math.sqrt(t)
    hs, hg, hv, ht = width * 1e-4, width * 1e-3, 1e-4, 1e-5
    delta = (price(s_=s + hs) - price(s_=s - hs)) / (2 * hs)
    gamma = (price(s_=s + hg) - 2 * price() + price(s_=s - hg)) / (hg * hg)
    vega = (price(v_=v + hv) - price(v_=v - hv)) / (2 * hv) * 0.01
    theta = -(price(t_=t + ht) - price(t_=t - ht)) / (2 * ht) / 365.0
    # Absolute terms: the rounding of the price differences (eps * price / step).
    assert close(g.delta, delta, 1e-5, 1e-9)
    assert close(g.gamma, gamma, 1e-3, 1e-5 / s)
    assert close(g.vega, vega, 1e-5, s * 1e-9)
    assert close(g.theta, theta, 1e-4, s * 1e-9)


@given(spots, moneyness, days, vols, rates, dividends, rights, st.booleans())
def test_implied_vol_recovers_the_volatility(
    s: float, m: float, d: int, v: float, r: float, q: float, right: Right, futures: bool
) -> None:
    k, t = s * m, d / 365.0
    model: pricing.Model = "black76" if futures else "black_scholes"
    g = pricing.greeks(model, s, k, t, v, r, right, q)
    assert g is not None
    low, _ = pricing.price_bounds(model, s, k, t, r, right, q)
    if g.price - low < 1e-9 * s:  # no vega left to read a volatility from
        return
    iv = implied_vol(model, g.price, s, k, t, r, right, q)
    assert iv is not None
    # A price is known to ~1e-14 (the solver's stop): that pins the volatility to 1e-14 / vega.
    assert close(iv, v, 1e-7, 1e-13 * max(1.0, g.price) / (g.vega / 0.01))


def test_undefined_figures_are_none_not_invented() -> None:
    assert black_scholes(100, 100, 0.0, 0.2, 0.01, "C") is None
    assert black_scholes(100, 100, -1 / 365, 0.2, 0.01, "C") is None
    assert black_scholes(100, 100, 0.5, 0.0, 0.01, "C") is None
    assert black_scholes(100, 100, 0.5, math.nan, 0.01, "C") is None
    assert black76(100, 100, 0.5, 0.2, math.inf, "P") is None
    # Below intrinsic value and above the upper bound no volatility fits.
    assert implied_vol("black_scholes", 4.0, 105, 100, 0.5, 0.0, "C") is None
    assert implied_vol("black_scholes", 101.0, 100, 100, 0.5, 0.0, "C") is None
    assert implied_vol("black_scholes", math.nan, 100, 100, 0.5, 0.0, "C") is None


@pytest.mark.parametrize(
    ("spot", "strike", "right"), [(-1.0, 100.0, "C"), (100.0, 0.0, "P"), (100.0, 100.0, "X")]
)
def test_bad_arguments_are_named(spot: float, strike: float, right: str) -> None:
    with pytest.raises(ValueError, match=r"underlying|strike|right"):
        black_scholes(spot, strike, 0.5, 0.2, 0.01, right)  # type: ignore[arg-type]


# --- QuantLib, an independent implementation --------------------------------------------


def _quantlib(
    futures: bool, s: float, k: float, d: int, v: float, r: float, q: float, right: Right
) -> tuple[float, float, float, float, float]:
    today = ql.Date(1, 3, 2027)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    spot = ql.QuoteHandle(ql.SimpleQuote(s))
    rts = ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc, ql.Continuous))
    vts = ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), v, dc))
    if futures:
        process: ql.GeneralizedBlackScholesProcess = ql.BlackProcess(spot, rts, vts)
    else:
        qts = ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc, ql.Continuous))
        process = ql.BlackScholesMertonProcess(spot, qts, rts, vts)
    kind = ql.Option.Call if right == "C" else ql.Option.Put
    option = ql.VanillaOption(ql.PlainVanillaPayoff(kind, k), ql.EuropeanExercise(today + d))
    option.setPricingEngine(ql.AnalyticEuropeanEngine(process))
    return option.NPV(), option.delta(), option.gamma(), option.vega() / 100, option.thetaPerDay()


@settings(max_examples=300)
@given(spots, moneyness, days, vols, rates, dividends, rights, st.booleans())
def test_matches_quantlib_to_1e9_relative(
    s: float, m: float, d: int, v: float, r: float, q: float, right: Right, futures: bool
) -> None:
    k = s * m
    g = black76(s, k, d / 365, v, r, right) if futures else _bs(s, k, d / 365, v, r, right, q)
    assert g is not None
    want = _quantlib(futures, s, k, d, v, r, q, right)
    got = (g.price, g.delta, g.gamma, g.vega, g.theta)
    # The absolute terms are rounding at the underlying's scale (a double's 1e-16 of it): they
    # only matter for figures that far out of the money are zero to the last digit anyway.
    floors = (s * 1e-15, 1e-15, 1e-15 / s, s * 1e-15, s * 1e-15)
    for name, a, b, floor in zip(
        ("price", "delta", "gamma", "vega", "theta"), got, want, floors, strict=True
    ):
        assert close(a, b, 1e-9, floor), (name, a, b)
