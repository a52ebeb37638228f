"""The IB Gateway simulator, exercised with the real ib_async client (and raw sockets)."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from ib_async import IB, Option, Stock

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.__main__ import main as sim_main
from ibkr_bridge.sim.faults import FaultScriptError, load_fault_script, parse_fault_script
from ibkr_bridge.sim.portfolio import (
    ES_CONID,
    SPY_CONID,
    Instrument,
    OptionGreeks,
    Portfolio,
    black76,
    black_scholes,
    default_portfolio,
)
from ibkr_bridge.sim.tws import TwsSimulator
from ibkr_bridge.sim.tws._codec import FrameBuffer

ACCOUNT = "DU1234567"
SPY_PUT = 800000102  # short 3
SPY_CALL = 800000101  # long 2
ES_CALL = 800000201  # short 1, multiplier 50
# What default_portfolio is documented to hold, restated so the tests check it.
VOLS = {SPY_CONID: 0.18, ES_CONID: 0.16}
RATE = 0.04
MULTIPLIER_ON_WIRE = {"STK": "", "OPT": "100", "FOP": "50"}


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def portfolio(clock: FakeClock) -> Portfolio:
    return default_portfolio(as_of=clock.now(), seed=1)


@pytest.fixture
async def sim(portfolio: Portfolio, clock: FakeClock) -> AsyncIterator[TwsSimulator]:
    async with TwsSimulator(portfolio, clock=clock, seed=1) as simulator:
        yield simulator


async def connect(port: int, client_id: int = 10, **kw: Any) -> Any:
    ib = IB()
    for key, value in kw.items():
        setattr(ib.client, key, value)
    await ib.connectAsync(
        "127.0.0.1", port, clientId=client_id, readonly=True, timeout=5, raiseSyncErrors=True
    )
    return ib


@pytest.fixture
async def ib(sim: TwsSimulator) -> AsyncIterator[Any]:
    client = await connect(sim.port)
    yield client
    client.disconnect()


async def until(predicate: Callable[[], object]) -> None:
    """Wait (3 s at most) for a condition the simulator's messages will make true."""
    async with asyncio.timeout(3):
        # Polling: ib_async has no single event for every state the tests look at.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def barrier(ib: Any) -> None:
    # A round trip: everything the simulator wrote before the reply has been decoded.
    await asyncio.wait_for(ib.reqCurrentTimeAsync(), 3.0)


def expected_greeks(portfolio: Portfolio, conid: int, now: datetime) -> OptionGreeks:
    """Recompute from the contract terms, independently of Portfolio.greeks."""
    inst = portfolio.instrument(conid)
    assert inst.expiry is not None
    assert inst.strike is not None
    assert inst.right is not None
    assert inst.underlying_conid is not None
    expiry = datetime.strptime(inst.expiry, "%Y%m%d").replace(
        hour=16, tzinfo=ZoneInfo("America/New_York")
    )
    t = (expiry - now).total_seconds() / (365 * 86400)
    spot = portfolio.spot(inst.underlying_conid)
    vol = VOLS[inst.underlying_conid]
    # Black-76 on the future's price for FOP (as IB), Black-Scholes otherwise.
    model = black76 if inst.sec_type == "FOP" else black_scholes
    return model(spot, inst.strike, t, vol, RATE, inst.right)


def assert_model_greeks(got: Any, want: OptionGreeks) -> None:
    assert got is not None
    assert got.delta == pytest.approx(want.delta, rel=1e-12)
    assert got.gamma == pytest.approx(want.gamma, rel=1e-12)
    assert got.vega == pytest.approx(want.vega, rel=1e-12)
    assert got.theta == pytest.approx(want.theta, rel=1e-12)
    assert got.optPrice == pytest.approx(want.option_price, rel=1e-12)
    assert got.impliedVol == pytest.approx(want.implied_vol)
    assert got.undPrice == pytest.approx(want.underlying_price, rel=1e-12)


def contract_of(ib: Any, conid: int, exchange: str = "SMART") -> Any:
    contract = next(p.contract for p in ib.positions() if p.contract.conId == conid)
    contract.exchange = exchange
    return contract


def spy_on(ib: Any, msg_id: int) -> list[list[str]]:
    """Record every message ``msg_id`` ib_async's decoder handles."""
    seen: list[list[str]] = []
    original = ib.client.decoder.handlers[msg_id]

    def handler(fields: list[str]) -> None:
        seen.append(list(fields))
        original(fields)

    ib.client.decoder.handlers[msg_id] = handler
    return seen


def error_codes(ib: Any) -> list[int]:
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
    return codes


# -- connecting ---------------------------------------------------------------------------


async def test_ib_async_connects_and_syncs(sim: TwsSimulator, ib: Any) -> None:
    assert ib.isConnected()
    assert ib.managedAccounts() == [ACCOUNT]
    assert ib.client.serverVersion() == 178
    assert sim.client_ids == {10}
    assert sim.server_version_of(10) == 178
    ids = sim.request_ids
    assert ids[0] == 71
    assert {61, 6, 76, 7} <= set(ids)
    # what a readonly client must never send
    assert 58 not in ids
    assert 15 not in ids


async def test_a_trading_client_id_0_syncs_orders_too(sim: TwsSimulator) -> None:
    ib = IB()
    # raiseSyncErrors: a startup request left unanswered fails the connect
    await ib.connectAsync(
        "127.0.0.1", sim.port, clientId=0, readonly=False, timeout=3, raiseSyncErrors=True
    )
    try:
        assert ib.isConnected()
        assert ib.openTrades() == []
        # reqOpenOrders, reqCompletedOrders, reqAutoOpenOrders (client id 0 only)
        assert [sim.count_requests(m, client_id=0) for m in (5, 99, 15)] == [1, 1, 1]
    finally:
        ib.disconnect()


async def test_startup_notices_and_next_valid_id(sim: TwsSimulator) -> None:
    ib = IB()
    codes = error_codes(ib)
    await ib.connectAsync("127.0.0.1", sim.port, clientId=3, readonly=True, timeout=5)
    try:
        assert codes[:3] == [2104, 2106, 2158]
        assert ib.client.getReqId() >= 1
    finally:
        ib.disconnect()


async def test_positions_carry_multipliers_and_signs(
    sim: TwsSimulator, ib: Any, portfolio: Portfolio
) -> None:
    got = {p.contract.conId: p for p in ib.positions()}
    assert set(got) == {pos.conid for pos in portfolio.positions()}
    for pos in portfolio.positions():
        item = got[pos.conid]
        assert (item.account, item.position, item.avgCost) == (ACCOUNT, pos.quantity, pos.avg_cost)
        assert item.contract.secType == pos.instrument.sec_type
        assert item.contract.multiplier == MULTIPLIER_ON_WIRE[item.contract.secType]
        assert item.contract.exchange == ""  # as from a real Gateway
    assert got[SPY_CONID].position == 100.0
    assert got[SPY_PUT].position == -3.0
    assert got[ES_CALL].position == -1.0
    assert got[ES_CALL].contract.multiplier == "50"
    assert (
        got[ES_CALL].contract.lastTradeDateOrContractMonth == portfolio.instrument(ES_CALL).expiry
    )


async def test_portfolio_items_and_account_values(
    sim: TwsSimulator, ib: Any, portfolio: Portfolio, clock: FakeClock
) -> None:
    items = {i.contract.conId: i for i in ib.portfolio()}
    assert set(items) == {pos.conid for pos in portfolio.positions()}
    total = 0.0
    for conid, item in items.items():
        sec_type = item.contract.secType
        price = 600.0 if conid == SPY_CONID else expected_greeks(portfolio, conid, clock.now())
        price = price if isinstance(price, float) else price.option_price
        multiplier = 1.0 if sec_type == "STK" else float(MULTIPLIER_ON_WIRE[sec_type])
        assert item.marketPrice == pytest.approx(price, rel=1e-12)
        assert item.marketValue == pytest.approx(item.position * price * multiplier, rel=1e-12)
        assert item.unrealizedPNL == pytest.approx(
            item.marketValue - item.position * item.averageCost, rel=1e-9
        )
        total += item.marketValue
    values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
    assert float(values[("NetLiquidation", "USD")]) == pytest.approx(100_000 + total, abs=0.01)
    assert values[("AccountCode", "")] == ACCOUNT


# -- market data --------------------------------------------------------------------------


@pytest.mark.parametrize(("conid", "exchange"), [(SPY_PUT, "SMART"), (ES_CALL, "CME")])
async def test_model_greeks_match_black_scholes_or_black76(
    sim: TwsSimulator,
    ib: Any,
    portfolio: Portfolio,
    clock: FakeClock,
    conid: int,
    exchange: str,
) -> None:
    ticker = ib.reqMktData(contract_of(ib, conid, exchange))
    await until(lambda: ticker.modelGreeks is not None)
    want = expected_greeks(portfolio, conid, clock.now())
    assert_model_greeks(ticker.modelGreeks, want)
    assert ticker.bid < want.option_price < ticker.ask
    assert list(sim.subscriptions.values()) == [conid]


async def test_streaming_follows_the_simulator_clock(
    sim: TwsSimulator, ib: Any, portfolio: Portfolio, clock: FakeClock
) -> None:
    ticker = ib.reqMktData(contract_of(ib, SPY_CALL))
    await until(lambda: ticker.modelGreeks is not None)
    first = ticker.modelGreeks
    assert first.undPrice == 600.0
    await clock.advance(1.0)
    await until(lambda: ticker.modelGreeks.undPrice != first.undPrice)
    assert ticker.modelGreeks.undPrice == portfolio.spot(SPY_CONID) != 600.0
    assert_model_greeks(ticker.modelGreeks, expected_greeks(portfolio, SPY_CALL, clock.now()))


@pytest.mark.parametrize(("data_type", "tick_type"), [(1, 13), (2, 13), (3, 83), (4, 83)])
async def test_delayed_market_data_uses_the_delayed_greeks_tick(
    sim: TwsSimulator, ib: Any, data_type: int, tick_type: int
) -> None:
    seen = spy_on(ib, 21)
    ib.reqMarketDataType(data_type)
    ticker = ib.reqMktData(contract_of(ib, SPY_PUT))
    await until(lambda: ticker.modelGreeks is not None)
    assert {int(fields[2]) for fields in seen} == {tick_type}
    assert ticker.marketDataType == data_type
    assert ticker.bid > 0  # delayed bid (66) lands in ticker.bid too


async def test_market_data_without_exchange_is_rejected(sim: TwsSimulator, ib: Any) -> None:
    codes = error_codes(ib)
    ticker = ib.reqMktData(contract_of(ib, SPY_PUT, exchange=""))
    await until(lambda: 321 in codes)
    await barrier(ib)
    assert ticker.modelGreeks is None
    assert dict(sim.subscriptions) == {}


async def test_unknown_contract_gets_error_200(sim: TwsSimulator, ib: Any) -> None:
    codes = error_codes(ib)
    ib.reqMktData(Option("SPY", "20260102", 1.0, "C", "SMART", conId=424242))
    await until(lambda: 200 in codes)
    assert dict(sim.subscriptions) == {}


async def test_cancel_ends_the_subscription(sim: TwsSimulator, ib: Any, clock: FakeClock) -> None:
    seen = spy_on(ib, 21)
    contract = contract_of(ib, SPY_PUT)
    ib.reqMktData(contract)
    await until(lambda: len(seen) == 1)
    ib.cancelMktData(contract)
    await until(lambda: not sim.subscriptions)
    await clock.advance(3.0)
    await barrier(ib)
    assert len(seen) == 1


async def test_snapshot_returns_greeks_without_subscribing(
    sim: TwsSimulator, ib: Any, portfolio: Portfolio, clock: FakeClock
) -> None:
    (ticker,) = await asyncio.wait_for(ib.reqTickersAsync(contract_of(ib, SPY_CALL)), 3)
    assert_model_greeks(ticker.modelGreeks, expected_greeks(portfolio, SPY_CALL, clock.now()))
    assert dict(sim.subscriptions) == {}


@pytest.mark.parametrize("version", [178, 166, 164, 163, 160])
async def test_contract_details_for_each_layout(
    sim: TwsSimulator, portfolio: Portfolio, version: int
) -> None:
    ib = await connect(sim.port, client_id=20, MaxClientVersion=version)
    try:
        assert ib.client.serverVersion() == version
        expiry = portfolio.instrument(SPY_PUT).expiry
        assert expiry is not None
        option = Option("SPY", expiry, 580.0, "P", "SMART")
        stock = Stock("SPY", "SMART", "USD")
        await asyncio.wait_for(ib.qualifyContractsAsync(option, stock), 3)
        assert (option.conId, option.multiplier, option.exchange) == (SPY_PUT, "100", "SMART")
        assert option.localSymbol == portfolio.instrument(SPY_PUT).local_symbol
        assert (stock.conId, stock.primaryExchange) == (SPY_CONID, "ARCA")
        (details,) = await asyncio.wait_for(ib.reqContractDetailsAsync(option), 3)
        assert details.minTick == 0.01
        assert details.underConId == SPY_CONID
        assert details.underSymbol == "SPY"
        assert details.realExpirationDate == expiry
        assert details.contract.strike == 580.0
        if version >= 163:
            assert details.suggestedSizeIncrement == 1.0
    finally:
        ib.disconnect()


async def test_current_time_comes_from_the_clock(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    when = datetime(2026, 7, 1, 3, 4, 5, tzinfo=UTC)
    clock.set_wall(when)
    assert await asyncio.wait_for(ib.reqCurrentTimeAsync(), 3) == when


# -- sessions -----------------------------------------------------------------------------


async def test_duplicate_client_id_gets_326(sim: TwsSimulator, ib: Any) -> None:
    second = IB()
    codes = error_codes(second)
    with pytest.raises(TimeoutError):
        await second.connectAsync("127.0.0.1", sim.port, clientId=10, readonly=True, timeout=0.5)
    assert 326 in codes
    assert sim.client_ids == {10}
    await barrier(ib)  # the first session is unaffected
    third = await connect(sim.port, client_id=11)
    try:
        assert sim.client_ids == {10, 11}
    finally:
        third.disconnect()
    await until(lambda: sim.client_ids == {10})


async def test_restart_closes_every_socket(sim: TwsSimulator, ib: Any) -> None:
    other = await connect(sim.port, client_id=12)
    closed = asyncio.Event()
    ib.disconnectedEvent += closed.set
    await sim.restart()
    await asyncio.wait_for(closed.wait(), 3)
    await until(lambda: not sim.client_ids)
    assert not other.isConnected()
    again = await connect(sim.port, client_id=10)  # the id is free again
    again.disconnect()


async def test_restart_with_stale_ids_gives_326_until_they_free_up(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    await sim.restart(stale_ids=20)
    assert sim.client_ids == frozenset()
    await until(lambda: not ib.isConnected())
    quick = IB()
    codes = error_codes(quick)
    with pytest.raises(TimeoutError):
        await quick.connectAsync("127.0.0.1", sim.port, clientId=10, readonly=True, timeout=0.5)
    assert 326 in codes
    other_id = await connect(sim.port, client_id=14)  # only the old ids are taken
    other_id.disconnect()
    await clock.advance(20)
    again = await connect(sim.port, client_id=10)
    again.disconnect()


async def test_port_reset_sends_1300_and_drops_the_session(sim: TwsSimulator, ib: Any) -> None:
    codes = error_codes(ib)
    closed = asyncio.Event()
    ib.disconnectedEvent += closed.set
    await sim.port_reset()
    await asyncio.wait_for(closed.wait(), 3)
    assert codes == [1300]
    assert sim.client_ids == frozenset()


async def test_restart_with_downtime_refuses_until_the_clock_moves(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    await sim.restart(downtime=30)
    await until(lambda: not ib.isConnected())
    with pytest.raises(ConnectionRefusedError):
        await connect(sim.port)
    await clock.advance(30)
    again = await connect(sim.port)
    assert again.isConnected()
    again.disconnect()


async def test_refuse_keeps_existing_sessions(sim: TwsSimulator, ib: Any, clock: FakeClock) -> None:
    await sim.refuse(10)
    assert sim.refusing
    with pytest.raises(ConnectionRefusedError):
        await connect(sim.port, client_id=13)
    await barrier(ib)
    await clock.advance(10)
    assert not sim.refusing
    again = await connect(sim.port, client_id=13)
    again.disconnect()


async def test_stop_closes_the_port(portfolio: Portfolio, clock: FakeClock) -> None:
    simulator = TwsSimulator(portfolio, clock=clock)
    await simulator.start()
    ib = await connect(simulator.port)
    await simulator.stop()
    await until(lambda: not ib.isConnected())
    with pytest.raises(ConnectionRefusedError):
        await connect(simulator.port)


# -- faults -------------------------------------------------------------------------------


async def test_daily_reset_1102_pauses_streaming_and_keeps_subscriptions(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    codes = error_codes(ib)
    seen = spy_on(ib, 21)
    ib.reqMktData(contract_of(ib, SPY_PUT))
    await until(lambda: seen)
    subscriptions = dict(sim.subscriptions)
    await sim.daily_reset("1102", outage=60)
    await until(lambda: 2157 in codes)
    assert codes == [1100, 2103, 2105, 2157]
    ticks = len(seen)
    await clock.advance(5)
    await barrier(ib)
    assert len(seen) == ticks  # nothing streams during the outage
    await clock.advance(55)
    await until(lambda: 2158 in codes)
    assert codes[4:] == [1102, 2104, 2106, 2158]
    assert dict(sim.subscriptions) == subscriptions
    await clock.advance(1)
    await until(lambda: len(seen) > ticks)


async def test_daily_reset_1101_drops_subscriptions(
    sim: TwsSimulator, ib: Any, clock: FakeClock, portfolio: Portfolio
) -> None:
    codes = error_codes(ib)
    seen = spy_on(ib, 21)
    contract = contract_of(ib, SPY_PUT)
    ticker = ib.reqMktData(contract)
    await until(lambda: seen)
    old_req = int(seen[0][1])
    await sim.daily_reset("1101", outage=30)
    await clock.advance(30)
    await until(lambda: 1101 in codes)
    assert codes[0] == 1100
    assert dict(sim.subscriptions) == {}
    await clock.advance(2)
    await barrier(ib)
    assert all(int(fields[1]) == old_req for fields in seen)
    assert len(seen) == 1
    ticker = ib.reqMktData(contract)  # the client re-subscribes
    await until(lambda: len(seen) == 2)
    assert list(sim.subscriptions.values()) == [SPY_PUT]
    assert_model_greeks(ticker.modelGreeks, expected_greeks(portfolio, SPY_PUT, clock.now()))


async def test_freeze_answers_nothing_until_it_ends(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    await sim.freeze(20)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ib.reqCurrentTimeAsync(), 0.3)
    assert sim.count_requests(49) == 1  # the bytes were accepted
    assert ib.isConnected()
    await clock.advance(20)
    assert not sim.frozen
    assert await asyncio.wait_for(ib.reqCurrentTimeAsync(), 3) == clock.now()


async def test_a_frozen_gateway_accepts_but_never_completes_a_handshake(
    sim: TwsSimulator, clock: FakeClock
) -> None:
    await sim.freeze(10)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connect(sim.port, client_id=15), 0.5)
    assert sim.connections_accepted == 1
    assert sim.client_ids == frozenset()
    await clock.advance(10)
    again = await connect(sim.port, client_id=15)
    assert sim.client_ids == {15}
    again.disconnect()


@pytest.mark.parametrize("mode", ["minus2", "vega_theta", "dblmax", "nan", "missing"])
async def test_sentinel_greeks_reach_ib_async(
    sim: TwsSimulator, ib: Any, mode: str, portfolio: Portfolio, clock: FakeClock
) -> None:
    await sim.sentinel_greeks(mode)
    ticker = ib.reqMktData(contract_of(ib, SPY_PUT))
    await until(lambda: ticker.bid > 0)
    await barrier(ib)
    greeks = ticker.modelGreeks
    if mode == "missing":
        assert greeks is None
    elif mode == "minus2":
        # ib_async maps most "not computed" values to None, but not vega and theta
        assert (greeks.vega, greeks.theta) == (-2.0, -2.0)
        assert (greeks.delta, greeks.gamma, greeks.impliedVol, greeks.undPrice) == (None,) * 4
    elif mode == "vega_theta":
        want = expected_greeks(portfolio, SPY_PUT, clock.now())
        assert (greeks.vega, greeks.theta) == (-2.0, -2.0)
        assert greeks.delta == pytest.approx(want.delta, rel=1e-12)
        assert greeks.gamma == pytest.approx(want.gamma, rel=1e-12)
    elif mode == "dblmax":
        assert greeks.vega == greeks.delta == 1.7976931348623157e308
    else:
        assert math.isnan(greeks.vega)
        assert math.isnan(greeks.delta)


async def test_sentinel_greeks_end_after_their_time(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    await sim.sentinel_greeks("minus2", seconds=5)
    ticker = ib.reqMktData(contract_of(ib, SPY_PUT))
    await until(lambda: ticker.modelGreeks is not None)
    assert ticker.modelGreeks.vega == -2.0
    await clock.advance(6)
    await until(lambda: ticker.modelGreeks.vega != -2.0)
    assert ticker.modelGreeks.vega > 0


async def test_position_changes_reach_subscribed_clients(
    sim: TwsSimulator, ib: Any, portfolio: Portfolio
) -> None:
    def held(conid: int) -> float | None:
        return next((p.position for p in ib.positions() if p.contract.conId == conid), None)

    def item(conid: int) -> float | None:
        return next((i.position for i in ib.portfolio() if i.contract.conId == conid), None)

    sim.set_position(ACCOUNT, SPY_PUT, -5)
    await until(lambda: held(SPY_PUT) == -5 and item(SPY_PUT) == -5)
    sim.remove_position(ACCOUNT, SPY_CONID)
    await until(lambda: held(SPY_CONID) is None and item(SPY_CONID) is None)
    # a change made on the Portfolio directly, in a contract nobody held before
    new = Instrument(
        900000001, "SPY", "OPT", expiry=portfolio.instrument(SPY_PUT).expiry, strike=590.0,
        right="P", multiplier=100.0, underlying_conid=SPY_CONID,
    )  # fmt: skip
    portfolio.set_position(ACCOUNT, new, 4)
    await until(lambda: held(900000001) == 4 and item(900000001) == 4)


async def test_framed_garbage_does_not_kill_the_session(sim: TwsSimulator, ib: Any) -> None:
    await sim.garbage(200)
    await barrier(ib)
    assert ib.isConnected()


async def test_account_updates_repeat_on_the_account_interval(
    sim: TwsSimulator, ib: Any, clock: FakeClock
) -> None:
    updates: list[Any] = []
    ib.updatePortfolioEvent += updates.append
    await clock.advance(sim.account_interval - 1)
    await barrier(ib)
    assert updates == []
    await clock.advance(1)
    await until(lambda: len(updates) == len(sim.portfolio.positions()))


async def test_fault_script_runs_on_the_simulator_clock(
    sim: TwsSimulator, portfolio: Portfolio, clock: FakeClock, tmp_path: Path
) -> None:
    script = tmp_path / "faults.json"
    script.write_text(
        json.dumps(
            [
                {"at": 10, "fault": "refuse", "seconds": 5},
                {"at": 2, "fault": "sentinel_greeks", "mode": "nan", "seconds": 3},
                {
                    "at": 1,
                    "fault": "set_position",
                    "account": ACCOUNT,
                    "conid": SPY_CONID,
                    "quantity": 300,
                },
            ]
        )
    )
    steps = load_fault_script(script)
    assert [s.at for s in steps] == [1, 2, 10]
    task = sim.run_faults(steps)
    await clock.advance(1)
    position = portfolio.position(ACCOUNT, SPY_CONID)
    assert position is not None
    assert position.quantity == 300
    assert sim.sentinel_mode is None
    await clock.advance(1)
    assert sim.sentinel_mode == "nan"
    await clock.advance(3)
    assert sim.sentinel_mode is None
    await clock.advance(5)
    assert sim.refusing
    await clock.advance(5)
    assert not sim.refusing
    assert task.done()


async def test_simulator_runs_a_script_given_at_construction(
    portfolio: Portfolio, clock: FakeClock
) -> None:
    steps = parse_fault_script([{"at": 4, "fault": "freeze", "seconds": 2}])
    async with TwsSimulator(portfolio, clock=clock, faults=steps) as simulator:
        await clock.advance(4)
        assert simulator.frozen
        await clock.advance(2)
        assert not simulator.frozen


@pytest.mark.parametrize(
    "script",
    [
        {"at": 1, "fault": "restart"},  # not a list
        [{"at": 1, "fault": "explode"}],
        [{"at": -1, "fault": "restart"}],
        [{"fault": "restart"}],
        [{"at": 1, "fault": "sentinel_greeks"}],
        [{"at": 1, "fault": "sentinel_greeks", "mode": "zero"}],
        [{"at": 1, "fault": "daily_reset", "kind": "1300"}],
        [{"at": 1, "fault": "freeze", "seconds": "5"}],
        [{"at": 1, "fault": "restart", "downtme": 5}],
        [{"at": 1, "fault": "garbage", "nbytes": True}],
    ],
)
def test_bad_fault_scripts_are_rejected(script: object) -> None:
    with pytest.raises(FaultScriptError):
        parse_fault_script(script)


async def test_request_log_sees_global_cancel(sim: TwsSimulator, ib: Any) -> None:
    assert sim.count_requests(58) == 0
    ib.reqGlobalCancel()
    record = await asyncio.wait_for(sim.wait_for_request(58), 3)
    assert (record.client_id, record.fields) == (10, ("58", "1"))
    assert sim.count_requests(58, client_id=10) == 1
    assert sim.count_requests(58, client_id=11) == 0


# -- the wire, with a raw socket ----------------------------------------------------------


def frame(text: str) -> bytes:
    body = text.encode()
    return struct.pack(">I", len(body)) + body


async def raw_session(port: int, offer: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"API\0" + frame(offer))
    return reader, writer


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[list[str]]:
    buffer, frames = FrameBuffer(), list[list[str]]()
    async with asyncio.timeout(3):
        while len(frames) < count:
            data = await reader.read(4096)
            assert data, "connection closed"
            frames += buffer.feed(data)
    return frames


@pytest.mark.parametrize(
    ("offer", "version"),
    [("v100..160", 160), ("v157..178", 178), ("v170..200", 178), ("v157..178 +PACEAPI", 178)],
)
async def test_version_negotiation(sim: TwsSimulator, offer: str, version: int) -> None:
    reader, writer = await raw_session(sim.port, offer)
    try:
        (reply,) = await read_frames(reader, 1)
        # FakeClock starts at 2026-01-05 15:00 UTC, 10:00 in New York
        assert reply == [str(version), "20260105 10:00:00 EST"]
    finally:
        writer.close()


@pytest.mark.parametrize("offer", ["v100..150", "v179..190", "garbage"])
async def test_no_common_version_is_refused(sim: TwsSimulator, offer: str) -> None:
    reader, writer = await raw_session(sim.port, offer)
    try:
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(("offer", "error_fields"), [("v100..160", 5), ("v157..178", 6)])
async def test_start_api_replies_field_by_field(
    sim: TwsSimulator, offer: str, error_fields: int
) -> None:
    reader, writer = await raw_session(sim.port, offer)
    try:
        await read_frames(reader, 1)
        writer.write(frame("71\x002\x007\x00\x00"))
        accounts, next_id, *notices = await read_frames(reader, 5)
        assert accounts == ["15", "1", ACCOUNT]
        assert next_id == ["9", "1", "1"]
        assert [n[:4] for n in notices] == [["4", "2", "-1", "2104"], ["4", "2", "-1", "2106"],
                                            ["4", "2", "-1", "2158"]]  # fmt: skip
        assert {len(n) for n in notices} == {error_fields}
        assert sim.client_ids == {7}
    finally:
        writer.close()


@pytest.mark.parametrize("framed", [True, False])
async def test_garbage_is_framed_or_raw(sim: TwsSimulator, framed: bool) -> None:
    reader, writer = await raw_session(sim.port, "v157..178")
    try:
        await read_frames(reader, 1)
        writer.write(frame("71\x002\x007\x00\x00"))
        await read_frames(reader, 5)
        await sim.garbage(16, framed=framed)
        data = await asyncio.wait_for(reader.readexactly(16 + 4 * framed), 3)
        assert (struct.unpack(">I", data[:4])[0] == 16) is framed
    finally:
        writer.close()


# -- command line -------------------------------------------------------------------------


def test_cli_reports_a_missing_portfolio(tmp_path: Path) -> None:
    assert sim_main(["socket", "--port", "0", "--portfolio", str(tmp_path / "none.json")]) == 1


def test_cli_reports_a_bad_fault_script(tmp_path: Path) -> None:
    bad = tmp_path / "faults.json"
    bad.write_text('[{"at": 1, "fault": "explode"}]')
    assert sim_main(["socket", "--port", "0", "--faults", str(bad)]) == 1


def test_cli_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        sim_main([])
