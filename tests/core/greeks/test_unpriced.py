"""judge_legs(unpriced=...): a current leg the model cannot price is missing like any other,
and model_greeks has no figure for a price that no volatility gives."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

from ibkr_bridge.core.greeks import (
    UNPRICED,
    GreeksRule,
    Leg,
    LegGreeks,
    judge_legs,
    mid_or_last,
    model_greeks,
)

RULE = GreeksRule(stale_after=15.0, leg_grace=30.0, model=True, risk_free_rate=0.04)
PARTIAL = GreeksRule(stale_after=15.0, leg_grace=30.0, partial=True, model=True)
NOW = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)


def test_unpriced_current_leg_is_missing_with_its_reason() -> None:
    legs = [
        LegGreeks(conid=1, name="a", age=1.0, waited=60.0),
        LegGreeks(conid=2, name="b", age=1.0, waited=60.0),
    ]
    verdict = judge_legs(legs, RULE, unpriced={2})
    assert [(p.conid, p.why) for p in verdict.missing] == [(2, UNPRICED)]
    assert not verdict.write
    assert not verdict.stale  # the Greeks are current, just not computed
    partial = judge_legs(legs, PARTIAL, unpriced={2})
    assert partial.write
    assert partial.omit == {2}
    assert judge_legs(legs, RULE).missing == ()


def test_staleness_and_grace_come_first() -> None:
    legs = [
        LegGreeks(conid=1, name="old", age=40.0, waited=60.0),
        LegGreeks(conid=2, name="new", age=None, waited=2.0),
    ]
    verdict = judge_legs(legs, RULE, unpriced={1, 2})
    assert [p.conid for p in verdict.missing] == [1]
    assert "old (BRIDGE_STALE_AFTER" in verdict.missing[0].why
    assert verdict.waiting == {2}


@pytest.mark.parametrize(
    ("bid", "ask", "last"),
    [
        (None, None, None),  # no quote
        (101.0, 100.0, None),  # crossed, no last
        (0.0, 0.0, None),  # zero quote
        (50.0, 52.0, None),  # below intrinsic (about 102)
        (700.0, 702.0, None),  # above the spot: no call is worth more
    ],
)
def test_no_model_figure_without_a_price_a_volatility_gives(
    bid: float | None, ask: float | None, last: float | None
) -> None:
    leg = Leg(
        conid=7,
        symbol="SPY",
        sec_type="OPT",
        quantity=1,
        multiplier=100.0,
        right="C",
        strike=500.0,
        expiry="20260417",
        option_price=mid_or_last(bid, ask, last),
    )
    assert model_greeks(leg, now=NOW, rate=0.04, underlying_price=600.0) is None
    # The same leg with a price inside the bounds has one.
    priced = attrs.evolve(leg, option_price=110.5)
    assert model_greeks(priced, now=NOW, rate=0.04, underlying_price=600.0) is not None
