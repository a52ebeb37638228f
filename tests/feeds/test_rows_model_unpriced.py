"""BRIDGE_GREEKS_FALLBACK=model when the model cannot price a leg either: a missing leg.

IB sent a current computation with every Greek "not computed" (ib_async's -2 / None) and
no implied volatility; the option's quote gives no usable price either (none at all, a
crossed or zero quote without a last, a mid below intrinsic value or above the
no-arbitrage bound). Such a leg must be missing exactly as a leg without Greeks is
(BRIDGE_MISSING_LEGS decides, named in the verdict so the Bridge logs one ``legs_missing``
per episode), never a row whose Greeks are NULL or invented.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from ibkr_bridge.core.greeks import (
    UNPRICED,
    GreeksRule,
    Leg,
    LegGreeks,
    LegsVerdict,
    mid_or_last,
    years_to_expiry,
)
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds._rows import rows_from_legs
from ibkr_bridge.service._legs import LegEpisodes

NOW = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
EXPIRY = "20260417"
RATE = 0.04
SPOT = 600.0
STRIKE = 500.0  # a deep in-the-money call: intrinsic about 102
MODEL = GreeksRule(stale_after=15.0, leg_grace=30.0, model=True, risk_free_rate=RATE)
PARTIAL = GreeksRule(
    stale_after=15.0, leg_grace=30.0, partial=True, model=True, risk_free_rate=RATE
)
SKIP = GreeksRule(stale_after=15.0, leg_grace=30.0)
CURRENT = [LegGreeks(conid=7, name="SPY C500", age=1.0, waited=60.0)]


def intrinsic_pv() -> float:
    t = years_to_expiry(EXPIRY, NOW)
    assert t is not None
    return SPOT - STRIKE * math.exp(-RATE * t)


def option(bid: object, ask: object, last: object) -> Leg:
    """The call as the SOCKET feed makes it from a minus2 computation and this quote."""
    return Leg(
        conid=7,
        symbol="SPY",
        sec_type="OPT",
        quantity=2,
        multiplier=100.0,
        delta=None,  # ib_async turns the -2 of delta and gamma into None
        gamma=None,
        vega=-2.0,
        theta=-2.0,
        underlying_price=None,  # -1 on the wire
        right="C",
        strike=STRIKE,
        expiry=EXPIRY,
        implied_vol=None,  # -1 on the wire
        option_price=mid_or_last(bid, ask, last),
    )


SHARES = Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100)

UNUSABLE = {
    "no quote": (None, None, None),
    "crossed, no last": (101.0, 100.0, None),
    "zero bid and ask, no last": (0.0, 0.0, None),
    "sentinels": (-1.0, -1.0, -1.0),
    "nan": (math.nan, math.nan, math.nan),
    "mid below intrinsic": (50.0, 52.0, None),
    "crossed, last below intrinsic": (120.0, 110.0, 60.0),
    "mid above the spot": (700.0, 702.0, None),
}


def run(rule: GreeksRule, legs: list[Leg]) -> tuple[LegsVerdict, list[GreeksRow] | None]:
    verdict, rows, _ = rows_from_legs(
        legs,
        CURRENT,
        rule,
        account="DU1",
        now=NOW,
        mode="SOCKET",
        prices=lambda: {"SPY": SPOT},
    )
    return verdict, rows


def test_the_quotes_are_unusable_as_meant() -> None:
    low = intrinsic_pv()
    assert 52.0 < low < 110.0
    for bid, ask, last in UNUSABLE.values():
        price = mid_or_last(bid, ask, last)
        assert price is None or price < low or price > SPOT


@pytest.mark.parametrize("quote", list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_unpriced_leg_is_missing_and_skips_the_row(quote: tuple[Any, Any, Any]) -> None:
    verdict, rows = run(MODEL, [SHARES, option(*quote)])
    assert rows is None  # BRIDGE_MISSING_LEGS=skip: nothing written
    assert not verdict.write
    (problem,) = verdict.missing
    assert (problem.conid, problem.why) == (7, UNPRICED)
    assert verdict.reason is not None
    assert "SPY C500 (conid 7)" in verdict.reason


@pytest.mark.parametrize("quote", list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_unpriced_leg_is_left_out_with_partial(quote: tuple[Any, Any, Any]) -> None:
    verdict, rows = run(PARTIAL, [SHARES, option(*quote)])
    assert rows is not None
    (row,) = rows
    assert verdict.omit == {7}
    assert (row.legs, row.legs_missing, row.legs_model) == (2, 1, 0)
    # The other legs only: the shares. No NULL, no -2, nothing made up for the call.
    assert (row.delta, row.gamma, row.vega, row.theta) == (100.0, 0.0, 0.0, 0.0)


def test_a_usable_mid_prices_the_same_leg() -> None:
    verdict, rows = run(MODEL, [SHARES, option(110.0, 111.0, None)])
    assert rows is not None
    assert not verdict.missing
    assert rows[0].legs_model == 1


def test_skip_policy_is_unchanged() -> None:
    # Without the model the leg is not judged missing here (its computation is current);
    # the row carries NULL for the Greeks IB did not compute, as before.
    verdict, rows = run(SKIP, [SHARES, option(None, None, None)])
    assert not verdict.missing
    assert rows is not None
    assert rows[0].delta is None


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def feed_event(self, event: str, message: str, **kw: Any) -> None:
        self.seen.append((event, kw.get("detail")))


def test_one_legs_missing_event_per_episode() -> None:
    events = Events()
    episodes = LegEpisodes(events, "skip")  # type: ignore[arg-type]
    for quote in (UNUSABLE["no quote"], UNUSABLE["mid below intrinsic"], UNUSABLE["no quote"]):
        verdict, _ = run(MODEL, [SHARES, option(*quote)])
        episodes.track(verdict)
    assert [e for e, _ in events.seen] == ["legs_missing"]
    assert events.seen[0][1]["legs"] == [{"conid": 7, "name": "SPY C500", "why": UNPRICED}]
    verdict, _ = run(MODEL, [SHARES, option(110.0, 111.0, None)])  # a usable quote again
    episodes.track(verdict)
    assert [e for e, _ in events.seen] == ["legs_missing", "legs_recovered"]
