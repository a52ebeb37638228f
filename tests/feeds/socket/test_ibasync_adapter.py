"""SOCKET mode: the ib_async internals the feed relies on are where, and behave as, 2.1.0 has them.

Every reach of :mod:`ibkr_bridge.feeds.socket._ibasync` is checked here against a real ``IB``
(and, for the streams and positions, against the TWS simulator), so an ib_async upgrade that
moves or changes one fails here first, by name, rather than deep inside a feed test.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import ib_async
import pytest
from ib_async import IB, Contract, StartupFetchNONE
from ib_async.client import Client

from ibkr_bridge.feeds.socket import _ibasync
from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.tws import TwsSimulator

from .test_socket_feed import GUARD, eventually


def frame(*fields: str) -> bytes:
    body = "".join(f"{f}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


@asynccontextmanager
async def live_ib() -> AsyncIterator[tuple[IB, TwsSimulator]]:
    """A plain IB connected to the simulator, positions requested, nothing else fetched."""
    async with TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim:
        ib = IB()
        try:
            await asyncio.wait_for(
                ib.connectAsync(
                    "127.0.0.1", sim.port, 31, GUARD, readonly=True, fetchFields=StartupFetchNONE
                ),
                GUARD,
            )
            await asyncio.wait_for(ib.reqPositionsAsync(), GUARD)
            yield ib, sim
        finally:
            ib.disconnect()


def test_ib_async_is_the_pinned_release() -> None:
    assert ib_async.__version__ == _ibasync.PINNED_VERSION == "2.1.0"


def test_the_socket_data_handler_is_swapped_on_this_instance_only() -> None:
    ib, other = IB(), IB()
    seen: list[bytes] = []
    check = seen.append
    assert ib.client._onSocketHasData in ib.client.conn.hasData
    assert list(inspect.signature(Client._onSocketHasData).parameters) == ["self", "data"]

    deliver = _ibasync.intercept_socket_data(ib, check)

    assert deliver == ib.client._onSocketHasData
    assert check in ib.client.conn.hasData
    assert len(ib.client.conn.hasData) == 1
    assert other.client._onSocketHasData in other.client.conn.hasData
    data = frame("1", "2", "3")
    ib.client.conn.hasData.emit(data)
    assert seen == [data]
    assert _ibasync.messages_received(ib) == 0  # nothing reached ib_async yet
    # A second swap finds ib_async's handler gone: the layout check refuses.
    with pytest.raises(RuntimeError, match=r"not where 2\.1\.0 has it"):
        _ibasync.intercept_socket_data(ib, check)


def test_the_message_count_grows_by_one_per_whole_frame() -> None:
    ib = IB()
    deliver = _ibasync.intercept_socket_data(ib, lambda data: None)
    assert _ibasync.messages_received(ib) == 0
    # Two managedAccounts messages: harmless before the handshake (a 2-field frame is one).
    two = frame("15", "1", "DU1") + frame("15", "1", "DU1,DU2")
    deliver(two[:3])  # half a length prefix: no message yet
    assert _ibasync.messages_received(ib) == 0
    deliver(two[3:])
    assert _ibasync.messages_received(ib) == 2


async def test_ib_async_s_error_handler_asks_for_the_account_summary_on_1102() -> None:
    # The reason the handler is taken off: left on, IB 1102 sends reqAccountSummary.
    ib = IB()
    asked: list[bool] = []

    async def summary() -> None:
        asked.append(True)

    ib.reqAccountSummaryAsync = summary  # type: ignore[method-assign]
    assert ib._onError in ib.errorEvent
    params = list(inspect.signature(IB._onError).parameters)
    assert params == ["self", "reqId", "errorCode", "errorString", "contract"]
    # ib_async leaves IB._onError unannotated.
    ib._onError(-1, 1102, "restored, data maintained", None)  # type: ignore[no-untyped-call]
    await asyncio.sleep(0)
    assert asked == [True]

    heard: list[tuple[int, int, str, Contract | None]] = []
    _ibasync.replace_error_handler(ib, lambda *args: heard.append(args))
    assert ib._onError not in ib.errorEvent
    ib.errorEvent.emit(-1, 1102, "restored", None)
    await asyncio.sleep(0)
    assert heard == [(-1, 1102, "restored", None)]
    assert asked == [True]


async def test_a_market_data_stream_s_req_id_and_its_routing_after_cancel() -> None:
    async with live_ib() as (ib, _sim):
        stock = next(p.contract for p in ib.positions() if p.contract.secType == "STK")
        contract = Contract(conId=stock.conId, symbol=stock.symbol, secType="STK")
        contract.exchange, contract.currency = "SMART", stock.currency
        ticker = ib.reqMktData(contract)
        req_id = _ibasync.market_data_req_id(ib, ticker)
        assert req_id > 0
        assert ib.wrapper.reqId2Ticker[req_id] is ticker
        ib.cancelMktData(contract)
        assert _ibasync.market_data_req_id(ib, ticker) == 0
        # ib_async still routes the cancelled reqId to the ticker: the reason to forget it.
        assert ib.wrapper.reqId2Ticker.get(req_id) is ticker
        _ibasync.forget_req_id(ib, req_id)
        assert req_id not in ib.wrapper.reqId2Ticker
        _ibasync.forget_req_id(ib, req_id)  # twice is harmless


async def test_the_position_cache_empties_and_reqpositions_rebuilds_it() -> None:
    async with live_ib() as (ib, _sim):
        before = {p.contract.conId for p in ib.positions()}
        assert before
        assert set(ib.wrapper.positions) == {p.account for p in ib.positions()}
        _ibasync.forget_positions(ib)
        assert ib.positions() == []
        await asyncio.wait_for(ib.reqPositionsAsync(), GUARD)
        assert {p.contract.conId for p in ib.positions()} == before


async def test_messages_count_on_a_live_connection_and_the_socket_closes_directly() -> None:
    async with live_ib() as (ib, sim):
        mark = _ibasync.messages_received(ib)
        await asyncio.wait_for(ib.reqCurrentTimeAsync(), GUARD)
        assert _ibasync.messages_received(ib) > mark
        assert list(inspect.signature(Client.disconnect).parameters) == ["self"]
        _ibasync.close_socket(ib)
        assert not ib.isConnected()
        await eventually(lambda: sim.open_connections == 0, "the socket to close")


async def test_a_request_held_in_the_throttle_queue_is_seen_written_when_it_leaves() -> None:
    async with live_ib() as (ib, sim):
        client = ib.client
        # More requests than the throttle writes in one interval: the last ones wait.
        count = 2 * client.MaxRequests
        for _ in range(count):
            client.reqCurrentTime()  # type: ignore[no-untyped-call]
        mark = _ibasync.send_mark(ib)
        assert client._msgQ, "the throttle queued nothing"
        assert not _ibasync.sent(ib, mark)
        assert await _ibasync.until_sent(ib, mark, GUARD)
        # The write is wrapped on this instance's connection only, never on the class.
        assert "sendMsg" in vars(client.conn)
        assert "sendMsg" not in vars(IB().client.conn)
        assert _ibasync.sent(ib, mark)
        assert not client._msgQ
        await eventually(lambda: sim.count_requests(49) >= count, "every request to arrive")
        # Already written: answered at once, without waiting.
        assert await _ibasync.until_sent(ib, _ibasync.send_mark(ib), 0.0)


async def test_until_sent_gives_up_when_the_queue_stops_draining() -> None:
    async with live_ib() as (ib, _):
        client = ib.client
        for _ in range(client.MaxRequests + 1):
            client.reqCurrentTime()  # type: ignore[no-untyped-call]
        mark = _ibasync.send_mark(ib)
        client.conn.transport = None  # nothing more is written (ib_async's closed socket)
        assert not await _ibasync.until_sent(ib, mark, 0.0)
