"""rows_from_legs with BRIDGE_GREEKS_FALLBACK=model: which legs the model prices, and when."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Unpack

import pytest

from ibkr_bridge.core import pricing
from ibkr_bridge.core.greeks import (
    GreekFields,
    GreeksRule,
    Leg,
    LegGreeks,
    LegsVerdict,
    years_to_expiry,
)
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds._rows import rows_from_legs

NOW = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
SKIP = GreeksRule(stale_after=15.0, leg_grace=30.0)
MODEL = GreeksRule(stale_after=15.0, leg_grace=30.0, model=True, risk_free_rate=0.04)
PRICES = {"SPY": 600.0}


def call(conid: int = 1, **greeks: Unpack[GreekFields]) -> Leg:
    return Leg(
        conid=conid,
        symbol="SPY",
        sec_type="OPT",
        quantity=2,
        multiplier=100.0,
        right="C",
        strike=610.0,
        expiry="20260417",
        implied_vol=0.2,
        **greeks,
    )


def rows(
    rule: GreeksRule, legs: list[Leg], judged: list[LegGreeks], farms: tuple[str, ...] = ()
) -> tuple[LegsVerdict, list[GreeksRow] | None]:
    verdict, out, _ = rows_from_legs(
        legs,
        judged,
        rule,
        account="DU1",
        now=NOW,
        mode="SOCKET",
        prices=lambda: PRICES,
        broken_farms=farms,
    )
    return verdict, out


def model_delta() -> float:
    t = years_to_expiry("20260417", NOW)
    assert t is not None
    g = pricing.black_scholes(600.0, 610.0, t, 0.2, 0.04, "C")
    assert g is not None
    return 2 * 100.0 * g.delta


def test_a_leg_past_its_grace_without_greeks_is_modelled() -> None:
    judged = [LegGreeks(conid=1, name="SPY C", age=None, waited=31.0)]
    verdict, out = rows(SKIP, [call()], judged)
    assert out is None
    assert verdict.missing_conids == {1}
    verdict, out = rows(MODEL, [call()], judged)
    assert out is not None
    assert verdict.write
    assert not verdict.missing
    assert out[0].delta == pytest.approx(model_delta(), rel=1e-12)
    assert out[0].legs_model == 1
    assert verdict.legs == {1}


def test_a_leg_inside_its_grace_still_waits_for_ib() -> None:
    judged = [LegGreeks(conid=1, name="SPY C", age=None, waited=2.0)]
    verdict, out = rows(MODEL, [call()], judged)
    assert out is None
    assert verdict.waiting == {1}


def test_current_ib_greeks_are_kept_and_sentinels_are_replaced() -> None:
    judged = [
        LegGreeks(conid=1, name="a", age=1.0, waited=60.0),
        LegGreeks(conid=2, name="b", age=1.0, waited=60.0),
    ]
    legs = [
        call(1, delta=0.5, gamma=0.01, vega=0.3, theta=-0.1),
        call(2, delta=0.4, gamma=0.01, vega=-2.0, theta=-2.0),  # ib_async's "not computed"
    ]
    _, out = rows(MODEL, legs, judged)
    assert out is not None
    assert out[0].legs_model == 1  # only the incomplete one
    assert out[0].delta == pytest.approx(2 * 100 * 0.5 + model_delta(), rel=1e-12)


def test_broken_farms_with_the_model_still_write_and_say_stale() -> None:
    judged = [LegGreeks(conid=1, name="a", age=1.0, waited=60.0)]
    legs = [call(1, delta=0.5, gamma=0.01, vega=0.3, theta=-0.1)]
    verdict, out = rows(SKIP, legs, judged, farms=("usopt",))
    assert out is None
    verdict, out = rows(MODEL, legs, judged, farms=("usopt",))
    assert out is not None
    assert verdict.stale
    assert out[0].delta == pytest.approx(model_delta(), rel=1e-12)


def test_a_leg_the_model_cannot_price_stays_missing() -> None:
    judged = [LegGreeks(conid=1, name="SPY C", age=None, waited=31.0)]
    leg = Leg(conid=1, symbol="SPY", sec_type="OPT", quantity=1, multiplier=100.0)  # no terms
    verdict, out = rows(MODEL, [leg], judged)
    assert out is None
    assert verdict.missing_conids == {1}
