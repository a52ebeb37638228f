"""SOCKET lookups behind ib_async's own request throttle: the deadline is the Gateway's.

ib_async sends at most 45 requests a second and queues the rest in the client. Subscribing
a large book puts hundreds of reqMktData in that queue at connect; the contract lookups the
same book needs (here: the options' underlying stocks) are queued behind them. The Gateway
answers each lookup at once, so none may time out, however long it waited in the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    Instrument,
    Portfolio,
    Position,
    default_portfolio,
    resolve_expiry,
)
from tests.feeds.socket.test_socket_details import (
    ES_CALL,
    ES_PUT,
    GUARD,
    REQ_CONTRACT_DETAILS,
    SPY_LEGS,
    HoldingSimulator,
    barrier,
    eventually,
    make_feed,
    simulator,
    subscribed,
)

STOCK_CONID = 100_000


def option_book(clock: FakeClock, legs: int, underlyings: int) -> Portfolio:
    """``legs`` stock options over ``underlyings`` stocks that are not held themselves."""
    when = clock.now()
    stocks = [
        Instrument(STOCK_CONID + u, f"UND{u}", "STK", primary_exchange="NASDAQ")
        for u in range(underlyings)
    ]
    expiry = resolve_expiry("+30d", when)
    options = [
        Instrument(
            900_000_000 + n,
            stocks[n % underlyings].symbol,
            "OPT",
            expiry=expiry,
            strike=50.0 + n // underlyings,
            right="C",
            multiplier=100.0,
            underlying_conid=stocks[n % underlyings].conid,
        )
        for n in range(legs)
    ]
    return Portfolio(
        [DEFAULT_ACCOUNT],
        [*stocks, *options],
        [Position(DEFAULT_ACCOUNT, o, 1.0, 100.0) for o in options],
        spots={s.conid: 100.0 for s in stocks},
        volatilities={s.conid: 0.2 for s in stocks},
        seed=0,
        as_of=when,
    )


def problems(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["status"] != "info"]


async def test_lookups_queued_behind_a_large_subscription_do_not_time_out() -> None:
    clock = FakeClock()
    legs, underlyings = 400, 8
    # 400 reqMktData fill ib_async's queue for ~9 s; each lookup is answered at once, well
    # within the 3 s request timeout, but only reaches the Gateway after that queue.
    timeout = 3.0
    async with simulator(option_book(clock, legs, underlyings), clock) as sim:
        feed, events = make_feed(sim, connect_timeout=timeout)
        wanted = {STOCK_CONID + u for u in range(underlyings)} | {
            900_000_000 + n for n in range(legs)
        }
        try:
            await asyncio.wait_for(feed.connect(), GUARD)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 6 * GUARD  # a hang guard only: ib_async needs ~10 s
            while subscribed(sim) != wanted and not problems(events.events):
                assert loop.time() < deadline, "the subscriptions stopped progressing"
                await asyncio.sleep(0.05)
            assert problems(events.events) == []
            assert subscribed(sim) == wanted  # every leg and every underlying stock
            assert sim.count_requests(REQ_CONTRACT_DETAILS) == underlyings  # each once
        finally:
            await feed.disconnect()


async def test_a_gateway_that_never_answers_a_lookup_still_times_it_out_once() -> None:
    clock = FakeClock()
    async with simulator(default_portfolio(as_of=clock.now()), clock, HoldingSimulator) as sim:
        assert isinstance(sim, HoldingSimulator)  # holds every contract-details request
        feed, events = make_feed(sim, connect_timeout=2.0)
        try:
            await asyncio.wait_for(feed.connect(), GUARD)
            await eventually(lambda: len(problems(events.events)) == 2, "both timeouts")
            messages = sorted(e["message"] for e in problems(events.events))
            assert all(m.startswith("no answer to contract details") for m in messages)
            assert [str(ES_CALL) in m for m in messages] == [True, False]
            assert [str(ES_PUT) in m for m in messages] == [False, True]
            await barrier(feed)
            assert len(problems(events.events)) == 2  # reported once each, not retried
            assert sim.count_requests(REQ_CONTRACT_DETAILS) == 2
            assert subscribed(sim) == SPY_LEGS  # the ES legs wait without a stream
        finally:
            await feed.disconnect()
