"""Per-position rows sum to the net rows of the same snapshot, per account and in all;
model Greeks fill the legs IB has not computed (BRIDGE_GREEKS_FALLBACK=model)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TypedDict, Unpack

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_bridge.core import pricing
from ibkr_bridge.core.greeks import (
    ALL_ACCOUNTS,
    PORTFOLIO,
    Leg,
    PositionRow,
    aggregate,
    aggregate_accounts,
    apply_model,
    needs_model,
    position_rows,
    years_to_expiry,
)
from ibkr_bridge.core.greeks._model import EXPIRY_CLOCK_TIME, NEW_YORK
from tests.core.test_pricing import _quantlib, close

NOW = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)
greek = st.floats(-5.0, 5.0, allow_nan=False)
positive = st.floats(0.0, 3.0, allow_nan=False)


@st.composite
def legs(draw: st.DrawFn) -> Leg:
    sec_type = draw(st.sampled_from(["STK", "OPT", "FOP", "FUT", "ETF"]))
    option = sec_type in ("OPT", "FOP")
    return Leg(
        conid=draw(st.integers(1, 10_000)),
        symbol=draw(st.sampled_from(["SPY", "ES", "QQQ"])),
        sec_type=sec_type,
        quantity=draw(st.integers(-50, 50).filter(bool)),
        multiplier=draw(st.sampled_from([None, 1.0, 50.0, 100.0])),
        delta=draw(greek) if option else None,
        gamma=draw(positive) if option else None,
        vega=draw(positive) if option else None,
        theta=draw(greek) if option else None,
        underlying_price=draw(st.floats(1.0, 5000.0)),
        account=draw(st.sampled_from(["U1", "U2"])),
    )


def _net(rows: list[PositionRow], account: str) -> dict[str, float | None]:
    """What a dashboard's SUM over the legs gives (None where a leg has no figure)."""
    out: dict[str, list[float | None]] = defaultdict(list)
    for row in rows:
        if account in (ALL_ACCOUNTS, row.account):
            for name in ("delta", "gamma", "vega", "theta"):
                out[name].append(getattr(row, name))
    return {
        name: None if None in values else math.fsum(v for v in values if v is not None)
        for name, values in out.items()
    }


@given(st.lists(legs(), min_size=1, max_size=30, unique_by=lambda leg: (leg.account, leg.conid)))
def test_position_rows_sum_to_each_accounts_net_row(book: list[Leg]) -> None:
    accounts = sorted({leg.account for leg in book})
    nets = aggregate_accounts(book, timestamp=NOW, api_mode="SOCKET", accounts=accounts)
    rows = position_rows(book, timestamp=NOW, api_mode="SOCKET")
    assert {row.timestamp for row in rows} == {NOW}
    portfolio = {row.account: row for row in nets if row.contract == PORTFOLIO}
    expected = accounts if len(accounts) == 1 else [*accounts, ALL_ACCOUNTS]
    assert sorted(portfolio) == sorted(expected)
    for account, net in portfolio.items():
        legsum = _net(rows, account)
        for name in ("delta", "gamma", "vega", "theta"):
            want, got = getattr(net, name), legsum[name]
            if want is None:  # a leg without that Greek (IB's sentinel): NULL in both
                assert got is None
            else:
                assert got is not None
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (account, name)


def test_one_account_is_exactly_aggregate() -> None:
    book = [Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100, account="U1")]
    assert aggregate_accounts(book, timestamp=NOW, api_mode="SOCKET") == aggregate(
        book, account="U1", timestamp=NOW, api_mode="SOCKET"
    )


def test_a_flat_account_among_several_gets_a_zero_row() -> None:
    book = [Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100, account="U1")]
    rows = aggregate_accounts(book, timestamp=NOW, api_mode="SOCKET", accounts=["U1", "U2"])
    by = {(r.account, r.contract): r for r in rows}
    assert by["U2", PORTFOLIO].delta == 0.0
    assert by["U1", PORTFOLIO].delta == 100.0
    assert by[ALL_ACCOUNTS, PORTFOLIO].delta == 100.0
    assert len({r.key for r in rows}) == len(rows)


def test_omitted_leg_has_no_greeks_in_its_position_row() -> None:
    leg = Leg(
        conid=7,
        symbol="SPY",
        sec_type="OPT",
        quantity=2,
        multiplier=100.0,
        delta=0.5,
        gamma=0.01,
        vega=0.2,
        theta=-0.1,
    )
    (row,) = position_rows([leg], timestamp=NOW, api_mode="SOCKET", omit={7})
    assert (row.delta, row.greeks_source) == (None, None)
    (row,) = position_rows([leg], timestamp=NOW, api_mode="SOCKET")
    assert (row.delta, row.unit_delta, row.greeks_source) == (100.0, 0.5, "ib")


def _expiry_in(days: int) -> tuple[str, datetime]:
    """An expiry date and a 'now' exactly ``days`` * 24 h before its 16:00 New York."""
    day = (NOW + timedelta(days=days)).date()
    expires = datetime.combine(day, EXPIRY_CLOCK_TIME, tzinfo=NEW_YORK).astimezone(UTC)
    return day.strftime("%Y%m%d"), expires - timedelta(days=days)


class _ModelInputs(TypedDict, total=False):
    """What a test adds to a sentinel leg for the model fallback."""

    implied_vol: float
    option_price: float


def _sentinel_leg(sec_type: str, expiry: str, **kw: Unpack[_ModelInputs]) -> Leg:
    return Leg(
        conid=9,
        symbol="SPY",
        sec_type=sec_type,
        quantity=-3,
        multiplier=100.0,
        delta=-2.0,
        gamma=-2.0,
        vega=-2.0,
        theta=-2.0,
        strike=500.0,
        right="P",
        expiry=expiry,
        underlying_price=480.0,
        **kw,
    )


@pytest.mark.parametrize("sec_type", ["OPT", "FOP"])
@pytest.mark.parametrize("days", [3, 30, 400])
def test_model_greeks_of_a_sentinel_leg_match_quantlib(sec_type: str, days: int) -> None:
    expiry, now = _expiry_in(days)
    leg = _sentinel_leg(sec_type, expiry, implied_vol=0.31)
    assert needs_model(leg)
    (got,), omit = apply_model([leg], now=now, rate=0.04, omit={9})
    assert omit == frozenset()
    assert (got.greeks_source, got.ib_sentinels) == ("model", False)
    assert years_to_expiry(expiry, now) == pytest.approx(days / 365, rel=1e-15)
    want = _quantlib(sec_type == "FOP", 480.0, 500.0, days, 0.31, 0.04, 0.0, "P")
    for a, b in zip((got.delta, got.gamma, got.vega, got.theta), want[1:], strict=True):
        assert a is not None
        assert close(a, b, 1e-9, 1e-15 * 480)
    (row,) = position_rows([got], timestamp=now, api_mode="SOCKET")
    assert row.greeks_source == "model"
    assert row.delta == pytest.approx(-300 * want[1], rel=1e-9)


def test_model_implies_the_volatility_from_the_mid_when_ib_has_none() -> None:
    expiry, now = _expiry_in(45)
    t = years_to_expiry(expiry, now)
    assert t is not None
    mid = pricing.black_scholes(480.0, 500.0, t, 0.27, 0.04, "P")
    assert mid is not None
    (got,), _ = apply_model(
        [_sentinel_leg("OPT", expiry, option_price=mid.price)], now=now, rate=0.04
    )
    assert got.implied_vol == pytest.approx(0.27, rel=1e-9)
    assert got.delta == pytest.approx(mid.delta, rel=1e-9)


def test_model_leaves_a_leg_missing_without_its_inputs() -> None:
    expiry, now = _expiry_in(45)
    for leg in (
        _sentinel_leg("OPT", expiry),  # no IV, no mid
        _sentinel_leg("OPT", "202712", implied_vol=0.3),  # a month code: no exact expiry
        _sentinel_leg("OPT", "20200101", implied_vol=0.3),  # expired
    ):
        (got,), omit = apply_model([leg], now=now, rate=0.04, omit={9})
        assert got is leg
        assert omit == {9}


def test_ib_greeks_are_kept_when_present() -> None:
    leg = Leg(
        conid=5,
        symbol="SPY",
        sec_type="OPT",
        quantity=1,
        delta=0.4,
        gamma=0.01,
        vega=0.1,
        theta=-0.05,
        strike=500.0,
        right="C",
        expiry="20991217",
        implied_vol=0.2,
        underlying_price=500.0,
    )
    (got,), _ = apply_model([leg], now=NOW, rate=0.04)
    assert got is leg
    assert not needs_model(Leg(conid=1, symbol="SPY", sec_type="STK", quantity=1))


def test_the_net_row_counts_legs_by_source() -> None:
    expiry, now = _expiry_in(30)
    ib_leg = Leg(conid=5, symbol="SPY", sec_type="OPT", quantity=1, delta=0.4, gamma=0.01,
                 vega=0.1, theta=-0.05, underlying_price=480.0)  # fmt: skip
    legs, omit = apply_model(
        [ib_leg, _sentinel_leg("OPT", expiry, implied_vol=0.3)], now=now, rate=0.04
    )
    (row,) = aggregate(legs, account="U1", timestamp=now, api_mode="SOCKET", omit=omit)
    assert (row.legs, row.legs_missing, row.legs_model) == (2, 0, 1)
    # Without the model the same leg is missing, never counted as the model's.
    (row,) = aggregate(
        [ib_leg, _sentinel_leg("OPT", expiry)], account="U1", timestamp=now, api_mode="SOCKET"
    )
    assert (row.legs, row.legs_missing, row.legs_model) == (2, 1, 0)
