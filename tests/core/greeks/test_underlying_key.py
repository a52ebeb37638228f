"""An underlying's price is a per-leg fact for futures legs: never a stock's price by symbol.

Eversource's ticker is "ES", and so is the E-mini future's. A by-symbol price map holds
stocks' prices; a futures option (FOP) or a future (FUT) named "ES" must not take the
stock's, neither in the model fallback nor in its per-position row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ibkr_bridge.core import pricing
from ibkr_bridge.core.greeks import Leg, apply_model, position_rows, years_to_expiry

NOW = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
STOCK_PRICE = 75.0  # Eversource, "ES"
FUTURE_PRICE = 6000.0  # E-mini S&P 500, also "ES"
PRICES = {"ES": STOCK_PRICE}  # what a feed's by-symbol map holds: the stock


def fop(conid: int = 2, **fields: float | None) -> Leg:
    return Leg(
        conid=conid,
        symbol="ES",
        sec_type="FOP",
        quantity=1,
        multiplier=50.0,
        right="C",
        strike=6100.0,
        expiry="20260417",
        implied_vol=0.2,
        **fields,  # type: ignore[arg-type]
    )


STOCK = Leg(conid=1, symbol="ES", sec_type="STK", quantity=100)


def black76_delta(spot: float) -> float:
    t = years_to_expiry("20260417", NOW)
    assert t is not None
    g = pricing.greeks("black76", spot, 6100.0, t, 0.2, 0.04, "C")
    assert g is not None
    return g.delta


def modelled(legs: list[Leg], omit: frozenset[int] = frozenset()) -> list[Leg]:
    out, _ = apply_model(legs, now=NOW, rate=0.04, underlying_prices=PRICES, omit=omit)
    return out


def test_a_stale_fop_is_modelled_at_its_future_never_at_the_stock() -> None:
    # Stale: IB's last computation (at the future's price) is not current, so priced anew.
    legs = [STOCK, fop(delta=0.4, gamma=0.001, vega=5.0, theta=-1.0, underlying_price=FUTURE_PRICE)]
    out = modelled(legs, omit=frozenset({2}))
    assert out[1].greeks_source == "model"
    assert out[1].delta == pytest.approx(black76_delta(FUTURE_PRICE), rel=1e-12)
    assert out[1].delta != pytest.approx(black76_delta(STOCK_PRICE))


def test_a_not_computed_fop_is_modelled_at_its_future() -> None:
    # IB's -2 Greeks; the feed gave the leg its future's price (IB's undPrice was -1).
    legs = [
        STOCK,
        fop(delta=-2.0, gamma=-2.0, vega=-2.0, theta=-2.0, underlying_price=FUTURE_PRICE),
    ]
    out = modelled(legs)
    assert out[1].greeks_source == "model"
    assert out[1].delta == pytest.approx(black76_delta(FUTURE_PRICE), rel=1e-12)


def test_a_fop_without_its_future_price_stays_missing_rather_than_take_the_stock() -> None:
    legs = [STOCK, fop(delta=-2.0, gamma=-2.0, vega=-2.0, theta=-2.0, underlying_price=-1.0)]
    out = modelled(legs)
    assert out[1].greeks_source == "ib"  # not priced: missing, not wrong
    assert out[1].delta == -2.0


def test_an_equity_option_still_takes_its_stock_by_symbol() -> None:
    opt = Leg(
        conid=3,
        symbol="ES",
        sec_type="OPT",
        quantity=1,
        multiplier=100.0,
        right="C",
        strike=80.0,
        expiry="20260417",
        implied_vol=0.2,
        delta=-2.0,
        gamma=-2.0,
        vega=-2.0,
        theta=-2.0,
    )
    out = modelled([STOCK, opt])
    t = years_to_expiry("20260417", NOW)
    assert t is not None
    want = pricing.greeks("black_scholes", STOCK_PRICE, 80.0, t, 0.2, 0.04, "C")
    assert want is not None
    assert out[1].delta == pytest.approx(want.delta, rel=1e-12)


def test_position_rows_label_futures_legs_with_their_own_price() -> None:
    fut = Leg(
        conid=4,
        symbol="ES",
        sec_type="FUT",
        quantity=1,
        multiplier=50.0,
        underlying_price=FUTURE_PRICE + 5,
    )
    legs = [
        STOCK,
        fop(delta=0.4, gamma=0.001, vega=5.0, theta=-1.0, underlying_price=FUTURE_PRICE),
        fut,
    ]
    rows = position_rows(legs, timestamp=NOW, api_mode="SOCKET", underlying_prices=PRICES)
    by_conid = {row.conid: row.underlying_price for row in rows}
    assert by_conid == {1: STOCK_PRICE, 2: FUTURE_PRICE, 4: FUTURE_PRICE + 5}


def test_a_fop_row_without_its_future_price_has_none_not_the_stock() -> None:
    rows = position_rows([STOCK, fop()], timestamp=NOW, api_mode="SOCKET", underlying_prices=PRICES)
    assert {row.conid: row.underlying_price for row in rows} == {1: STOCK_PRICE, 2: None}
