"""The IB Gateway simulator's quotes: what ``served_quotes`` records is what ib_async got,
and under ``sentinel_greeks("minus2")`` an option has neither Greeks nor an implied
volatility but still a bid, an ask and a last."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ib_async import IB, Contract

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.portfolio import default_portfolio
from ibkr_bridge.sim.tws import TwsSimulator

CALL, PUT = 800000101, 800000102


@pytest.fixture
async def world() -> AsyncIterator[tuple[FakeClock, TwsSimulator, IB]]:
    clock = FakeClock()
    async with TwsSimulator(default_portfolio(as_of=clock.now()), clock=clock, seed=1) as sim:
        ib = IB()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=11, readonly=True, timeout=5)
        try:
            yield clock, sim, ib
        finally:
            ib.disconnect()


async def barrier(ib: IB) -> None:
    """Everything sent before this round trip has been read."""
    await asyncio.wait_for(ib.reqCurrentTimeAsync(), 5)


def option(ib: IB, conid: int) -> Any:
    return ib.reqMktData(Contract(conId=conid, secType="OPT", exchange="SMART"))


async def test_served_quotes_are_the_ticks_the_client_got(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    clock, sim, ib = world
    assert sim.served_quotes(CALL) == ()
    call = option(ib, CALL)
    await barrier(ib)
    (quote,) = sim.served_quotes(CALL)
    assert (quote.conid, quote.at) == (CALL, clock.now())
    assert (quote.bid, quote.ask, quote.last) == (call.bid, call.ask, call.last)
    assert quote.bid < quote.mid < quote.ask
    # Tick-rounded, so not the model's price: what a client implies a volatility from.
    assert quote.mid != sim.portfolio.price(CALL, clock.now())


async def test_minus2_leaves_no_greeks_and_no_implied_vol_but_a_quote(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    _clock, sim, ib = world
    await sim.sentinel_greeks("minus2")
    call = option(ib, CALL)
    await barrier(ib)
    g = call.modelGreeks
    assert g is not None
    # On the wire delta, gamma, vega and theta are -2 and the implied vol, option price and
    # underlying price -1 (IB's "not computed"); ib_async turns some of them into None.
    for name in ("delta", "gamma", "vega", "theta"):
        assert getattr(g, name) in (None, -2.0), name
    for name in ("impliedVol", "optPrice", "undPrice"):
        assert getattr(g, name) in (None, -1.0), name
    assert all(math.isfinite(p) and p > 0 for p in (call.bid, call.ask, call.last))
    assert [q.bid for q in sim.served_quotes(CALL)] == [call.bid]


async def test_fixed_quote_is_sent_and_recorded_until_cleared(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    _clock, sim, ib = world
    sim.fixed_quote(CALL, bid=5.0, ask=4.0, last=0.0)  # crossed, no trade
    call = option(ib, CALL)
    await barrier(ib)
    assert (call.bid, call.ask) == (5.0, 4.0)
    assert (sim.served_quotes(CALL)[-1].bid, sim.served_quotes(CALL)[-1].ask) == (5.0, 4.0)
    sim.clear_fixed_quote(CALL)
    ib.cancelMktData(call.contract)
    again = option(ib, CALL)
    await barrier(ib)
    assert again.bid < again.ask
    assert sim.served_quotes(CALL)[-1].bid == again.bid
    with pytest.raises(KeyError):
        sim.fixed_quote(1, bid=1.0, ask=2.0, last=1.5)
