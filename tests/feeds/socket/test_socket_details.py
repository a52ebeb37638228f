"""SOCKET contract details: cached across reconnects, looked up after connect, paced.

A futures or futures-option position arrives without its exchange, so reqMktData needs the
contract details first (reqContractDetails, TWS API message 9). These tests count those
requests at the TwsSimulator (real ib_async client over loopback) and hold their answers to
show that connect does not wait for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import Status
from ibkr_bridge.feeds.ratelimit import SOCKET_DETAILS_LIMIT
from ibkr_bridge.feeds.socket.feed import SocketFeed
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
    SPY_CONID,
    Instrument,
    Portfolio,
    Position,
    default_portfolio,
    resolve_expiry,
)
from ibkr_bridge.sim.tws import TwsSimulator
from ibkr_bridge.testing import TestDatabase, wait_until

CLIENT_ID = 10
GUARD = 10.0  # seconds a wait may take before the test is declared hung
REQ_CONTRACT_DETAILS = 9
ES_CALL, ES_PUT = 800000201, 800000202  # the demo book's futures options
SPY_LEGS = {SPY_CONID, 800000101, 800000102, 800000103}


class Events:
    """A FeedListener keeping the feed's events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.disconnects: list[str] = []

    def feed_disconnected(self, reason: str) -> None:
        self.disconnects.append(reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        pass

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        pass

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.events.append({"event": event, "message": message, "status": status})


class HoldingSimulator(TwsSimulator):
    """Keeps contract-details requests unanswered until :meth:`release` (a slow Gateway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = True
        self.held: list[tuple[Any, list[str]]] = []

    def _dispatch(self, conn: Any, fields: list[str]) -> None:
        if fields[0] == str(REQ_CONTRACT_DETAILS) and self.holding:
            self.held.append((conn, fields))
            return
        super()._dispatch(conn, fields)

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for conn, fields in held:
            super()._dispatch(conn, fields)


async def eventually(predicate: Callable[[], object], what: str) -> None:
    """Poll ``predicate`` until it is true; fail after GUARD seconds (a hang guard)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def subscribed(sim: TwsSimulator) -> set[int]:
    return set(sim.subscriptions_of(CLIENT_ID).values())


def has_rows(feed: SocketFeed, now: datetime) -> bool:
    rows = feed.snapshot(now)
    return rows is not None and any(r.contract == PORTFOLIO for r in rows)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def simulator(
    portfolio: Portfolio, clock: FakeClock, cls: type[TwsSimulator] = TwsSimulator
) -> AsyncIterator[TwsSimulator]:
    sim = cls(portfolio, clock=clock, seed=1)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def make_feed(sim: TwsSimulator, **kwargs: Any) -> tuple[SocketFeed, Events]:
    options: dict[str, Any] = {"client_id": CLIENT_ID, "connect_timeout": GUARD, **kwargs}
    feed = SocketFeed(host="127.0.0.1", port=sim.port, **options)
    events = Events()
    feed.set_listener(events)
    return feed, events


def futures_book(clock: FakeClock, legs: int) -> Portfolio:
    """The ES future plus ``legs`` ES futures options, all held: every one needs details."""
    when = clock.now()
    es = Instrument(
        ES_CONID, "ES", "FUT", exchange="CME", expiry=resolve_expiry("+110d", when), multiplier=50
    )
    expiry = resolve_expiry("+45d", when)
    options = [
        Instrument(
            900000000 + n,
            "ES",
            "FOP",
            exchange="CME",
            expiry=expiry,
            strike=5000.0 + 25.0 * n,
            right="C" if n % 2 else "P",
            multiplier=50.0,
            underlying_conid=ES_CONID,
        )
        for n in range(legs)
    ]
    positions = [Position(DEFAULT_ACCOUNT, es, 1.0, 6000.0)]
    positions += [Position(DEFAULT_ACCOUNT, o, 1.0, 100.0) for o in options]
    return Portfolio(
        [DEFAULT_ACCOUNT],
        [es, *options],
        positions,
        spots={ES_CONID: 6000.0},
        volatilities={ES_CONID: 0.16},
        seed=0,
        as_of=when,
    )


async def test_reconnecting_sends_no_contract_details_request(clock: FakeClock) -> None:
    async with simulator(default_portfolio(as_of=clock.now()), clock) as sim:
        feed, events = make_feed(sim)
        try:
            await feed.connect()
            await eventually(lambda: has_rows(feed, clock.now()), "rows")
            await eventually(lambda: ES_CONID in subscribed(sim), "the options' future")
            first = sim.count_requests(REQ_CONTRACT_DETAILS)
            # One per futures option, one for their future; the SPY legs trade on SMART.
            assert first == 3

            await feed.disconnect()
            await feed.connect()  # a second connect: every conId is known
            await eventually(lambda: has_rows(feed, clock.now()), "rows again")
            assert sim.count_requests(REQ_CONTRACT_DETAILS) - first == 0

            await sim.restart()  # a Gateway restart: the feed reconnects the same way
            await eventually(lambda: events.disconnects, "the disconnect")
            await eventually(lambda: sim.open_connections == 0, "the old socket to close")
            await feed.connect()
            await eventually(lambda: has_rows(feed, clock.now()), "rows after the restart")
            assert sim.count_requests(REQ_CONTRACT_DETAILS) - first == 0
        finally:
            await feed.disconnect()


async def test_connect_does_not_wait_for_contract_details(clock: FakeClock) -> None:
    portfolio = default_portfolio(as_of=clock.now())
    async with simulator(portfolio, clock, HoldingSimulator) as sim:
        assert isinstance(sim, HoldingSimulator)
        # A request timeout longer than the guard: waiting for details would hang connect.
        feed, events = make_feed(sim, connect_timeout=10 * GUARD)
        try:
            await asyncio.wait_for(feed.connect(), GUARD)
            assert feed.connected
            await eventually(lambda: len(sim.held) == 2, "both lookups sent")
            await eventually(lambda: subscribed(sim) == SPY_LEGS, "the SPY legs subscribed")
            # The ES options have no details yet, so no Greeks: no row, as for any such leg.
            assert feed.snapshot(clock.now()) is None

            sim.release()
            es_legs = SPY_LEGS | {ES_CALL, ES_PUT, ES_CONID}  # and the options' future
            await eventually(lambda: subscribed(sim) == es_legs, "ES legs")
            await eventually(lambda: has_rows(feed, clock.now()), "rows with every leg")
            rows = feed.snapshot(clock.now())
            assert rows is not None
            assert {r.contract: r.legs for r in rows}[PORTFOLIO] == 6
            assert [e for e in events.events if e["status"] != "info"] == []
        finally:
            await feed.disconnect()


async def barrier(feed: SocketFeed) -> None:
    """Every request the feed has sent so far has reached the simulator (answered in order)."""
    session = feed._session
    assert session is not None
    await asyncio.wait_for(session.ib.reqCurrentTimeAsync(), GUARD)


async def test_a_large_futures_book_is_looked_up_after_connect_under_the_pacing_limit(
    clock: FakeClock,
) -> None:
    legs = 60
    limit = SOCKET_DETAILS_LIMIT
    async with simulator(futures_book(clock, legs), clock) as sim:
        # The feed paces on the simulator's fake clock: nothing beyond the bucket's bound
        # can be sent until the test moves it.
        feed, events = make_feed(sim, clock=clock)
        try:
            await asyncio.wait_for(feed.connect(), GUARD)
            assert feed.connected  # ready with most of the book still unknown
            burst = int(limit.burst)
            await eventually(lambda: sim.count_requests(REQ_CONTRACT_DETAILS) == burst, "burst")
            await barrier(feed)
            assert sim.count_requests(REQ_CONTRACT_DETAILS) == burst  # the rest waits
            assert feed.snapshot(clock.now()) is None  # legs without details yet: no row

            elapsed = 0.0
            while len(subscribed(sim)) < legs + 1:
                assert elapsed < 2 * legs / limit.rate, "the lookups stopped progressing"
                await clock.advance(0.25)
                elapsed += 0.25
                await barrier(feed)
                assert sim.count_requests(REQ_CONTRACT_DETAILS) <= limit.max_in(elapsed)
            assert sim.count_requests(REQ_CONTRACT_DETAILS) == legs + 1  # each conId once
            await eventually(lambda: has_rows(feed, clock.now()), "rows")
            assert [e for e in events.events if e["status"] != "info"] == []
        finally:
            await feed.disconnect()


class UnknownToGatewaySimulator(TwsSimulator):
    """Answers the contract-details request for one conId with IB 200 (no definition)."""

    unknown = ES_PUT

    def _dispatch(self, conn: Any, fields: list[str]) -> None:
        if fields[0] == str(REQ_CONTRACT_DETAILS) and fields[3] == str(self.unknown):
            self._send_error(
                conn, int(fields[2]), 200, "No security definition has been found for the request"
            )
            return
        super()._dispatch(conn, fields)


def lookups_of(sim: TwsSimulator, conid: int) -> int:
    return sum(
        1 for r in sim.requests if r.msg_id == REQ_CONTRACT_DETAILS and r.fields[3] == str(conid)
    )


async def test_a_failed_lookup_is_reported_once_and_retried_after_a_position_change(
    clock: FakeClock,
) -> None:
    # As before the lookups moved out of connect (a guard: the background resolver must
    # not turn one unknown conId into a loop of requests and events).
    portfolio = default_portfolio(as_of=clock.now())
    async with simulator(portfolio, clock, UnknownToGatewaySimulator) as sim:
        feed, events = make_feed(sim)
        try:
            await feed.connect()
            await eventually(lambda: ES_CALL in subscribed(sim), "the known ES leg")
            await eventually(lambda: events.events, "the warning")
            # Other legs resolving and ticks arriving do not retry it in a loop.
            await clock.advance(5.0)
            await barrier(feed)
            assert lookups_of(sim, ES_PUT) == 1
            warnings = [e for e in events.events if e["status"] == "warning"]
            assert len(warnings) == 1
            assert str(ES_PUT) in warnings[0]["message"]
            assert ES_PUT not in subscribed(sim)
            assert feed.snapshot(clock.now()) is None  # the leg has no Greeks

            sim.set_position(DEFAULT_ACCOUNT, ES_CALL, -2.0)  # a position change: try again
            await eventually(lambda: lookups_of(sim, ES_PUT) == 2, "the retry")
        finally:
            await feed.disconnect()


async def test_the_bridge_goes_live_while_contract_details_are_outstanding(
    db: TestDatabase, tmp_path: Path
) -> None:
    clock = FakeClock(start=datetime(2026, 3, 10, 18, 0, tzinfo=UTC))
    portfolio = default_portfolio(as_of=clock.now())
    async with HoldingSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as sim:
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                # The setting: each held lookup alone would use the whole connect.
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_INTERVAL": "15",
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
            },
            use_dotenv=False,
        )
        async with Bridge(settings, clock=clock) as bridge:
            await wait_until(lambda: bridge.connection_state is ConnectionState.LIVE)
            await wait_until(lambda: len(sim.held) == 2)  # both ES lookups still unanswered
            await clock.advance(5.0)
            await bridge.sink.flush()
            assert await db.fetch("SELECT 1 FROM portfolio_greeks") == []  # ES legs: no Greeks

            sim.release()
            feed = bridge._feed
            await wait_until(lambda: feed.snapshot(clock.now()) is not None)
            await clock.advance(5.0)
            await bridge.sink.flush()
            rows = await db.fetch(
                "SELECT legs FROM portfolio_greeks WHERE contract = $1", PORTFOLIO
            )
            assert [r["legs"] for r in rows] == [6]
            assert bridge.connection_state is ConnectionState.LIVE
