"""PORTAL: each futures option is priced off the future IB names for it (its undConid).

ESZ and ESH are both "ES": a price by symbol would give options on both expiries one
future's price, in the model fallback and in the per-position rows. The PORTAL feed
reads each option's own underlying conid, and a future's own price for a future.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from ibkr_bridge.core import pricing
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.greeks import GreeksRule, years_to_expiry
from ibkr_bridge.core.records import PositionRow
from ibkr_bridge.sim.portal import PortalSimulator
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    Instrument,
    Portfolio,
    Position,
    resolve_expiry,
)
from tests.sim.portal.test_portal_sim import START

from .test_portal_feed import Rig, make_feed

ES_DEC, ES_MAR = 700000001, 700000002  # two expiries of one root
ON_DEC, ON_MAR = 700000011, 700000012  # a call on each, same strike and expiry
EVERSOURCE = 700000030  # the stock "ES"
SPOTS = {ES_DEC: 6000.0, ES_MAR: 6100.0, EVERSOURCE: 75.0}
VOL = 0.16
MODEL = GreeksRule(model=True, risk_free_rate=0.04, position_rows=True, leg_grace=5.0)


def two_expiries(when: datetime) -> Portfolio:
    """Calls on ESZ and ESH, the March future and Eversource's stock held too."""

    def future(conid: int, days: str) -> Instrument:
        expiry = resolve_expiry(days, when)
        return Instrument(conid, "ES", "FUT", exchange="CME", expiry=expiry, multiplier=50.0)

    def call(conid: int, under: int) -> Instrument:
        return Instrument(
            conid,
            "ES",
            "FOP",
            exchange="CME",
            expiry=resolve_expiry("+45d", when),
            strike=6050.0,
            right="C",
            multiplier=50.0,
            underlying_conid=under,
        )

    dec, mar = future(ES_DEC, "+80d"), future(ES_MAR, "+170d")
    on_dec, on_mar = call(ON_DEC, ES_DEC), call(ON_MAR, ES_MAR)
    stock = Instrument(EVERSOURCE, "ES", "STK", exchange="NYSE")
    return Portfolio(
        [DEFAULT_ACCOUNT],
        [dec, mar, on_dec, on_mar, stock],
        [
            Position(DEFAULT_ACCOUNT, on_dec, 1.0, 100.0),
            Position(DEFAULT_ACCOUNT, on_mar, -1.0, 100.0),
            Position(DEFAULT_ACCOUNT, mar, 1.0, 300_000.0),
            Position(DEFAULT_ACCOUNT, stock, 200.0, 60.0),
        ],
        spots=SPOTS,
        volatilities={conid: VOL for conid in (ES_DEC, ES_MAR, ON_DEC, ON_MAR, EVERSOURCE)},
        seed=0,
        as_of=when,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)
    async with PortalSimulator(two_expiries(START), clock=clock) as sim:
        feed = make_feed(sim, clock, rule=MODEL)
        try:
            yield Rig(sim, feed, clock)
        finally:
            await feed.disconnect()


async def position_rows(rig: Rig) -> dict[int, PositionRow]:
    await rig.connect()
    await rig.run(rig.feed.poll_interval)
    rig.feed.snapshot(rig.clock.now())  # a leg's grace runs from the first snapshot that sees it
    await rig.run(MODEL.leg_grace)
    await rig.rows()
    return {row.conid: row for row in rig.feed.position_rows}


async def test_each_option_row_carries_its_own_futures_price(rig: Rig) -> None:
    rows = await position_rows(rig)
    assert rows[ON_DEC].underlying_price == pytest.approx(SPOTS[ES_DEC])
    assert rows[ON_MAR].underlying_price == pytest.approx(SPOTS[ES_MAR])
    assert rows[ES_MAR].underlying_price == pytest.approx(SPOTS[ES_MAR])
    assert rows[EVERSOURCE].underlying_price == pytest.approx(SPOTS[EVERSOURCE])


async def test_the_model_prices_each_option_off_its_own_future(rig: Rig) -> None:
    # No Greeks from the gateway (implied vol still served): the model prices both.
    rig.sim.sentinel_greeks(mode="missing")
    rows = await position_rows(rig)
    at = rig.clock.now()
    for conid, future in ((ON_DEC, ES_DEC), (ON_MAR, ES_MAR)):
        row = rows[conid]
        assert row.greeks_source == "model"
        t_years = years_to_expiry(row.expiry, at)
        assert t_years is not None
        assert row.implied_vol is not None
        want = pricing.greeks("black76", SPOTS[future], 6050.0, t_years, row.implied_vol, 0.04, "C")
        assert want is not None
        assert row.unit_delta == pytest.approx(want.delta, rel=1e-9)
    # Same strike and expiry: only the futures' prices tell the two deltas apart.
    assert rows[ON_DEC].unit_delta != pytest.approx(rows[ON_MAR].unit_delta, rel=1e-3)
