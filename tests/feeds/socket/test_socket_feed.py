"""SocketFeed against TwsSimulator over loopback, with the real ib_async 2.1.0 client.

The simulator runs on a FakeClock that only moves when a test advances it, so prices and
Greeks stay where the portfolio put them unless a test says otherwise. Waiting for bytes
to cross the socket is done with :func:`eventually` (a guard timeout, not an assertion on
speed) or with a probe round trip: the simulator answers in order, so once a probe's
reply is in, every tick written before it has been processed too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from ibkr_bridge.config import load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.errors import AccountSelectionError, GatewayError
from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import GreeksRow, Status
from ibkr_bridge.feeds.socket.feed import SocketFeed
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
    SPY_CONID,
    Instrument,
    Portfolio,
    Position,
    default_portfolio,
    model_greeks,
    resolve_expiry,
    single_underlying_portfolio,
    years_between,
)
from ibkr_bridge.sim.tws import TwsSimulator

CLIENT_ID = 10
GUARD = 10.0  # seconds a wait may take before the test is declared hung
# Conids of the demo book (see ibkr_bridge.sim.portfolio.default_portfolio).
SPY_CALL_NEAR, SPY_PUT_NEAR, SPY_CALL_FAR = 800000101, 800000102, 800000103
ES_CALL, ES_PUT = 800000201, 800000202
# Every leg, and the ES options' underlying future (not held): its price for the model.
DEMO_SUBSCRIPTIONS = {
    SPY_CONID,
    SPY_CALL_NEAR,
    SPY_PUT_NEAR,
    SPY_CALL_FAR,
    ES_CALL,
    ES_PUT,
    ES_CONID,
}
DEMO_OPTION_LEGS = 5


class Recorder:
    """A FeedListener that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def feed_disconnected(self, reason: str) -> None:
        self.calls.append(("disconnected", {"reason": reason}))

    def feed_data_lost(self, code: int, message: str) -> None:
        self.calls.append(("data_lost", {"code": code, "message": message}))

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        self.calls.append(
            ("data_restored", {"code": code, "message": message, "resubscribe": resubscribe})
        )

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(
            ("event", {"event": event, "message": message, "status": status, **(detail or {})})
        )

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == kind]

    def events(self, code: int) -> list[dict[str, Any]]:
        return [e for e in self.of("event") if e.get("code") == code]


async def eventually(predicate: Callable[[], object], what: str) -> None:
    """Poll ``predicate`` until it is true; fail after GUARD seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def rows_of(
    feed: SocketFeed,
    clock: FakeClock,
    where: Callable[[list[GreeksRow]], bool] = lambda rows: True,
) -> list[GreeksRow]:
    """The first snapshot that is not None (and satisfies ``where``)."""
    holder: list[list[GreeksRow]] = []

    def ready() -> bool:
        rows = feed.snapshot(clock.now())
        if rows is not None and where(rows):
            holder.append(rows)
            return True
        return False

    await eventually(ready, "a snapshot with rows")
    return holder[-1]


async def settle(feed: SocketFeed) -> None:
    """Everything the simulator sent so far has been handled (one in-order round trip)."""
    await asyncio.wait_for(feed.probe(), GUARD)


def subscribed(sim: TwsSimulator) -> set[int]:
    return set(sim.subscriptions_of(CLIENT_ID).values())


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


@asynccontextmanager
async def connected(sim: TwsSimulator, **kwargs: Any) -> AsyncIterator[tuple[SocketFeed, Recorder]]:
    feed, recorder = make_feed(sim, **kwargs)
    try:
        await feed.connect()
        yield feed, recorder
    finally:
        await feed.disconnect()


def make_feed(sim: TwsSimulator, **kwargs: Any) -> tuple[SocketFeed, Recorder]:
    options: dict[str, Any] = {"client_id": CLIENT_ID, "connect_timeout": GUARD, **kwargs}
    feed = SocketFeed(host="127.0.0.1", port=sim.port, **options)
    recorder = Recorder()
    feed.set_listener(recorder)
    return feed, recorder


def expected_rows(portfolio: Portfolio, now: datetime) -> dict[str, dict[str, float]]:
    """Net Greeks recomputed from the simulator's state with model_greeks, per underlying."""
    state = portfolio.snapshot()
    nets: dict[str, dict[str, float]] = {}
    for pos in state.positions:
        inst = pos.instrument
        net = nets.setdefault(inst.symbol, {"delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0})
        if inst.sec_type in ("OPT", "FOP"):
            assert inst.underlying_conid is not None
            assert inst.strike is not None
            assert inst.right is not None
            expires = inst.expires_at()
            assert expires is not None
            g = model_greeks(
                inst.sec_type,
                state.spots[inst.underlying_conid],
                inst.strike,
                years_between(now, expires),
                state.volatilities[inst.underlying_conid],
                state.rate,
                inst.right,
            )
            size = pos.quantity * inst.multiplier
            for name in ("delta", "gamma", "vega", "theta"):
                net[name] += size * getattr(g, name)
        else:
            net["delta"] += pos.quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
    prices = {"SPY": SPY_CONID, "ES": ES_CONID}
    for symbol, net in nets.items():
        net["price"] = state.spots[prices[symbol]]
        net["dollar_delta"] = net["delta"] * net["price"]
    return nets


def by_contract(rows: list[GreeksRow]) -> dict[str, GreeksRow]:
    return {row.contract: row for row in rows}


# -- connecting and choosing the account ----------------------------------------------------


async def test_connects_picks_the_single_account_and_subscribes_every_leg(
    clock: FakeClock,
) -> None:
    async with (
        simulator(default_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, recorder),
    ):
        assert feed.account == DEFAULT_ACCOUNT
        assert feed.connected
        assert sim.client_ids == {CLIENT_ID}
        # Every option leg, the SPY stock and the ES options' future (one stream each).
        await eventually(lambda: subscribed(sim) == DEMO_SUBSCRIPTIONS, "subscriptions")
        assert sorted(sim.subscriptions_of(CLIENT_ID).values()) == sorted(DEMO_SUBSCRIPTIONS)
        # The Gateway's farm notices become informational events.
        farm = [e for e in recorder.of("event") if e["event"] == "farm"]
        assert {e["code"] for e in farm} == {2104, 2106, 2158}
        assert {e["status"] for e in farm} == {"info"}
        assert recorder.of("disconnected") == []


def two_spy_accounts(clock: FakeClock) -> Portfolio:
    """DU111 long 100 SPY, DU222 short 300 SPY: a stock-only book on two accounts."""
    demo = single_underlying_portfolio(as_of=clock.now())
    spy = demo.instrument(SPY_CONID)
    return Portfolio(
        ["DU111", "DU222"],
        demo.instruments(),
        [Position("DU111", spy, 100.0, 500.0), Position("DU222", spy, -300.0, 500.0)],
        spots={SPY_CONID: 600.0},
        as_of=clock.now(),
    )


async def test_several_accounts_without_ib_account_reports_each_and_all(
    clock: FakeClock,
) -> None:
    async with simulator(two_spy_accounts(clock), clock) as sim, connected(sim) as (feed, _):
        assert feed.accounts == ("DU111", "DU222")
        assert feed.account == "DU111,DU222"  # what the connect event and status show
        rows = await rows_of(feed, clock, lambda rows: rows[0].dollar_delta is not None)
        assert [(r.account, r.contract, r.delta) for r in rows] == [
            ("DU111", PORTFOLIO, 100.0),
            ("DU222", PORTFOLIO, -300.0),
            ("", PORTFOLIO, -200.0),
        ]
        assert [r.dollar_delta for r in rows] == pytest.approx([60_000.0, -180_000.0, -120_000.0])
        # One stream for the stock both accounts hold.
        assert list(sim.subscriptions_of(CLIENT_ID).values()) == [SPY_CONID]


def test_the_account_choice() -> None:
    anyone = SocketFeed(client_id=CLIENT_ID)
    assert anyone._choose_accounts(["DU1"]) == ("DU1",)
    assert anyone._choose_accounts(["DU2", "DU1"]) == ("DU2", "DU1")  # IB's order
    assert anyone._choose_accounts(["DU1", "", "DU1", "DU2"]) == ("DU1", "DU2")
    for none in ([], [""]):
        with pytest.raises(AccountSelectionError, match="no managed account"):
            anyone._choose_accounts(none)
    one = SocketFeed(client_id=CLIENT_ID, account="DU2")
    assert one._choose_accounts(["DU1", "DU2"]) == ("DU2",)
    with pytest.raises(AccountSelectionError, match=r"DU3 is not managed.*DU1, DU2"):
        SocketFeed(client_id=CLIENT_ID, account="DU3")._choose_accounts(["DU1", "DU2"])
    with pytest.raises(AccountSelectionError, match="it manages: none"):
        one._choose_accounts([])
    # Before any connect the account is IB_ACCOUNT, or not known yet.
    assert (one.account, one.accounts) == ("DU2", ())
    assert (anyone.account, anyone.accounts) == (None, ())


async def test_a_position_change_in_either_account_is_followed(clock: FakeClock) -> None:
    portfolio = two_spy_accounts(clock)
    async with simulator(portfolio, clock) as sim, connected(sim) as (feed, _):
        await rows_of(feed, clock, lambda rows: rows[0].dollar_delta is not None)
        sim.set_position("DU222", SPY_CONID, -50.0)
        rows = await rows_of(feed, clock, lambda rows: rows[1].delta == -50.0)
        assert [(r.account, r.delta) for r in rows] == [
            ("DU111", 100.0),
            ("DU222", -50.0),
            ("", 50.0),
        ]
        sim.remove_position("DU111", SPY_CONID)
        rows = await rows_of(feed, clock, lambda rows: rows[0].legs == 0)
        assert [(r.account, r.delta, r.legs) for r in rows] == [
            ("DU111", 0.0, 0),  # flat, still reported
            ("DU222", -50.0, 1),
            ("", -50.0, 1),
        ]
        assert list(sim.subscriptions_of(CLIENT_ID).values()) == [SPY_CONID]


async def test_ib_account_not_managed_is_refused(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        feed, _ = make_feed(sim, account="U9999999")
        with pytest.raises(AccountSelectionError, match="U9999999") as caught:
            await feed.connect()
        assert DEFAULT_ACCOUNT in str(caught.value)
        assert feed.snapshot(clock.now()) is None
        await eventually(lambda: sim.open_connections == 0, "the refused session to close")


async def test_ib_account_among_several_reports_only_that_account(clock: FakeClock) -> None:
    portfolio = two_spy_accounts(clock)
    async with (
        simulator(portfolio, clock) as sim,
        connected(sim, account="DU222") as (feed, _),
    ):
        assert feed.account == "DU222"
        assert feed.accounts == ("DU222",)
        # A stock-only book waits for no Greek: its first rows may lack the price.
        rows = await rows_of(feed, clock, lambda rows: rows[0].dollar_delta is not None)
        assert [(r.account, r.contract, r.delta) for r in rows] == [("DU222", PORTFOLIO, -300.0)]
        assert rows[0].dollar_delta == pytest.approx(-300.0 * 600.0)


async def test_client_id_zero_is_refused_before_any_socket_opens(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        with pytest.raises(ValueError, match="trader's own app"):
            SocketFeed(port=sim.port, client_id=0)
        settings = SimpleNamespace(
            socket_host="127.0.0.1",
            socket_port=sim.port,
            client_id=0,
            account=None,
            market_data_type=1,
            connect_timeout=5.0,
        )
        with pytest.raises(ValueError, match="clientId 0"):
            SocketFeed.from_settings(settings, clock)
        await asyncio.sleep(0)
        assert sim.connections_accepted == 0
        assert sim.requests == ()


def test_from_settings_reads_the_socket_settings(clock: FakeClock) -> None:
    settings = load_settings(
        {
            "IB_SOCKET_HOST": "::1",
            "IB_SOCKET_PORT": "4002",
            "IB_CLIENT_ID": "17",
            "IB_ACCOUNT": "DU5",
            "IB_MARKET_DATA_TYPE": "3",
            "IB_CONNECT_TIMEOUT": "7.5",
        },
        use_dotenv=False,
    )
    feed = SocketFeed.from_settings(settings, clock)
    assert (feed.host, feed.port, feed.client_id, feed.account) == ("::1", 4002, 17, "DU5")
    assert (feed.market_data_type, feed.connect_timeout, feed.clock) == (3, 7.5, clock)
    assert feed.mode == "SOCKET"
    with pytest.raises(ValueError, match="market_data_type"):
        SocketFeed(market_data_type=5)


# -- snapshots --------------------------------------------------------------------------------


async def test_snapshot_equals_black_scholes_recomputed_from_the_simulator(
    clock: FakeClock,
) -> None:
    portfolio = default_portfolio(as_of=clock.now())
    async with simulator(portfolio, clock) as sim, connected(sim) as (feed, _):
        rows = by_contract(await rows_of(feed, clock))
        want = expected_rows(portfolio, clock.now())
        assert set(rows) == {PORTFOLIO, "SPY", "ES"}
        for symbol in ("SPY", "ES"):
            row, net = rows[symbol], want[symbol]
            for name in ("delta", "gamma", "vega", "theta", "dollar_delta"):
                assert getattr(row, name) == pytest.approx(net[name], rel=1e-9), (symbol, name)
            assert row.underlying_price == pytest.approx(net["price"], abs=0.005)
            assert row.legs_missing == 0
        assert (rows["SPY"].legs, rows["ES"].legs) == (4, 2)
        total = rows[PORTFOLIO]
        assert total.delta == pytest.approx(want["SPY"]["delta"] + want["ES"]["delta"])
        assert total.dollar_delta == pytest.approx(
            want["SPY"]["dollar_delta"] + want["ES"]["dollar_delta"]
        )
        assert total.underlying_price is None
        assert (total.account, total.api_mode, total.timestamp) == (
            DEFAULT_ACCOUNT,
            "SOCKET",
            clock.now(),
        )


async def test_snapshot_is_none_until_greeks_arrive(clock: FakeClock) -> None:
    async with simulator(default_portfolio(as_of=clock.now()), clock) as sim:
        await sim.sentinel_greeks("missing")
        async with connected(sim) as (feed, _):
            await eventually(lambda: subscribed(sim) == DEMO_SUBSCRIPTIONS, "subscriptions")
            await settle(feed)  # prices have arrived, Greeks have not
            assert feed.snapshot(clock.now()) is None
            sim.clear_sentinel_greeks()
            await clock.advance(sim.tick_interval)  # the next stream tick carries Greeks
            await settle(feed)
            rows = feed.snapshot(clock.now())
            assert rows is not None
            assert by_contract(rows)[PORTFOLIO].legs == 6


async def test_sentinel_vega_and_theta_give_missing_columns_and_keep_delta(
    clock: FakeClock,
) -> None:
    portfolio = default_portfolio(as_of=clock.now())
    async with simulator(portfolio, clock) as sim:
        await sim.sentinel_greeks("vega_theta")  # IB's -2, which ib_async passes through
        async with connected(sim) as (feed, _):
            rows = by_contract(await rows_of(feed, clock))
            want = expected_rows(portfolio, clock.now())
            for symbol in ("SPY", "ES"):
                row = rows[symbol]
                assert (row.vega, row.theta) == (None, None)
                assert row.delta == pytest.approx(want[symbol]["delta"], rel=1e-9)
                assert row.gamma == pytest.approx(want[symbol]["gamma"], rel=1e-9)
            assert rows[PORTFOLIO].legs_missing == DEMO_OPTION_LEGS
            assert (rows[PORTFOLIO].vega, rows[PORTFOLIO].theta) == (None, None)


async def test_all_sentinel_greeks_are_missing_never_summed(clock: FakeClock) -> None:
    async with simulator(default_portfolio(as_of=clock.now()), clock) as sim:
        await sim.sentinel_greeks("minus2")
        async with connected(sim) as (feed, _):
            rows = by_contract(await rows_of(feed, clock))
            total = rows[PORTFOLIO]
            assert (total.delta, total.gamma, total.vega, total.theta) == (None,) * 4
            assert total.legs_missing == DEMO_OPTION_LEGS
            # No undPrice in the (sentinel) Greeks: ES's price is its future's own stream.
            assert rows["ES"].underlying_price == pytest.approx(6000.0)
            assert rows["SPY"].underlying_price == pytest.approx(600.0)


async def test_delayed_market_data_type_is_requested_and_used(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim, market_data_type=3) as (feed, _),
    ):
        await settle(feed)  # the simulator has read every request sent before the probe
        assert [r.fields[2] for r in sim.requests if r.msg_id == 59] == ["3"]
        rows = await rows_of(feed, clock)
        assert rows[0].legs == 4
        assert rows[0].underlying_price == pytest.approx(600.0)


async def test_an_account_without_positions_gets_a_flat_row(clock: FakeClock) -> None:
    async with (
        simulator(Portfolio([DEFAULT_ACCOUNT], as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, _),
    ):
        rows = feed.snapshot(clock.now())
        assert rows is not None
        assert [(r.contract, r.delta, r.vega, r.legs) for r in rows] == [(PORTFOLIO, 0.0, 0.0, 0)]


async def test_no_rows_before_connect_or_after_disconnect(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        feed, recorder = make_feed(sim)
        assert feed.snapshot(clock.now()) is None
        with pytest.raises(ConnectionError):
            await feed.probe()
        await feed.connect()
        await rows_of(feed, clock)
        await feed.disconnect()
        await feed.disconnect()  # idempotent
        assert feed.snapshot(clock.now()) is None
        assert not feed.connected
        await eventually(lambda: sim.open_connections == 0, "the socket to close")
        # Handlers were removed: a later Gateway restart reaches nobody.
        await sim.restart()
        await asyncio.sleep(0.05)
        assert recorder.of("disconnected") == []


# -- connection events -----------------------------------------------------------------------


async def test_gateway_restart_reports_disconnect_and_reconnect_subscribes_afresh(
    clock: FakeClock,
) -> None:
    async with simulator(default_portfolio(as_of=clock.now()), clock) as sim:
        feed, recorder = make_feed(sim)
        try:
            await feed.connect()
            await rows_of(feed, clock)
            await sim.restart()
            await eventually(lambda: recorder.of("disconnected"), "feed_disconnected")
            assert len(recorder.of("disconnected")) == 1
            assert "closed" in recorder.of("disconnected")[0]["reason"]
            assert feed.snapshot(clock.now()) is None
            assert not feed.connected

            await eventually(lambda: sim.open_connections == 0, "the old socket to close")
            before = sim.count_requests(1)
            await feed.connect()
            await eventually(lambda: subscribed(sim) == DEMO_SUBSCRIPTIONS, "subscriptions")
            assert sim.count_requests(1) == before + len(DEMO_SUBSCRIPTIONS)
            assert sim.count_requests(61) == 2  # positions fetched again by the new instance
            await rows_of(feed, clock)
        finally:
            await feed.disconnect()
        assert len(recorder.of("disconnected")) == 1  # our own disconnect is not reported


async def test_reconnect_while_the_old_session_holds_the_client_id(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        feed, recorder = make_feed(sim)
        try:
            await feed.connect()
            await sim.restart(stale_ids=30.0)
            await eventually(lambda: recorder.of("disconnected"), "feed_disconnected")
            # The Gateway still counts the old session: 326, and connect() says so.
            with pytest.raises(GatewayError, match="already in use"):
                await asyncio.wait_for(feed.connect(), GUARD)
            assert len(recorder.events(326)) == 1
            assert feed.snapshot(clock.now()) is None
            await clock.advance(30.0)
            await feed.connect()
            rows = await rows_of(feed, clock)
            assert rows[0].legs == 4
            assert len(recorder.of("disconnected")) == 1
        finally:
            await feed.disconnect()


async def test_1100_then_1101_loses_data_and_resubscribes(clock: FakeClock) -> None:
    async with (
        simulator(default_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, recorder),
    ):
        await rows_of(feed, clock)
        first_req_ids = set(sim.subscriptions_of(CLIENT_ID))
        await sim.daily_reset("1101", outage=30.0)
        await eventually(lambda: recorder.of("data_lost"), "feed_data_lost")
        assert recorder.of("data_lost")[0]["code"] == 1100
        assert feed.snapshot(clock.now()) is None
        broken = {e["code"] for e in recorder.of("event") if e["status"] == "warning"}
        assert {2103, 2105, 2157} <= broken

        await clock.advance(30.0)
        await eventually(lambda: recorder.of("data_restored"), "feed_data_restored")
        restored = recorder.of("data_restored")[0]
        assert (restored["code"], restored["resubscribe"]) == (1101, True)
        assert subscribed(sim) == set()  # the Gateway dropped every stream
        assert feed.snapshot(clock.now()) is None  # old Greeks are not fresh data

        await feed.resubscribe()
        await eventually(lambda: subscribed(sim) == DEMO_SUBSCRIPTIONS, "renewed subscriptions")
        assert not set(sim.subscriptions_of(CLIENT_ID)) & first_req_ids  # new request ids
        rows = await rows_of(feed, clock)
        assert by_contract(rows)[PORTFOLIO].legs == 6
        # Cancelling streams the Gateway had already dropped is not an error worth logging.
        assert recorder.events(300) == []
        assert recorder.of("disconnected") == []


async def test_1102_restores_without_resubscribing(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, recorder),
    ):
        await rows_of(feed, clock)
        requests = sim.count_requests(1)
        await sim.daily_reset("1102", outage=5.0)
        await eventually(lambda: recorder.of("data_lost"), "feed_data_lost")
        await clock.advance(5.0)
        await eventually(lambda: recorder.of("data_restored"), "feed_data_restored")
        assert recorder.of("data_restored")[0]["resubscribe"] is False
        await rows_of(feed, clock)
        assert sim.count_requests(1) == requests


class RestoredWhileConnectingSimulator(TwsSimulator):
    """Sends IB 1101 ("restored, data lost") just before the position sync."""

    def _dispatch(self, conn: Any, fields: list[str]) -> None:
        if fields[0] == "61" and self.count_requests(61) == 1:
            self._send_error(conn, -1, 1101, "Connectivity restored - data lost.")
        super()._dispatch(conn, fields)


async def test_1101_while_connecting_is_handled_by_connect(clock: FakeClock) -> None:
    async with (
        simulator(
            single_underlying_portfolio(as_of=clock.now()), clock, RestoredWhileConnectingSimulator
        ) as sim,
        connected(sim) as (feed, recorder),
    ):
        assert recorder.of("data_restored")[0]["resubscribe"] is True
        assert sim.count_requests(61) == 2  # connect() re-synced positions itself
        rows = await rows_of(feed, clock)
        assert rows[0].legs == 4


async def test_1300_is_a_disconnect(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, recorder),
    ):
        await sim.port_reset()
        await eventually(lambda: recorder.of("disconnected"), "feed_disconnected")
        assert "1300" in recorder.of("disconnected")[0]["reason"]
        assert feed.snapshot(clock.now()) is None
        await eventually(lambda: sim.open_connections == 0, "the socket to close")


async def test_client_id_in_use_fails_fast_and_is_logged(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (first, first_recorder),
    ):
        # A long ib_async timeout: only the 326 race can end this connect with GatewayError.
        second, recorder = make_feed(sim, connect_timeout=60.0)
        with pytest.raises(GatewayError, match=f"clientId {CLIENT_ID} is already in use"):
            await asyncio.wait_for(second.connect(), 2 * GUARD)
        (event,) = recorder.events(326)
        assert (event["event"], event["status"]) == ("error", "error")
        assert not second.connected
        assert recorder.of("disconnected") == []
        # The session holding the clientId is untouched.
        assert first.connected
        assert first_recorder.of("disconnected") == []
        await settle(first)


async def test_frozen_gateway_makes_the_probe_hang(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, _),
    ):
        await settle(feed)
        requests = sim.count_requests(49)
        await feed.probe()  # the answer to reqCurrentTime (or any tick) proves it alive
        assert sim.count_requests(49) == requests + 1
        await sim.freeze()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(feed.probe(), 0.2)
        await sim.unfreeze()
        await settle(feed)


class _SlowAnswers(TwsSimulator):
    """Streams ticks but never answers reqCurrentTime, as if the request were stuck behind
    ib_async's own throttle (a 1,000-leg book takes over 20 s to subscribe)."""

    _handlers = {**TwsSimulator._handlers, 49: TwsSimulator._log_only}


async def test_probe_trusts_traffic_while_its_request_waits(clock: FakeClock) -> None:
    portfolio = single_underlying_portfolio(as_of=clock.now())
    async with (
        simulator(portfolio, clock, cls=_SlowAnswers) as sim,
        connected(sim) as (feed, _),
    ):
        await settle(feed)
        probe = asyncio.ensure_future(feed.probe())
        await asyncio.sleep(0.1)
        assert not probe.done()  # no answer, no traffic yet
        await clock.advance(1.0)  # the Gateway streams ticks: it is alive
        await asyncio.wait_for(probe, 2.0)
        assert sim.count_requests(49) >= 1


async def test_refused_connection_raises(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        await sim.refuse()
        feed, _ = make_feed(sim)
        with pytest.raises(ConnectionRefusedError):
            await feed.connect()
        assert not feed.connected


# -- positions drive subscriptions -----------------------------------------------------------


async def test_position_changes_are_followed(clock: FakeClock) -> None:
    portfolio = single_underlying_portfolio(as_of=clock.now())
    new_put = Instrument(
        800000104,
        "SPY",
        "OPT",
        expiry=resolve_expiry("+30d", clock.now()),
        strike=590.0,
        right="P",
        multiplier=100.0,
        underlying_conid=SPY_CONID,
    )
    async with simulator(portfolio, clock) as sim, connected(sim) as (feed, _):
        first = await rows_of(feed, clock)
        assert first[0].legs == 4

        sim.set_position(DEFAULT_ACCOUNT, new_put, -2.0)
        await eventually(lambda: new_put.conid in subscribed(sim), "the new leg's stream")
        await eventually(
            lambda: (rows := feed.snapshot(clock.now())) is not None and rows[0].legs == 5,
            "a row with the new leg",
        )
        rows = feed.snapshot(clock.now())
        assert rows is not None
        want = expected_rows(portfolio, clock.now())["SPY"]
        assert rows[0].delta == pytest.approx(want["delta"], rel=1e-9)

        sim.remove_position(DEFAULT_ACCOUNT, SPY_CALL_FAR)
        await eventually(lambda: SPY_CALL_FAR not in subscribed(sim), "the closed leg cancelled")
        await eventually(
            lambda: (rows := feed.snapshot(clock.now())) is not None and rows[0].legs == 4,
            "a row without the closed leg",
        )

        # The SPY stock stays subscribed for the options' price after the shares are sold.
        sim.remove_position(DEFAULT_ACCOUNT, SPY_CONID)
        await eventually(
            lambda: (rows := feed.snapshot(clock.now())) is not None and rows[0].legs == 3,
            "a row without the shares",
        )
        assert SPY_CONID in subscribed(sim)
        rows = feed.snapshot(clock.now())
        assert rows is not None
        assert rows[0].underlying_price == pytest.approx(600.0)

        for pos in portfolio.positions(DEFAULT_ACCOUNT):
            sim.remove_position(DEFAULT_ACCOUNT, pos.conid)
        await eventually(lambda: subscribed(sim) == set(), "every stream cancelled")
        await eventually(
            lambda: (rows := feed.snapshot(clock.now())) is not None and rows[0].legs == 0,
            "the flat row",
        )
        flat = feed.snapshot(clock.now())
        assert flat is not None
        assert [(r.delta, r.gamma, r.vega, r.theta) for r in flat] == [(0.0, 0.0, 0.0, 0.0)]


async def test_no_request_touches_other_clients_orders_or_account_subscriptions(
    clock: FakeClock,
) -> None:
    async with simulator(default_portfolio(as_of=clock.now()), clock) as sim:
        async with connected(sim) as (feed, _):
            await rows_of(feed, clock)
            await sim.daily_reset("1101", outage=1.0)
            await clock.advance(1.0)
            await feed.resubscribe()
            sim.set_position(DEFAULT_ACCOUNT, SPY_CONID, 300.0)
            await rows_of(feed, clock)
            await feed.probe()
        ids = set(sim.request_ids)
        assert {71, 61, 1} <= ids  # the log does record what was sent
        assert 58 not in ids  # reqGlobalCancel
        assert 15 not in ids  # reqAutoOpenOrders
        assert not ids & {3, 4, 5, 16}  # placeOrder, cancelOrder, reqOpenOrders, reqAllOpen
        assert 6 not in ids  # reqAccountUpdates: one per login, it would be the trader's


async def test_greeks_reach_the_legs_as_they_arrive(clock: FakeClock) -> None:
    """The session hands each new Greeks object to the kept legs (NetLegs.arrived) as
    ib_async delivers it, so the tick does not recompute them; the rows are unchanged."""
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, _),
    ):
        await rows_of(feed, clock)  # the legs are known from the first read on
        seen: dict[int, object] = {}
        arrived = feed.net_legs.arrived

        def spy(conid: int, ticker: Any, greeks: Any) -> None:
            seen[conid] = greeks
            arrived(conid, ticker, greeks)

        feed.net_legs.arrived = spy  # type: ignore[method-assign]
        await clock.advance(sim.tick_interval)
        await settle(feed)
        session = feed._session
        assert session is not None
        options = {c for c, sub in session.subs.items() if sub.contract.secType == "OPT"}
        assert len(options) == 3  # and the stock
        assert set(seen) == options
        # The very objects on the tickers now: what the next read compares against.
        assert all(seen[c] is session.subs[c].ticker.modelGreeks for c in options)
        rows = feed.snapshot(clock.now())
        assert rows is not None
        assert rows[0].legs == 4
        assert rows[0].legs_missing == 0


async def test_a_reopened_leg_needs_fresh_greeks(clock: FakeClock) -> None:
    async with (
        simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim,
        connected(sim) as (feed, _),
    ):
        await rows_of(feed, clock)
        sim.remove_position(DEFAULT_ACCOUNT, SPY_CALL_FAR)
        await eventually(lambda: SPY_CALL_FAR not in subscribed(sim), "the closed leg cancelled")
        await sim.sentinel_greeks("missing")
        sim.set_position(DEFAULT_ACCOUNT, SPY_CALL_FAR, 1.0)
        await eventually(lambda: SPY_CALL_FAR in subscribed(sim), "the reopened leg's stream")
        await settle(feed)
        # ib_async hands back the same Ticker, still holding the Greeks of the old stream.
        assert feed.snapshot(clock.now()) is None
        sim.clear_sentinel_greeks()
        await clock.advance(sim.tick_interval)
        await settle(feed)
        rows = feed.snapshot(clock.now())
        assert rows is not None
        assert rows[0].legs == 4


# -- connect interrupted ---------------------------------------------------------------------


async def test_disconnect_during_connect_ends_it_promptly(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        await sim.freeze()  # the handshake is never answered
        feed, recorder = make_feed(sim, connect_timeout=60.0)
        attempt = asyncio.create_task(feed.connect())
        await eventually(lambda: sim.connections_accepted == 1, "the socket to open")
        await feed.disconnect()
        with pytest.raises(ConnectionError, match="disconnect requested"):
            await asyncio.wait_for(attempt, GUARD)
        await sim.unfreeze()
        await eventually(lambda: sim.open_connections == 0, "the socket to close")
        assert recorder.of("disconnected") == []


async def test_cancelled_connect_closes_its_socket(clock: FakeClock) -> None:
    async with simulator(single_underlying_portfolio(as_of=clock.now()), clock) as sim:
        await sim.freeze()
        feed, _ = make_feed(sim, connect_timeout=60.0)
        attempt = asyncio.create_task(feed.connect())
        await eventually(lambda: sim.connections_accepted == 1, "the socket to open")
        attempt.cancel()  # what the Bridge's asyncio.wait_for does on its connect timeout
        with pytest.raises(asyncio.CancelledError):
            await attempt
        assert not feed.connected
        await sim.unfreeze()
        await eventually(lambda: sim.open_connections == 0, "the socket to close")
        # The next attempt gets the clientId (no lingering session holds it).
        await feed.connect()
        await rows_of(feed, clock)
        await feed.disconnect()
