"""SOCKET: a futures option without IB's undPrice is priced off its own future's stream.

IB's ``minus2`` sentinels (all Greeks -2, undPrice and implied vol -1) leave the model no
underlying price in the option's tick. The feed then streams the future IB names in the
option's contract details (``underConId``): one stream per conId, shared with a held
future, and found by conId, so options on two expiries of "ES" never swap prices.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.greeks import GreeksRule
from ibkr_bridge.feeds.socket._positions import session_legs
from ibkr_bridge.feeds.socket.feed import SocketFeed
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    Instrument,
    Portfolio,
    Position,
    resolve_expiry,
)
from ibkr_bridge.sim.tws import TwsSimulator

from .test_socket_details import (
    CLIENT_ID,
    REQ_CONTRACT_DETAILS,
    eventually,
    has_rows,
    make_feed,
    simulator,
)

ES_DEC, ES_MAR = 700000001, 700000002  # two expiries of the same symbol
ON_DEC, ON_MAR = 700000011, 700000012  # one option on each, same terms otherwise
SPOTS = {ES_DEC: 6000.0, ES_MAR: 6100.0}
MODEL = GreeksRule(model=True, risk_free_rate=0.04, position_rows=True)


def two_expiries(when: datetime, *, hold_march: bool) -> Portfolio:
    """Calls on ESZ and ESH at one strike and expiry; the March future held if asked."""

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
    positions = [Position(DEFAULT_ACCOUNT, on_dec, 1.0, 100.0)]
    positions.append(Position(DEFAULT_ACCOUNT, on_mar, -1.0, 100.0))
    if hold_march:
        positions.append(Position(DEFAULT_ACCOUNT, mar, 1.0, 300_000.0))
    return Portfolio(
        [DEFAULT_ACCOUNT],
        [dec, mar, on_dec, on_mar],
        positions,
        spots=SPOTS,
        volatilities={ES_DEC: 0.16, ES_MAR: 0.17},
        seed=0,
        as_of=when,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def streams(sim: TwsSimulator) -> list[int]:
    """The conId of every market-data stream the feed holds, one entry per stream."""
    return sorted(sim.subscriptions_of(CLIENT_ID).values())


async def modelled(feed: SocketFeed, clock: FakeClock) -> dict[int, float | None]:
    """Once a row is written: each futures option's underlying price, by conId."""
    await eventually(lambda: has_rows(feed, clock.now()), "rows")
    assert feed._session is not None
    legs, _ = session_legs(feed._session, clock.monotonic())
    return {leg.conid: leg.underlying_price for leg in legs if leg.sec_type == "FOP"}


@pytest.mark.parametrize("hold_march", [False, True])
async def test_each_option_is_priced_off_its_own_expiry(clock: FakeClock, hold_march: bool) -> None:
    async with simulator(two_expiries(clock.now(), hold_march=hold_march), clock) as sim:
        await sim.sentinel_greeks("minus2")
        feed, events = make_feed(sim, rule=MODEL)
        try:
            await feed.connect()
            prices = await modelled(feed, clock)
            assert prices == {ON_DEC: SPOTS[ES_DEC], ON_MAR: SPOTS[ES_MAR]}
            # One stream per conId: the held March future's own is the option's too.
            assert streams(sim) == sorted([ES_DEC, ES_MAR, ON_DEC, ON_MAR])
            # Each conId looked up once: the two options, then the two futures.
            assert sim.count_requests(REQ_CONTRACT_DETAILS) == 4
            rows = {r.conid: r for r in feed.position_rows}
            for conid in (ON_DEC, ON_MAR):
                assert rows[conid].greeks_source == "model"
            assert rows[ON_DEC].underlying_price == SPOTS[ES_DEC]
            assert rows[ON_MAR].underlying_price == SPOTS[ES_MAR]
            # Same strike, same expiry: only the future's price tells the two deltas apart.
            assert rows[ON_DEC].unit_delta != pytest.approx(rows[ON_MAR].unit_delta, rel=1e-3)
            assert [e for e in events.events if e["status"] != "info"] == []
        finally:
            await feed.disconnect()


async def test_a_closed_option_drops_its_futures_stream(clock: FakeClock) -> None:
    book = two_expiries(clock.now(), hold_march=True)
    async with simulator(book, clock) as sim:
        feed, _ = make_feed(sim, rule=MODEL)
        try:
            await feed.connect()
            await eventually(lambda: ES_DEC in streams(sim), "the December future's stream")
            sim.set_position(DEFAULT_ACCOUNT, ON_DEC, 0.0)
            await eventually(lambda: ON_DEC not in streams(sim), "the closed option dropped")
            await eventually(lambda: ES_DEC not in streams(sim), "its future dropped")
            assert streams(sim) == sorted([ES_MAR, ON_MAR])  # the held future stays
        finally:
            await feed.disconnect()


EVERSOURCE = 700000030  # the stock "ES": the same symbol as the E-mini's root


async def test_a_stock_named_like_the_future_never_prices_its_options(clock: FakeClock) -> None:
    """Eversource ("ES") held next to ES futures options: the options' model Greeks and
    rows take their own future's price, never the stock's (a wrong row, not a missing one)."""
    when = clock.now()
    book = two_expiries(when, hold_march=False)
    stock = Instrument(EVERSOURCE, "ES", "STK", exchange="NYSE")
    book = Portfolio(
        [DEFAULT_ACCOUNT],
        [*book.instruments(), stock],
        [*book.positions(), Position(DEFAULT_ACCOUNT, stock, 200.0, 60.0)],
        spots={**SPOTS, EVERSOURCE: 75.0},
        volatilities={ES_DEC: 0.16, ES_MAR: 0.17, EVERSOURCE: 0.2},
        seed=0,
        as_of=when,
    )
    async with simulator(book, clock) as sim:
        await sim.sentinel_greeks("minus2")
        feed, _ = make_feed(sim, rule=MODEL)
        try:
            await feed.connect()
            await eventually(lambda: has_rows(feed, clock.now()), "rows")
            rows = {r.conid: r for r in feed.position_rows}
            assert rows[EVERSOURCE].underlying_price == 75.0
            for conid, future in ((ON_DEC, ES_DEC), (ON_MAR, ES_MAR)):
                assert rows[conid].greeks_source == "model"
                assert rows[conid].underlying_price == SPOTS[future]
            # Black-76 at ~6,000 for a 6,050 call: a delta near one half, not the ~0 of 75.
            delta = rows[ON_DEC].unit_delta
            assert delta is not None
            assert delta > 0.3
        finally:
            await feed.disconnect()
