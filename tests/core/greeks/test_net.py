"""The fast path's core (NetLeg, aggregate_net, judge_ages) equals the reference functions.

aggregate_net must give exactly aggregate()'s (one account) or aggregate_accounts()'s
(several) rows for the same open legs, bit for bit; judge_ages exactly judge_legs's
verdict. The feed-level comparison (legs read from ib_async tickers) is in
tests/feeds/socket/test_netlegs.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_bridge.core.greeks import (
    GreeksRule,
    Leg,
    LegGreeks,
    LegNet,
    aggregate,
    aggregate_accounts,
    aggregate_net,
    judge_ages,
    judge_legs,
)

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
RAW = st.one_of(
    st.none(),
    st.sampled_from([-2.0, math.nan, math.inf, 1.7976931348623157e308, 0.0, -0.0, 3, True]),
    st.floats(-3.0, 3.0, allow_nan=False),
    st.floats(-1e300, 1e300, allow_nan=False),
)


@st.composite
def legs(draw: st.DrawFn) -> Leg:
    sec_type = draw(st.sampled_from(["STK", "ETF", "OPT", "FOP", "FUT"]))
    option = sec_type in ("OPT", "FOP")
    return Leg(
        conid=draw(st.integers(1, 12)),
        symbol=draw(st.sampled_from(["SPY", "ES", "QQQ"])),
        sec_type=sec_type,
        quantity=draw(st.sampled_from([1.0, -1.0, 3.0, -200.0, 0.5, 1e10, -1e300, 1.7e308])),
        multiplier=draw(st.sampled_from([None, 1.0, 50.0, 100.0, 1e299])),
        delta=draw(RAW) if option else None,
        gamma=draw(RAW) if option else None,
        vega=draw(RAW) if option else None,
        theta=draw(RAW) if option else None,
        underlying_price=draw(
            st.one_of(st.none(), st.sampled_from([-1.0, 0.0, math.nan]), st.floats(1.0, 5000.0))
        ),
        ib_sentinels=draw(st.booleans()),
        account=draw(st.sampled_from(["U1", "U2", "U3"])),
        greeks_source=draw(st.sampled_from(["ib", "model"])),
    )


@settings(max_examples=400)
@given(
    book=st.lists(legs(), min_size=1, max_size=25),
    accounts=st.lists(st.sampled_from(["U1", "U2", "U3", "U4"]), max_size=4, unique=True),
    prices=st.dictionaries(st.sampled_from(["SPY", "ES", "QQQ"]), st.floats(-1.0, 900.0)),
    omit=st.frozensets(st.integers(1, 12)),
)
def test_aggregate_net_equals_aggregate_bit_for_bit(
    book: list[Leg], accounts: list[str], prices: dict[str, float], omit: frozenset[int]
) -> None:
    net = [LegNet(leg) for leg in book]
    got = aggregate_net(
        net,
        account="U9",
        timestamp=NOW,
        api_mode="SOCKET",
        accounts=accounts,
        underlying_prices=prices,
        omit=omit,
    )
    if len(accounts) > 1:
        want = aggregate_accounts(
            book,
            timestamp=NOW,
            api_mode="SOCKET",
            accounts=accounts,
            underlying_prices=prices,
            omit=omit,
        )
    else:
        want = aggregate(
            book,
            account="U9",
            timestamp=NOW,
            api_mode="SOCKET",
            underlying_prices=prices,
            omit=omit,
        )
    assert repr(got) == repr(want)  # repr tells -0.0 from 0.0, and every bit of a float


def test_no_leg_raises_as_aggregate_does() -> None:
    with pytest.raises(ValueError, match="no open legs"):
        aggregate_net([], account="U1", timestamp=NOW, api_mode="SOCKET")


AGES = st.one_of(st.none(), st.sampled_from([0.0, 15.0, 30.0]), st.floats(0.0, 100.0))


@given(
    ages=st.lists(
        st.tuples(st.integers(1, 50), st.sampled_from(["A", "B C"]), AGES, st.floats(0.0, 100.0)),
        unique_by=lambda a: a[0],
        max_size=30,
    ),
    stale_after=st.sampled_from([15.0, 30.0]),
    leg_grace=st.sampled_from([0.0, 30.0]),
    partial=st.booleans(),
    farms=st.sampled_from([(), ("usfarm",), ("eufarm", "usfarm")]),
)
def test_judge_ages_equals_judge_legs(
    ages: list[tuple[int, str, float | None, float]],
    stale_after: float,
    leg_grace: float,
    partial: bool,
    farms: tuple[str, ...],
) -> None:
    rule = GreeksRule(stale_after=stale_after, leg_grace=leg_grace, partial=partial)
    records = [LegGreeks(conid=c, name=n, age=a, waited=w) for c, n, a, w in ages]
    assert judge_ages(ages, rule, broken_farms=farms) == judge_legs(
        records, rule, broken_farms=farms
    )
