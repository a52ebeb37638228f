"""The simulators price futures options (FOP) with Black-76 on the future's price, as IB does.

Checked against a Black-76 closed form written here (NormalDist, the textbook form) and
against QuantLib's BlackCalculator, both to 1e-9 relative, and for put-call parity
C - P = e^{-rT} (F - K). Equity options (OPT) stay on plain Black-Scholes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
    SPY_CONID,
    OptionGreeks,
    black76,
    black_scholes,
    default_portfolio,
    model_greeks,
    two_account_portfolio,
    years_between,
)

NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
ES_CALL, ES_PUT, SPY_CALL = 800000201, 800000202, 800000101
REL = 1e-9
N = NormalDist()
CASES = [
    # forward, strike, t, vol, rate
    (6000.0, 6100.0, 45 / 365, 0.16, 0.04),
    (6000.0, 5800.0, 45 / 365, 0.16, 0.04),
    (100.0, 100.0, 1.0, 0.2, 0.05),
    (80.0, 120.0, 2.0, 0.45, 0.07),
    (4500.0, 4400.0, 3 / 365, 0.25, 0.0),
]


def textbook_black76(
    f: float, k: float, t: float, vol: float, r: float, right: str
) -> dict[str, float]:
    """Black (1976): V = e^{-rT} [w F N(w d1) - w K N(w d2)], IBKR units (vega per point,
    theta per calendar day with the future's price held)."""
    w = 1.0 if right == "C" else -1.0
    d1 = (math.log(f / k) + vol * vol * t / 2) / (vol * math.sqrt(t))
    d2 = d1 - vol * math.sqrt(t)
    df = math.exp(-r * t)
    price = df * (w * f * N.cdf(w * d1) - w * k * N.cdf(w * d2))
    return {
        "option_price": price,
        "delta": w * df * N.cdf(w * d1),
        "gamma": df * N.pdf(d1) / (f * vol * math.sqrt(t)),
        "vega": df * f * N.pdf(d1) * math.sqrt(t) * 0.01,
        "theta": (r * price - df * f * N.pdf(d1) * vol / (2 * math.sqrt(t))) / 365,
    }


def assert_matches(got: OptionGreeks, want: dict[str, float]) -> None:
    for name, value in want.items():
        assert getattr(got, name) == pytest.approx(value, rel=REL, abs=1e-300), name


@pytest.mark.parametrize(("f", "k", "t", "vol", "r"), CASES)
@pytest.mark.parametrize("right", ["C", "P"])
def test_black76_equals_the_closed_form(
    f: float, k: float, t: float, vol: float, r: float, right: str
) -> None:
    got = black76(f, k, t, vol, r, right)
    assert_matches(got, textbook_black76(f, k, t, vol, r, right))
    assert (got.implied_vol, got.underlying_price) == (vol, f)


@pytest.mark.parametrize(("f", "k", "t", "vol", "r"), CASES)
@pytest.mark.parametrize("right", ["C", "P"])
def test_black76_equals_quantlib_black_calculator(
    f: float, k: float, t: float, vol: float, r: float, right: str
) -> None:
    ql = pytest.importorskip("QuantLib")
    kind = ql.Option.Call if right == "C" else ql.Option.Put
    calc = ql.BlackCalculator(
        ql.PlainVanillaPayoff(kind, k), f, vol * math.sqrt(t), math.exp(-r * t)
    )
    got = black76(f, k, t, vol, r, right)
    assert_matches(
        got,
        {
            "option_price": calc.value(),
            "delta": calc.deltaForward(),
            "gamma": calc.gammaForward(),
            "vega": calc.vega(t) / 100,
            # theta(spot, T) with spot = forward: no carry term, the future's price held
            "theta": calc.theta(f, t) / 365,
        },
    )


@given(
    f=st.floats(10.0, 10_000.0),
    moneyness=st.floats(0.5, 2.0),
    t=st.floats(1 / 365, 3.0),
    vol=st.floats(0.05, 1.0),
    r=st.floats(0.0, 0.1),
)
def test_black76_put_call_parity(
    f: float, moneyness: float, t: float, vol: float, r: float
) -> None:
    k = f * moneyness
    call, put = black76(f, k, t, vol, r, "C"), black76(f, k, t, vol, r, "P")
    df = math.exp(-r * t)
    assert call.option_price - put.option_price == pytest.approx(
        df * (f - k), rel=1e-9, abs=1e-9 * f
    )
    assert call.delta - put.delta == pytest.approx(df, rel=1e-12)  # not 1: discounted delta
    assert call.gamma == pytest.approx(put.gamma, rel=1e-12)
    assert call.vega == pytest.approx(put.vega, rel=1e-12)
    # theta_C - theta_P = r (C - P) / 365 with the future's price held
    assert call.theta - put.theta == pytest.approx(r * df * (f - k) / 365, rel=1e-6, abs=1e-9 * f)


@pytest.mark.parametrize("right", ["C", "P"])
def test_black76_greeks_are_derivatives_of_its_price(right: str) -> None:
    f, k, t, vol, r = 6000.0, 5900.0, 30 / 365, 0.16, 0.04

    def price(ff: float = f, tt: float = t, v: float = vol) -> float:
        return black76(ff, k, tt, v, r, right).option_price

    g = black76(f, k, t, vol, r, right)
    assert g.delta == pytest.approx((price(f + 0.1) - price(f - 0.1)) / 0.2, rel=1e-6)
    assert g.gamma == pytest.approx((price(f + 5) - 2 * price() + price(f - 5)) / 25, rel=1e-3)
    assert g.vega == pytest.approx((price(v=vol + 1e-5) - price(v=vol - 1e-5)) / 2e-5 / 100, 1e-6)
    day = 1 / 365
    assert g.theta == pytest.approx((price(tt=t - day / 1000) - price()) * 1000, rel=1e-4)


def test_black76_is_not_black_scholes_on_the_futures_price() -> None:
    # The old simulator priced FOP as Black-Scholes with carry = rate; the two differ.
    b76, bs = (
        black76(6000.0, 6100.0, 0.25, 0.16, 0.04, "C"),
        black_scholes(6000.0, 6100.0, 0.25, 0.16, 0.04, "C"),
    )
    assert abs(b76.option_price / bs.option_price - 1) > 1e-2
    assert abs(b76.delta / bs.delta - 1) > 1e-2


def test_black76_at_expiry_and_zero_volatility() -> None:
    expired = black76(6100.0, 6000.0, 0.0, 0.16, 0.04, "C")
    assert (expired.option_price, expired.delta, expired.gamma) == (100.0, 1.0, 0.0)
    flat = black76(5900.0, 6000.0, 0.5, 0.0, 0.04, "P")
    df = math.exp(-0.04 * 0.5)
    assert flat.option_price == pytest.approx(100.0 * df, rel=1e-12)  # discounted intrinsic
    assert (flat.delta, flat.gamma, flat.vega, flat.theta) == (-df, 0.0, 0.0, 0.0)
    assert black76(5900.0, 6000.0, 0.5, 0.0, 0.04, "C").option_price == 0.0
    with pytest.raises(ValueError, match="right"):
        black76(100.0, 100.0, 1.0, 0.2, 0.0, "X")
    with pytest.raises(ValueError, match="positive"):
        black76(0.0, 100.0, 1.0, 0.2, 0.0, "C")
    with pytest.raises(ValueError, match="negative"):
        black76(100.0, 100.0, 1.0, -0.2, 0.0, "C")


@pytest.mark.parametrize("book", [default_portfolio, two_account_portfolio])
def test_the_portfolio_prices_fop_with_black76_and_opt_with_black_scholes(book: object) -> None:
    assert callable(book)
    portfolio = book(as_of=NOW)
    for conid in (ES_CALL, ES_PUT):
        inst = portfolio.instrument(conid)
        assert inst.sec_type == "FOP"
        assert inst.strike is not None
        assert inst.right is not None
        expires = inst.expires_at()
        assert expires is not None
        t = years_between(NOW, expires)
        want = textbook_black76(
            portfolio.spot(ES_CONID), inst.strike, t, 0.16, portfolio.rate, inst.right
        )
        got = portfolio.greeks(conid)
        assert got is not None
        assert_matches(got, want)
        assert portfolio.price(conid) == pytest.approx(want["option_price"], rel=REL)
        assert model_greeks("FOP", 6000.0, inst.strike, t, 0.16, portfolio.rate, inst.right) == got
    for pos in portfolio.positions(DEFAULT_ACCOUNT):
        if pos.conid == ES_CALL:  # market value: quantity x Black-76 price x 50
            value = pos.quantity * portfolio.price(ES_CALL) * 50.0
            assert portfolio.market_value(pos) == pytest.approx(value, rel=1e-12)
    spy_call = portfolio.instrument(SPY_CALL)
    assert spy_call.sec_type == "OPT"
    assert spy_call.strike is not None
    assert spy_call.right is not None
    expires = spy_call.expires_at()
    assert expires is not None
    t = years_between(NOW, expires)
    equity = black_scholes(portfolio.spot(SPY_CONID), spy_call.strike, t, 0.18, portfolio.rate, "C")
    assert portfolio.greeks(SPY_CALL) == equity
