"""The simulators' portfolio model: Black-Scholes, positions, random walk, loading."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import attrs
import pytest

from ibkr_bridge.sim.portfolio import (
    ES_CONID,
    SPY_CONID,
    Instrument,
    Portfolio,
    Position,
    PositionChange,
    black_scholes,
    default_portfolio,
    load_portfolio,
    portfolio_from_dict,
    resolve_expiry,
    single_underlying_portfolio,
)

NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "portfolio.json"


# -- Black-Scholes ------------------------------------------------------------------------


def test_black_scholes_matches_textbook_values() -> None:
    # Hull's classic example: S=K=100, t=1, r=5%, vol=20% -> call 10.4506, put 5.5735.
    call = black_scholes(100.0, 100.0, 1.0, 0.2, 0.05, "C")
    put = black_scholes(100.0, 100.0, 1.0, 0.2, 0.05, "P")
    assert call.option_price == pytest.approx(10.4506, abs=1e-4)
    assert put.option_price == pytest.approx(5.5735, abs=1e-4)
    assert call.delta == pytest.approx(0.6368, abs=1e-4)
    assert call.implied_vol == 0.2
    assert call.underlying_price == 100.0


@pytest.mark.parametrize(
    ("spot", "strike", "t", "vol", "rate"),
    [
        (600.0, 580.0, 0.1, 0.18, 0.04),
        (6000.0, 6100.0, 0.25, 0.16, 0.03),
        (50.0, 70.0, 2.0, 0.5, 0),
    ],
)
def test_put_call_parity_and_delta_relation(
    spot: float, strike: float, t: float, vol: float, rate: float
) -> None:
    call = black_scholes(spot, strike, t, vol, rate, "C")
    put = black_scholes(spot, strike, t, vol, rate, "P")
    assert call.option_price - put.option_price == pytest.approx(
        spot - strike * math.exp(-rate * t), rel=1e-9, abs=1e-9
    )
    assert call.delta - put.delta == pytest.approx(1.0)
    assert call.gamma == pytest.approx(put.gamma)
    assert call.vega == pytest.approx(put.vega)


@pytest.mark.parametrize("right", ["C", "P"])
def test_greeks_are_the_derivatives_of_the_price_in_ibkr_units(right: str) -> None:
    spot, strike, t, vol, rate = 600.0, 590.0, 30 / 365, 0.18, 0.04

    def price(s: float = spot, tt: float = t, v: float = vol) -> float:
        return black_scholes(s, strike, tt, v, rate, right).option_price

    g = black_scholes(spot, strike, t, vol, rate, right)
    h = 0.01
    assert g.delta == pytest.approx((price(spot + h) - price(spot - h)) / (2 * h), rel=1e-5)
    gamma = (price(spot + 1) - 2 * price() + price(spot - 1)) / 1.0
    assert g.gamma == pytest.approx(gamma, rel=1e-3)
    # vega per volatility point: the price change for +0.01 vol
    assert g.vega == pytest.approx((price(v=vol + 1e-4) - price(v=vol - 1e-4)) / 2e-4 / 100, 1e-5)
    # theta per calendar day: the price change as one day passes (negative for a long option)
    day = 1 / 365
    assert g.theta == pytest.approx((price(tt=t - day / 100) - price()) * 100, rel=1e-3)
    assert g.theta < 0


def test_expired_option_is_worth_intrinsic() -> None:
    itm_call = black_scholes(610.0, 600.0, 0.0, 0.2, 0.04, "C")
    otm_put = black_scholes(610.0, 600.0, -0.1, 0.2, 0.04, "P")
    assert (itm_call.option_price, itm_call.delta, itm_call.gamma) == (10.0, 1.0, 0.0)
    assert (otm_put.option_price, otm_put.delta, otm_put.vega) == (0.0, 0.0, 0.0)


def test_black_scholes_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="right"):
        black_scholes(100.0, 100.0, 1.0, 0.2, 0.0, "X")
    with pytest.raises(ValueError, match="positive"):
        black_scholes(0.0, 100.0, 1.0, 0.2, 0.0, "C")


# -- instruments --------------------------------------------------------------------------


def test_instrument_defaults_follow_ibkr_symbology() -> None:
    opt = Instrument(1, "SPY", "OPT", expiry="20260320", strike=600.0, right="C",
                     multiplier=100.0, underlying_conid=2)  # fmt: skip
    fut = Instrument(3, "ES", "FUT", exchange="CME", expiry="20260320", multiplier=50.0)
    stk = Instrument(2, "SPY", "STK")
    assert opt.local_symbol == "SPY   260320C00600000"
    assert fut.local_symbol == "ESH6"
    assert (stk.local_symbol, stk.trading_class, stk.wire_multiplier) == ("SPY", "SPY", "")
    assert opt.wire_multiplier == "100"
    # 16:00 New York; US daylight saving time began on 8 March 2026, so 20:00 UTC
    assert opt.expires_at() == datetime(2026, 3, 20, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sec_type": "OPT", "strike": 1.0, "right": "C", "underlying_conid": 2},  # no expiry
        {"sec_type": "OPT", "expiry": "20260320", "right": "C", "underlying_conid": 2},
        {"sec_type": "OPT", "expiry": "20260320", "strike": 1.0, "right": "C"},  # no underlying
        {"sec_type": "FUT"},
        {"sec_type": "BOND"},
        {"sec_type": "STK", "expiry": "2026-03-20"},
    ],
)
def test_instrument_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case fails a different check)
        Instrument(1, "X", **kwargs)  # type: ignore[arg-type]


# -- portfolio ----------------------------------------------------------------------------


def test_default_portfolio_has_shorts_and_es_futures_options() -> None:
    p = default_portfolio(as_of=NOW)
    by_symbol = {(pos.instrument.symbol, pos.instrument.sec_type) for pos in p.positions()}
    assert by_symbol == {("SPY", "STK"), ("SPY", "OPT"), ("ES", "FOP")}
    fops = [pos for pos in p.positions() if pos.instrument.sec_type == "FOP"]
    assert {pos.instrument.multiplier for pos in fops} == {50.0}
    assert all(pos.instrument.underlying_conid == ES_CONID for pos in fops)
    assert any(pos.quantity < 0 for pos in p.positions())
    assert p.accounts == ("DU1234567",)
    for pos in p.positions():
        if pos.instrument.is_option:
            t = p.time_to_expiry(pos.conid, NOW)
            assert t is not None
            assert 20 / 365 < t < 70 / 365


def test_single_underlying_portfolio_is_spy_only() -> None:
    p = single_underlying_portfolio(as_of=NOW)
    assert {pos.instrument.symbol for pos in p.positions()} == {"SPY"}
    assert {p.underlying_conid(pos.conid) for pos in p.positions()} == {SPY_CONID}


def test_greeks_use_time_to_the_16h_new_york_expiry() -> None:
    p = single_underlying_portfolio(as_of=NOW)
    opt = next(pos.instrument for pos in p.positions() if pos.instrument.right == "P")
    assert opt.expiry is not None
    assert opt.strike is not None
    expiry = datetime.strptime(opt.expiry, "%Y%m%d").replace(
        hour=16, tzinfo=ZoneInfo("America/New_York")
    )
    later = NOW + timedelta(days=3, hours=5)
    t = (expiry - later).total_seconds() / (365 * 86400)
    expected = black_scholes(p.spot(SPY_CONID), opt.strike, t, 0.18, p.rate, "P")
    assert p.greeks(opt.conid, later) == expected
    assert p.price(opt.conid, later) == expected.option_price
    # without `now` the valuation time is as_of
    assert p.greeks(opt.conid) == p.greeks(opt.conid, NOW) != expected


def test_non_options_have_no_greeks_and_price_at_spot() -> None:
    p = default_portfolio(as_of=NOW)
    assert p.greeks(SPY_CONID, NOW) is None
    assert p.greeks(ES_CONID, NOW) is None
    assert p.price(ES_CONID) == 6000.0
    p.set_spot(ES_CONID, 6010.5)
    assert p.price(ES_CONID) == 6010.5


def test_market_value_and_pnl_use_the_multiplier() -> None:
    p = default_portfolio(as_of=NOW)
    short_call = next(pos for pos in p.positions() if pos.instrument.local_symbol.endswith("C6100"))
    price = p.price(short_call.conid, NOW)
    assert p.market_value(short_call, NOW) == pytest.approx(-1 * price * 50)
    assert p.unrealized_pnl(short_call, NOW) == pytest.approx(-price * 50 + short_call.avg_cost)
    stock = p.position("DU1234567", SPY_CONID)
    assert stock is not None
    assert p.market_value(stock, NOW) == 100 * 600.0


def test_random_walk_is_reproducible_from_the_seed() -> None:
    a, b, c = (default_portfolio(as_of=NOW, seed=s) for s in (7, 7, 8))
    for _ in range(50):
        for p in (a, b, c):
            p.step(1.0)
    assert a.snapshot().spots == b.snapshot().spots
    assert a.snapshot().spots != c.snapshot().spots
    assert a.as_of == NOW + timedelta(seconds=50)
    # after reseeding, both draw the same shocks: equal growth from different levels
    a_before, c_before = a.spot(SPY_CONID), c.spot(SPY_CONID)
    a.reseed(8)
    c.reseed(8)
    a.step(60.0, now=NOW)
    c.step(60.0, now=NOW)
    assert a.spot(SPY_CONID) / a_before == pytest.approx(c.spot(SPY_CONID) / c_before, 1e-12)
    assert a.spot(SPY_CONID) != a_before
    assert a.as_of == NOW


def test_random_walk_has_the_configured_volatility() -> None:
    p = single_underlying_portfolio(as_of=NOW, seed=3)
    dt = 3600.0
    returns = []
    for _ in range(4000):
        before = p.spot(SPY_CONID)
        p.step(dt)
        returns.append(math.log(p.spot(SPY_CONID) / before))
    mean = sum(returns) / len(returns)
    var = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    annualised = math.sqrt(var / (dt / (365 * 86400)))
    assert annualised == pytest.approx(0.18, rel=0.05)


def test_zero_step_does_not_move_prices() -> None:
    p = default_portfolio(as_of=NOW)
    before = p.snapshot().spots
    p.step(0.0)
    assert p.snapshot().spots == before


def test_position_changes_notify_listeners() -> None:
    p = default_portfolio(as_of=NOW)
    seen: list[PositionChange] = []
    unsubscribe = p.subscribe(seen.append)
    old = p.position("DU1234567", SPY_CONID)
    new = p.set_position("DU1234567", SPY_CONID, 250)
    assert old is not None
    assert new is not None
    assert (new.quantity, new.avg_cost) == (250.0, old.avg_cost)
    assert seen == [PositionChange("DU1234567", SPY_CONID, old, new)]
    removed = p.remove_position("DU1234567", SPY_CONID)
    assert removed == new
    assert p.position("DU1234567", SPY_CONID) is None
    assert seen[-1] == PositionChange("DU1234567", SPY_CONID, new, None)
    unsubscribe()
    p.set_position("DU1234567", SPY_CONID, 10, 600.0)
    assert len(seen) == 2
    with pytest.raises(ValueError, match="unknown account"):
        p.set_position("U999", SPY_CONID, 1)


def test_new_position_in_a_new_option_costs_the_model_price() -> None:
    p = single_underlying_portfolio(as_of=NOW)
    opt = Instrument(900, "SPY", "OPT", expiry="20260220", strike=610.0, right="C",
                     multiplier=100.0, underlying_conid=SPY_CONID)  # fmt: skip
    pos = p.set_position("DU1234567", opt, -4)
    assert pos is not None
    assert pos.avg_cost == pytest.approx(p.price(900) * 100)
    assert p.instrument(900) == opt


def test_option_without_underlying_price_is_rejected() -> None:
    orphan = Instrument(5, "QQQ", "OPT", expiry="20260220", strike=500.0, right="P",
                        multiplier=100.0, underlying_conid=6)  # fmt: skip
    with pytest.raises(ValueError, match="no spot"):
        Portfolio(["A"], [orphan])


def test_snapshot_is_immutable_and_detached() -> None:
    p = default_portfolio(as_of=NOW)
    snap = p.snapshot()
    with pytest.raises(TypeError):
        snap.spots[SPY_CONID] = 1.0  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snap.rate = 0.0  # type: ignore[misc]
    p.step(86400.0)
    p.set_position("DU1234567", SPY_CONID, 0)
    assert snap.spots[SPY_CONID] == 600.0
    assert any(pos.conid == SPY_CONID for pos in snap.positions)


def test_find_instruments_matches_like_ibkr() -> None:
    p = default_portfolio(as_of=NOW)
    month = next(i.expiry for i in p.instruments() if i.sec_type == "FOP")
    assert month is not None
    found = p.find_instruments(symbol="ES", sec_type="FOP", expiry=month[:6], right="CALL")
    assert [i.strike for i in found] == [6100.0]
    assert len(p.find_instruments(symbol="SPY", sec_type="OPT")) == 3
    assert p.find_instruments(symbol="SPY", sec_type="OPT", strike=123.0) == []


# -- loading ------------------------------------------------------------------------------


def test_resolve_expiry() -> None:
    monday = datetime(2026, 1, 5, 15, tzinfo=UTC)
    assert resolve_expiry("+30d", monday) == "20260206"  # 4 Feb is a Wednesday -> Friday 6th
    assert resolve_expiry("+4d", monday) == "20260109"  # a Friday stays
    assert resolve_expiry("20261218", monday) == "20261218"


def test_example_file_loads_and_matches_the_demo() -> None:
    p = load_portfolio(EXAMPLE, as_of=NOW)
    demo = default_portfolio(as_of=NOW)
    assert p.accounts == ("DU1234567",)
    assert {(x.conid, x.quantity) for x in p.positions()} == {
        (x.conid, x.quantity) for x in demo.positions()
    }
    assert p.cash("DU1234567") == 250000.0
    for pos in p.positions():
        assert pos.instrument == demo.instrument(pos.conid)


def test_toml_and_json_load_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'accounts = ["U1"]\nrate = 0.01\n'
        "[[instruments]]\nconid = 1\nsymbol = 'X'\nsec_type = 'STK'\nspot = 10.0\n"
        "[[instruments]]\nconid = 2\nsymbol = 'X'\nsec_type = 'OPT'\nunderlying_conid = 1\n"
        "expiry = '+10d'\nstrike = 10\nright = 'P'\nmultiplier = 100\n"
        "[[positions]]\nconid = 2\nquantity = -1\navg_cost = 55.0\n"
    )
    from_toml = load_portfolio(toml, as_of=NOW)
    data = {
        "accounts": ["U1"],
        "rate": 0.01,
        "instruments": [
            {"conid": 1, "symbol": "X", "sec_type": "STK", "spot": 10.0},
            {"conid": 2, "symbol": "X", "sec_type": "OPT", "underlying_conid": 1,
             "expiry": "+10d", "strike": 10, "right": "P", "multiplier": 100},
        ],
        "positions": [{"conid": 2, "quantity": -1, "avg_cost": 55.0}],
    }  # fmt: skip
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(data))
    from_json = load_portfolio(as_json, as_of=NOW)
    assert from_toml.positions() == from_json.positions()
    assert from_toml.positions()[0] == Position("U1", from_json.instrument(2), -1.0, 55.0)
    assert from_toml.rate == 0.01
    assert from_toml.greeks(2) == from_json.greeks(2)


def test_loading_rejects_unknown_keys_and_conids() -> None:
    with pytest.raises(ValueError, match="unknown instrument keys"):
        portfolio_from_dict({"instruments": [{"conid": 1, "symbol": "X", "sec_type": "STK",
                                              "sopt": 1.0}]})  # fmt: skip
    with pytest.raises(ValueError, match="unknown conid"):
        portfolio_from_dict({"positions": [{"conid": 9, "quantity": 1, "avg_cost": 1}]})
