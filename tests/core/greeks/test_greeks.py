"""Greeks aggregation: sentinels, Client Portal strings, hand-computed portfolios, properties."""

from __future__ import annotations

import json
import math
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ibkr_bridge.core.greeks import (
    PORTFOLIO,
    Leg,
    aggregate,
    clean_greek,
    clean_price,
    flat_row,
    multiplier_from,
    parse_portal_number,
    row_key,
)
from ibkr_bridge.core.greeks._values import _KEY_NAMESPACE
from ibkr_bridge.core.records import GreeksRow, record_from_json, record_to_json

TS = datetime(2026, 3, 2, 14, 30, 5, tzinfo=UTC)
DBL_MAX = sys.float_info.max
NAN = float("nan")
INF = float("inf")
GREEKS = ("delta", "gamma", "vega", "theta")


def agg(legs: list[Leg], **kwargs: object) -> list[GreeksRow]:
    prices = kwargs.pop("underlying_prices", None)
    assert not kwargs
    return aggregate(
        legs,
        account="DU123456",
        timestamp=TS,
        api_mode="SOCKET",
        underlying_prices=prices,  # type: ignore[arg-type]
    )


def opt(
    qty: float,
    delta: float | None,
    gamma: float | None,
    vega: float | None,
    theta: float | None,
    *,
    symbol: str = "SPY",
    conid: int = 1,
    multiplier: float | None = 100.0,
    sec_type: str = "OPT",
    und: float | None = None,
) -> Leg:
    return Leg(
        conid=conid,
        symbol=symbol,
        sec_type=sec_type,
        quantity=qty,
        multiplier=multiplier,
        delta=delta,
        gamma=gamma,
        vega=vega,
        theta=theta,
        underlying_price=und,
    )


def stock(
    qty: float, *, symbol: str = "SPY", conid: int = 99, multiplier: float | None = None
) -> Leg:
    return Leg(conid=conid, symbol=symbol, sec_type="STK", quantity=qty, multiplier=multiplier)


def greeks_of(row: GreeksRow) -> tuple[float | None, ...]:
    return tuple(getattr(row, name) for name in GREEKS)


# --- clean_greek / clean_price ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        None,
        -2,
        -2.0,
        NAN,
        INF,
        -INF,
        DBL_MAX,
        -DBL_MAX,
        1e300,
        True,
        False,
        "0.5",
        b"1",
        [],
        object(),
    ],
)
def test_clean_greek_rejects_sentinels_and_garbage(raw: object) -> None:
    assert clean_greek(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0.5, 0.5), (-0.5, -0.5), (0, 0.0), (1, 1.0), (-1.9999, -1.9999), (-2.0001, -2.0001)],
)
def test_clean_greek_keeps_real_values(raw: float, expected: float) -> None:
    cleaned = clean_greek(raw)
    assert cleaned == expected
    assert type(cleaned) is float


@pytest.mark.parametrize(
    "raw", [None, -1, -1.0, 0, 0.0, -0.01, NAN, INF, -INF, DBL_MAX, 1e300, True, "450.1"]
)
def test_clean_price_rejects_sentinels_and_garbage(raw: object) -> None:
    assert clean_price(raw) is None


@pytest.mark.parametrize(("raw", "expected"), [(450.25, 450.25), (3, 3.0), (0.01, 0.01)])
def test_clean_price_keeps_prices(raw: float, expected: float) -> None:
    assert clean_price(raw) == expected


# --- parse_portal_number ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.61", 2.61),
        ("-0.282", -0.282),
        ("C2.61", 2.61),
        ("H2.61", 2.61),
        ("C-0.5", -0.5),
        ("1,300", 1300.0),
        ("-1,234,567.5", -1234567.5),
        ("10.2K", 10200.0),
        ("1.1K", 1100.0),
        ("1.5M", 1500000.0),
        ("2B", 2e9),
        ("1e-05", 1e-05),
        (" 0.271 ", 0.271),
        (".5", 0.5),
        ("+3", 3.0),
        (7, 7.0),
        (-0.25, -0.25),
    ],
)
def test_parse_portal_number(text: str | float, expected: float) -> None:
    assert parse_portal_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "N/A",
        "-",
        "C",
        "K",
        ".",
        "1,5",
        "1,30",
        "12,3456",
        "2.61.3",
        "abc",
        "nan",
        "NaN",
        "inf",
        "-Infinity",
        "1e999",
        "1e999K",
        "9" * 400 + "M",
        "1_000",
        "10.2k",
        "X2.61",
        None,
        NAN,
        INF,
        True,
        [],
    ],
)
def test_parse_portal_number_rejects(text: object) -> None:
    assert parse_portal_number(text) is None  # type: ignore[arg-type]


@given(st.one_of(st.text(), st.from_regex(r"[CH]?[+-]?[\d,.eE+-]{0,30}[KMB]?", fullmatch=True)))
def test_parse_portal_number_never_raises(text: str) -> None:
    result = parse_portal_number(text)
    assert result is None or math.isfinite(result)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_portal_number_round_trips_floats(x: float) -> None:
    for text in (repr(x), str(x), f"{x:,}", f"C{x:,}", f"H{x!r}"):
        assert parse_portal_number(text) == x, text


@given(st.integers(min_value=-(10**12), max_value=10**12), st.sampled_from(["K", "M", "B"]))
def test_parse_portal_number_suffix_scales_exactly(thousandths: int, suffix: str) -> None:
    # "12.345K" style: three decimals; the result must be the exact decimal value.
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}[suffix]
    sign = "-" if thousandths < 0 else ""
    whole, frac = divmod(abs(thousandths), 1000)
    text = f"{sign}{whole:,}.{frac:03d}{suffix}"
    assert parse_portal_number(text) == thousandths * scale / 1000


# --- multiplier_from / Leg --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 1.0),
        ("  ", 1.0),
        (None, 1.0),
        ("100", 100.0),
        ("50", 50.0),
        (0.0, 1.0),
        (0, 1.0),
        (50.0, 50.0),
        ("0.1", 0.1),
    ],
)
def test_multiplier_from(raw: str | float | None, expected: float) -> None:
    assert multiplier_from(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "N/A", -1.0, "-100", NAN, INF, DBL_MAX, True])
def test_multiplier_from_refuses_garbage(raw: str | float) -> None:
    with pytest.raises(ValueError, match="multiplier"):
        multiplier_from(raw)


def test_leg_normalises_sec_type_and_validates() -> None:
    leg = Leg(conid=1, symbol="SPY", sec_type=" opt ", quantity=2, multiplier=100.0)
    assert leg.sec_type == "OPT"
    assert leg.quantity == 2.0
    with pytest.raises(ValueError, match="quantity"):
        Leg(conid=1, symbol="SPY", sec_type="OPT", quantity=NAN)
    with pytest.raises(ValueError, match="multiplier"):
        Leg(conid=1, symbol="SPY", sec_type="OPT", quantity=1, multiplier=-100.0)
    with pytest.raises(TypeError, match="multiplier_from"):
        Leg(conid=1, symbol="SPY", sec_type="OPT", quantity=1, multiplier="100")  # type: ignore[arg-type]


# --- hand-computed portfolios -----------------------------------------------------------


def test_long_calls() -> None:
    (row,) = agg([opt(2, 0.5, 0.02, 0.15, -0.05, und=500.0)])
    assert row.contract == PORTFOLIO
    assert greeks_of(row) == pytest.approx((100.0, 4.0, 30.0, -10.0))
    assert row.underlying_price == 500.0
    assert row.dollar_delta == pytest.approx(50_000.0)
    assert (row.legs, row.legs_missing) == (1, 0)


def test_short_puts() -> None:
    (row,) = agg([opt(-3, -0.4, 0.03, 0.2, -0.04)])
    # Short puts: long delta, short gamma and vega, collects theta.
    assert greeks_of(row) == pytest.approx((120.0, -9.0, -60.0, 12.0))
    assert row.underlying_price is None
    assert row.dollar_delta is None


def test_short_call_long_put() -> None:
    (row,) = agg(
        [opt(-1, 0.6, 0.01, 0.3, -0.1, conid=1), opt(1, -0.35, 0.012, 0.25, -0.08, conid=2)]
    )
    assert greeks_of(row) == pytest.approx((-95.0, 0.2, -5.0, 2.0))
    assert (row.legs, row.legs_missing) == (2, 0)


def test_options_and_stock_mixed() -> None:
    legs = [
        opt(2, 0.5, 0.02, 0.15, -0.05, conid=1),
        opt(-3, -0.4, 0.03, 0.2, -0.04, conid=2),
        stock(150),
    ]
    (row,) = agg(legs, underlying_prices={"SPY": 500.0})
    assert greeks_of(row) == pytest.approx((370.0, -5.0, -30.0, 2.0))
    assert row.dollar_delta == pytest.approx(185_000.0)
    assert (row.legs, row.legs_missing) == (3, 0)


@pytest.mark.parametrize("multiplier", [None, 0.0, 1.0])
def test_stock_delta_is_shares_whatever_the_multiplier(multiplier: float | None) -> None:
    # Client Portal reports multiplier 0.0 for stocks; ib_async an empty string (None here).
    (row,) = agg([stock(-250, multiplier=multiplier)], underlying_prices={"SPY": 10.0})
    assert greeks_of(row) == (-250.0, 0.0, 0.0, 0.0)
    assert row.dollar_delta == -2500.0


def test_etf_counts_as_stock() -> None:
    (row,) = agg([Leg(conid=5, symbol="QQQ", sec_type="ETF", quantity=40)])
    assert greeks_of(row) == (40.0, 0.0, 0.0, 0.0)


def test_futures_options_multiplier_50_with_future_hedge() -> None:
    legs = [
        opt(4, 0.3, 0.001, 2.5, -1.2, symbol="ES", multiplier=50.0, sec_type="FOP", conid=7),
        Leg(conid=8, symbol="ES", sec_type="FUT", quantity=-1, multiplier=50.0),
    ]
    (row,) = agg(legs, underlying_prices={"ES": 5000.0})
    # 4*50*0.3 = 60 option delta, -1*50 future delta.
    assert greeks_of(row) == pytest.approx((10.0, 0.2, 500.0, -240.0))
    assert row.dollar_delta == pytest.approx(50_000.0)
    assert row.legs == 2


def test_option_multiplier_missing_counts_as_one() -> None:
    (row,) = agg([opt(3, 0.5, 0.1, 0.2, -0.3, multiplier=None)])
    assert greeks_of(row) == pytest.approx((1.5, 0.3, 0.6, -0.9))


# --- missing data -----------------------------------------------------------------------


def test_vega_sentinel_is_never_summed() -> None:
    legs = [
        opt(2, 0.5, 0.02, 0.15, -0.05, conid=1),
        opt(1, 0.25, 0.01, -2.0, -0.03, conid=2),  # IB's sentinel, as ib_async passes it on
    ]
    (row,) = agg(legs)
    assert row.vega is None
    assert (row.delta, row.gamma, row.theta) == pytest.approx((125.0, 5.0, -13.0))
    assert (row.legs, row.legs_missing) == (2, 1)


@pytest.mark.parametrize("bad", [None, -2.0, NAN, INF, -INF, DBL_MAX])
@pytest.mark.parametrize("column", GREEKS)
def test_any_bad_greek_nulls_only_its_column(column: str, bad: float | None) -> None:
    good = {"delta": 0.5, "gamma": 0.02, "vega": 0.15, "theta": -0.05}
    broken = opt(1, *[bad if name == column else good[name] for name in GREEKS], conid=2)
    (row,) = agg([opt(2, *good.values(), conid=1), broken, stock(10)])
    expected = {"delta": 160.0, "gamma": 6.0, "vega": 45.0, "theta": -15.0}
    for name in GREEKS:
        if name == column:
            assert getattr(row, name) is None
        else:
            assert getattr(row, name) == pytest.approx(expected[name])
    assert row.legs_missing == 1
    if column == "delta":
        assert row.dollar_delta is None


def test_legs_missing_counts_legs_not_greeks() -> None:
    legs = [opt(1, None, None, None, None, conid=1), opt(1, 0.5, -2.0, 0.1, -0.1, conid=2)]
    (row,) = agg(legs)
    assert greeks_of(row) == (None, None, None, None)
    assert (row.legs, row.legs_missing) == (2, 2)


def test_stock_leg_greek_fields_are_irrelevant() -> None:
    # A stock's Greeks are defined; whatever the feed left in its fields is not read.
    leg = Leg(conid=1, symbol="SPY", sec_type="STK", quantity=5, delta=NAN, vega=-2.0)
    (row,) = agg([leg])
    assert greeks_of(row) == (5.0, 0.0, 0.0, 0.0)
    assert row.legs_missing == 0


def test_zero_quantity_legs_are_ignored() -> None:
    closed = opt(0, NAN, -2.0, None, DBL_MAX, conid=3)
    (row,) = agg([opt(1, 0.5, 0.02, 0.15, -0.05, conid=1), closed, stock(0)])
    assert greeks_of(row) == pytest.approx((50.0, 2.0, 15.0, -5.0))
    assert (row.legs, row.legs_missing) == (1, 0)


def test_unsupported_sec_types_are_skipped() -> None:
    cash = Leg(conid=9, symbol="EUR", sec_type="CASH", quantity=10_000)
    rows = agg([stock(10), cash])
    assert [r.contract for r in rows] == [PORTFOLIO]
    assert rows[0].delta == 10.0
    assert rows[0].legs == 1


def test_no_open_leg_raises_so_the_feed_chooses() -> None:
    with pytest.raises(ValueError, match="flat_row"):
        agg([])
    with pytest.raises(ValueError, match="flat_row"):
        agg([stock(0), opt(0, 0.5, 0.1, 0.1, -0.1)])


def test_flat_row() -> None:
    row = flat_row("DU123456", TS, "PORTAL")
    assert row.contract == PORTFOLIO
    assert greeks_of(row) == (0.0, 0.0, 0.0, 0.0)
    assert row.dollar_delta == 0.0
    assert row.underlying_price is None
    assert (row.legs, row.legs_missing) == (0, 0)
    assert row.key == flat_row("DU123456", TS, "PORTAL").key
    assert row.key != flat_row("DU123456", TS + timedelta(seconds=5), "PORTAL").key
    assert record_from_json(record_to_json(row)) == row


# --- underlying prices and several underlyings ------------------------------------------


def test_underlying_price_from_legs_is_order_independent() -> None:
    legs = [
        opt(1, 0.5, 0.02, 0.15, -0.05, conid=20, und=501.0),
        opt(1, 0.5, 0.02, 0.15, -0.05, conid=10, und=500.0),
        opt(1, 0.5, 0.02, 0.15, -0.05, conid=5, und=-1.0),  # IB's undPrice sentinel
    ]
    for order in (legs, legs[::-1]):
        (row,) = agg(order)
        assert row.underlying_price == 500.0
        assert row.dollar_delta == pytest.approx(150.0 * 500.0)


def test_given_price_wins_and_bad_given_price_falls_back() -> None:
    legs = [opt(1, 0.5, 0.02, 0.15, -0.05, und=500.0)]
    assert agg(legs, underlying_prices={"SPY": 505.0})[0].underlying_price == 505.0
    assert agg(legs, underlying_prices={"SPY": NAN})[0].underlying_price == 500.0
    assert agg(legs, underlying_prices={"QQQ": 400.0})[0].underlying_price == 500.0
    (row,) = agg([stock(5)], underlying_prices={"SPY": -1.0})
    assert row.underlying_price is None
    assert row.dollar_delta is None
    assert row.delta == 5.0


def test_several_underlyings() -> None:
    legs = [
        opt(2, 0.5, 0.02, 0.15, -0.05, symbol="SPY", conid=1),
        stock(-100, symbol="AAPL", conid=2),
        opt(1, 0.4, 0.05, 0.1, -0.2, symbol="AAPL", conid=3),
    ]
    rows = agg(legs, underlying_prices={"SPY": 500.0, "AAPL": 200.0})
    assert [r.contract for r in rows] == [PORTFOLIO, "AAPL", "SPY"]
    portfolio, aapl, spy = rows
    assert greeks_of(aapl) == pytest.approx((-60.0, 5.0, 10.0, -20.0))
    assert aapl.underlying_price == 200.0
    assert aapl.dollar_delta == pytest.approx(-12_000.0)
    assert (aapl.legs, aapl.legs_missing) == (2, 0)
    assert greeks_of(spy) == pytest.approx((100.0, 4.0, 30.0, -10.0))
    assert spy.dollar_delta == pytest.approx(50_000.0)
    # PORTFOLIO: share deltas summed (mixed units), dollar delta is the real total.
    assert greeks_of(portfolio) == pytest.approx((40.0, 9.0, 40.0, -30.0))
    assert portfolio.underlying_price is None
    assert portfolio.dollar_delta == pytest.approx(38_000.0)
    assert (portfolio.legs, portfolio.legs_missing) == (3, 0)
    assert {r.timestamp for r in rows} == {TS}
    assert len({r.key for r in rows}) == 3


def test_missing_price_of_one_underlying_nulls_portfolio_dollar_delta_only() -> None:
    legs = [stock(10, symbol="SPY", conid=1), stock(20, symbol="AAPL", conid=2)]
    portfolio, aapl, spy = agg(legs, underlying_prices={"SPY": 500.0})
    assert spy.dollar_delta == 5000.0
    assert aapl.dollar_delta is None
    assert portfolio.dollar_delta is None
    assert portfolio.delta == 30.0


def test_missing_greek_in_one_underlying() -> None:
    legs = [
        opt(1, 0.5, 0.02, -2.0, -0.05, symbol="SPY", conid=1),
        opt(1, 0.4, 0.05, 0.1, -0.2, symbol="AAPL", conid=3),
    ]
    portfolio, aapl, spy = agg(legs)
    assert spy.vega is None
    assert aapl.vega == pytest.approx(10.0)
    assert portfolio.vega is None
    assert portfolio.delta == pytest.approx(90.0)
    assert (portfolio.legs_missing, aapl.legs_missing, spy.legs_missing) == (1, 0, 1)


# --- keys -------------------------------------------------------------------------------


def test_keys_are_deterministic_per_tick() -> None:
    legs = [stock(10, symbol="SPY", conid=1), stock(20, symbol="AAPL", conid=2)]
    first = agg(legs)
    again = agg(list(reversed(legs)))
    assert [r.key for r in first] == [r.key for r in again]
    later = aggregate(
        legs, account="DU123456", timestamp=TS + timedelta(seconds=5), api_mode="SOCKET"
    )
    other_mode = aggregate(legs, account="DU123456", timestamp=TS, api_mode="PORTAL")
    other_account = aggregate(legs, account="U7654321", timestamp=TS, api_mode="SOCKET")
    keys = {r.key for rows in (first, later, other_mode, other_account) for r in rows}
    assert len(keys) == 12


def test_key_depends_on_the_instant_not_its_offset() -> None:
    eastern = TS.astimezone(timezone(timedelta(hours=-5)))
    assert row_key("A", PORTFOLIO, eastern, "SOCKET") == row_key("A", PORTFOLIO, TS, "SOCKET")
    with pytest.raises(ValueError, match="aware"):
        row_key("A", PORTFOLIO, TS.replace(tzinfo=None), "SOCKET")


def test_key_fields_cannot_bleed_into_each_other() -> None:
    assert row_key("a|b", "c", TS, "SOCKET") != row_key("a", "b|c", TS, "SOCKET")


# --- properties -------------------------------------------------------------------------

SYMBOLS = ("AAPL", "ES", "QQQ", "SPY")
PRICES = {"AAPL": 200.0, "ES": 5000.0, "QQQ": 400.0, "SPY": 500.0}


@st.composite
def leg_st(draw: st.DrawFn, conid: int) -> Leg:
    symbol = draw(st.sampled_from(SYMBOLS))
    sec_type = draw(st.sampled_from(["OPT", "OPT", "FOP", "STK", "ETF", "FUT"]))
    multiplier = draw(st.sampled_from([None, 0.0, 1.0, 50.0, 100.0]))
    return Leg(
        conid=conid,
        symbol=symbol,
        sec_type=sec_type,
        quantity=draw(st.integers(-50, 50)),
        multiplier=multiplier,
        delta=draw(st.floats(-1, 1)),
        gamma=draw(st.floats(0, 0.5)),
        vega=draw(st.floats(0, 3)),
        theta=draw(st.floats(-1.99, 0)),
        underlying_price=draw(st.floats(1, 6000)),
    )


@st.composite
def legs_st(draw: st.DrawFn) -> list[Leg]:
    n = draw(st.integers(1, 12))
    legs = [draw(leg_st(conid)) for conid in range(1, n + 1)]
    assume(any(leg.quantity != 0 for leg in legs))
    return legs


def reference_delta(legs: list[Leg], symbol: str) -> float:
    """Independent, naive restatement of the rules for one underlying."""
    total = 0.0
    for leg in legs:
        if leg.symbol != symbol:
            continue
        mult = 1.0 if not leg.multiplier else leg.multiplier
        if leg.sec_type in ("OPT", "FOP"):
            assert leg.delta is not None
            total += leg.quantity * mult * leg.delta
        elif leg.sec_type == "FUT":
            total += leg.quantity * mult
        else:
            total += leg.quantity
    return total


@given(legs_st(), st.booleans())
def test_portfolio_is_consistent_with_per_underlying_rows(legs: list[Leg], give: bool) -> None:
    rows = agg(legs, underlying_prices=PRICES if give else None)
    portfolio, *per_underlying = rows
    symbols = sorted({leg.symbol for leg in legs if leg.quantity != 0})
    assert portfolio.contract == PORTFOLIO
    if len(symbols) == 1:
        assert per_underlying == []
        per_underlying = [attrs.evolve(portfolio, contract=symbols[0])]
    assert [r.contract for r in per_underlying] == symbols
    for row in per_underlying:
        assert row.delta == pytest.approx(reference_delta(legs, row.contract), abs=1e-9)
        assert row.underlying_price is not None
        if give:
            assert row.underlying_price == PRICES[row.contract]
    assert portfolio.legs == sum(r.legs for r in per_underlying)
    assert portfolio.legs_missing == 0
    for name in GREEKS:
        total = sum(getattr(r, name) for r in per_underlying)
        assert getattr(portfolio, name) == pytest.approx(total, abs=1e-9)
    expected_dollar = 0.0
    for row in per_underlying:
        assert row.delta is not None
        assert row.underlying_price is not None
        expected_dollar += row.delta * row.underlying_price
    assert portfolio.dollar_delta == pytest.approx(expected_dollar, rel=1e-9, abs=1e-6)
    assert {r.timestamp for r in rows} == {TS}


@given(legs_st(), st.randoms(use_true_random=False))
def test_order_of_legs_never_changes_the_result(legs: list[Leg], rnd: random.Random) -> None:
    shuffled = list(legs)
    rnd.shuffle(shuffled)
    # fsum makes the sums order-independent to the last bit, keys included.
    assert agg(shuffled) == agg(legs)


@given(
    legs_st(),
    st.data(),
    st.sampled_from(GREEKS),
    st.sampled_from([None, -2.0, NAN, INF, -INF, DBL_MAX]),
)
def test_a_missing_greek_nulls_that_column(
    legs: list[Leg], data: st.DataObject, column: str, bad: float | None
) -> None:
    options = [i for i, leg in enumerate(legs) if leg.sec_type in ("OPT", "FOP") and leg.quantity]
    assume(options)
    index = data.draw(st.sampled_from(options))
    broken = list(legs)
    change: dict[str, Any] = {column: bad}
    broken[index] = attrs.evolve(legs[index], **change)
    symbol = legs[index].symbol
    rows = {r.contract: r for r in agg(broken)}
    assert getattr(rows[PORTFOLIO], column) is None
    assert rows[PORTFOLIO].legs_missing == 1
    if symbol in rows:
        assert getattr(rows[symbol], column) is None
    for contract, row in rows.items():
        others = [name for name in GREEKS if name != column]
        assert all(getattr(row, name) is not None for name in others), contract
        if contract not in (PORTFOLIO, symbol):
            assert getattr(row, column) is not None


@given(
    account=st.text(),
    contract=st.text(),
    api_mode=st.text(),
    timestamp=st.datetimes(timezones=st.sampled_from([UTC, ZoneInfo("America/New_York")])),
)
def test_row_key_is_uuid5_of_the_json_name(
    account: str, contract: str, api_mode: str, timestamp: datetime
) -> None:
    """row_key builds uuid5 by hand (for speed): the same key, for any text (non-ASCII,
    surrogates escaped by JSON) and any offset."""
    name = json.dumps([account, contract, timestamp.astimezone(UTC).isoformat(), api_mode])
    assert row_key(account, contract, timestamp, api_mode) == uuid.uuid5(_KEY_NAMESPACE, name).hex
