"""One ib_async connection of the SOCKET feed: account, positions, subscriptions, IB codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

from ib_async import IB, Contract, Position, Ticker

from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.greeks import (
    SEC_TYPES,
)
from ibkr_bridge.core.records import Status
from ibkr_bridge.core.redaction import gateway_text
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.socket._wire import (
    _DETAILS,
    _DETAILS_IN_FLIGHT,
    _SMART_SEC_TYPES,
    CLIENT_ID_IN_USE,
    CONNECTIVITY_LOST,
    FARM_BROKEN,
    FARM_OK,
    MARKET_FARM_BROKEN,
    MARKET_FARM_OK,
    NO_SUCH_TICKER,
    RESTORED_DATA_KEPT,
    RESTORED_DATA_LOST,
    SOCKET_PORT_RESET,
    FrameLimit,
    T,
    _Lookup,
    _market_contract,
    _Subscription,
    farm_name,
)

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket.feed import SocketFeed  # the feed owning this session

log = logging.getLogger(__name__)


class _Session:
    """One ``IB`` instance from connect to close; never reused after it closes.

    Event handlers are bound to the session, not the feed, and check ``closed`` first, so a
    dead IB instance cannot reach the listener even if ib_async emits late.
    """

    def __init__(self, feed: SocketFeed) -> None:
        self.feed = feed
        self.ib = IB()
        self.account: str | None = None
        self.ready = False  # connect() finished: events go to the listener as they are
        self.synced = False  # positions received (positionEnd) for this instance
        self.closed = False
        self.data_lost = False  # between IB 1100 and 1101/1102
        self.needs_resubscribe = False  # after IB 1101 until resubscribe()
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.last_api_error = ""
        self.started_at = feed.clock.monotonic()
        self.subs: dict[int, _Subscription] = {}
        # reqIds we cancelled: IB's 300 "Can't find EId" for them (the Gateway had already
        # dropped them, as after 1101) is expected, not worth an api_logs row.
        self.cancelled: set[int] = set()
        self.price_conid: dict[str, int] = {}  # underlying symbol -> conId of its price ticker
        # The feed's caches, kept across sessions: conId -> contract with a real exchange,
        # (symbol, currency) -> stock.
        self.resolved: dict[int, Contract] = feed._resolved
        self.stocks: dict[tuple[str, str], Contract] = feed._stocks
        # Lookups still needed, done by the resolver task after (not inside) connect.
        self.lookups: dict[Hashable, _Lookup] = {}
        self.lookups_running: set[Hashable] = set()
        self.lookups_failed: set[Hashable] = set()  # retried after the next position change
        self.resolver: asyncio.Task[None] | None = None
        self.broken_farms: set[str] = set()  # market-data farms IB reported broken (2103)
        self.first_seen: dict[int, float] = {}  # conId -> when a leg without a stream appeared
        self.lock = asyncio.Lock()
        self.dirty = False
        self.worker: asyncio.Task[None] | None = None
        self.frames = FrameLimit(feed.max_frame_bytes)
        self.frame_refused = False
        self._attach()

    # -- events ---------------------------------------------------------------------------

    def _attach(self) -> None:
        ib = self.ib
        # Every byte the socket reads passes the frame-size check before ib_async's own
        # handler buffers it. Done on this session's IB instance only (each session has
        # its own), never on ib_async's classes, so nobody else's IB objects change.
        conn = ib.client.conn
        self._deliver: Callable[[bytes], None] = ib.client._onSocketHasData
        if self._deliver not in conn.hasData:
            # Another ib_async layout: wrapping blindly would hand every byte over twice.
            raise RuntimeError("ib_async's socket data handler is not where 2.1.0 has it")
        conn.hasData -= self._deliver
        conn.hasData += self.on_socket_data
        # ib_async's own handler answers IB 1102 with reqAccountSummary: a request this
        # bridge has no use for on a shared Gateway.
        ib.errorEvent -= ib._onError
        ib.errorEvent += self.on_error
        ib.disconnectedEvent += self.on_disconnected
        ib.positionEvent += self.on_position
        ib.pendingTickersEvent += self.on_tickers
        ib.client.apiError += self.on_api_error

    def _detach(self) -> None:
        ib = self.ib
        with contextlib.suppress(Exception):
            ib.errorEvent -= self.on_error
            ib.disconnectedEvent -= self.on_disconnected
            ib.positionEvent -= self.on_position
            ib.pendingTickersEvent -= self.on_tickers
            ib.client.apiError -= self.on_api_error

    @property
    def listener(self) -> FeedListener:
        return self.feed.listener

    def on_socket_data(self, data: bytes) -> None:
        if self.frame_refused:
            return  # the connection is being dropped: nothing more reaches ib_async
        size = self.frames.oversized(data)
        if size is None:
            self._deliver(data)
            return
        self.frame_refused = True
        # Only numbers are quoted, never the frame's bytes. lost() closes the socket and
        # tells the listener (or fails a pending connect): the normal reconnect path.
        limit = self.frames.limit
        self.lost(
            f"gateway announced a frame of {size} bytes, more than {limit}: connection dropped"
        )

    def on_api_error(self, message: str) -> None:
        if self.closed:
            return
        self.last_api_error = gateway_text(message)
        if not self.ready:
            # ib_async only reports a socket closed during the handshake here (and then
            # waits out its timeout): fail the connect now.
            self.fail(ConnectionError(f"gateway closed the API connection: {message}"))

    def on_disconnected(self) -> None:
        if self.closed:
            return
        reason = self.last_api_error or "connection to the gateway closed"
        self.lost(f"socket closed ({reason})")

    def on_position(self, position: Position) -> None:
        if self.closed or not self.synced or position.account != self.account:
            return
        self.lookups_failed.clear()
        self.request_reconcile()

    def on_tickers(self, tickers: set[Ticker]) -> None:
        # ib_async replaces modelGreeks with a new object on every tickOptionComputation,
        # so a new object is a new Greeks tick: its arrival time is the leg's Greeks age.
        if self.closed:
            return
        now = self.feed.clock.monotonic()
        for ticker in tickers:
            contract = ticker.contract
            sub = self.subs.get(contract.conId) if contract is not None else None
            if sub is not None and sub.ticker is ticker:
                greeks = ticker.modelGreeks
                if greeks is not None and greeks is not sub.greeks:
                    sub.greeks = greeks
                    sub.greeks_at = now

    def on_error(self, req_id: int, code: int, message: str, contract: Contract | None) -> None:
        if self.closed:
            return
        # The Gateway's text goes into api_logs and the log: never verbatim or unbounded.
        message = gateway_text(message)
        detail: dict[str, Any] = {"code": code, "req_id": req_id}
        if contract is not None:
            detail["contract"] = contract.localSymbol or contract.symbol or str(contract.conId)
        if code == CLIENT_ID_IN_USE:
            client = self.feed.client_id
            text = (
                f"clientId {client} is already in use at {self.feed.host}:{self.feed.port} "
                f"(IB 326: {message}); another session holds it, often the previous one "
                "right after a Gateway restart"
            )
            self.listener.feed_event("error", text, status="error", detail=detail)
            self.lost(text, GatewayError(text))
        elif code == SOCKET_PORT_RESET:
            self.lost(f"IB {code}: {message}")
        elif code == CONNECTIVITY_LOST:
            self.data_lost = True
            self.listener.feed_data_lost(code, message)
        elif code == RESTORED_DATA_LOST:
            self.data_lost = False
            self.needs_resubscribe = True
            self.listener.feed_data_restored(code, message, resubscribe=True)
        elif code == RESTORED_DATA_KEPT:
            self.data_lost = False
            self.listener.feed_data_restored(code, message, resubscribe=False)
        elif code in FARM_BROKEN or code in FARM_OK:
            if code == MARKET_FARM_BROKEN:
                self.broken_farms.add(farm_name(message))
            elif code in MARKET_FARM_OK:
                self.broken_farms.discard(farm_name(message))
            status: Status = "warning" if code in FARM_BROKEN else "info"
            self.listener.feed_event("farm", f"IB {code}: {message}", status=status, detail=detail)
        elif code == NO_SUCH_TICKER and req_id in self.cancelled:
            log.debug("IB 300 for cancelled reqId %d: already gone", req_id)
        else:
            # 2100-2199 are IB's warnings ("farm connecting", "account data unsubscribed").
            status = "warning" if 2100 <= code < 2200 else "error"
            self.listener.feed_event("error", f"IB {code}: {message}", status=status, detail=detail)

    # -- lifecycle ------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Make a pending :meth:`race` raise ``exc`` (the first failure wins)."""
        if self.failure is None:
            self.failure = exc
            self.failed.set()

    async def race(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the session fails first (326, socket closed)."""
        task = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                # The task's own cleanup (ib_async disconnects on cancel) must run now.
                await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                # ib_async's own error (refused, timed out) names the cause best.
                raise error
            if self.failure is None:
                return task.result()
        assert self.failure is not None
        raise self.failure

    def lost(self, reason: str, error: BaseException | None = None) -> None:
        """The connection is gone: fail a pending connect, or tell the listener once."""
        if self.closed:
            return
        if not self.ready:
            # connect() raises this and closes the session; the Bridge hears it from there.
            self.fail(error if error is not None else ConnectionError(reason))
            return
        age = self.feed.clock.monotonic() - self.started_at
        # Called from inside ib_async's message handling: the socket is torn down on the
        # next loop iteration, not under the decoder's feet.
        self.close(reason, defer=True)
        self.listener.feed_disconnected(f"{reason} after {age:.0f} s connected")

    def close(self, reason: str = "closed", *, defer: bool = False) -> None:
        """Drop everything; quiet and idempotent."""
        if self.closed:
            return
        self.closed = True
        self.fail(ConnectionError(f"connection closed: {reason}"))
        self._detach()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        if self.resolver is not None and not self.resolver.done():
            self.resolver.cancel()
        self.subs.clear()
        self.price_conid.clear()
        if defer:
            asyncio.get_running_loop().call_soon(self._close_ib)
        else:
            self._close_ib()

    def _close_ib(self) -> None:
        try:
            # IB.disconnect() does nothing while the handshake is still running, so the
            # client's socket is closed directly as well.
            self.ib.disconnect()
            self.ib.client.disconnect()  # type: ignore[no-untyped-call]  # ib_async lacks hints
        except Exception:  # a dying connection must not take the caller with it
            log.debug("closing the IB connection failed", exc_info=True)

    @property
    def usable(self) -> bool:
        return (
            self.ready
            and self.synced
            and not self.closed
            and not self.data_lost
            and not self.needs_resubscribe
            and self.ib.isConnected()
        )

    # -- positions and subscriptions ------------------------------------------------------

    def open_positions(self) -> list[Position]:
        if self.account is None:
            return []
        return [p for p in self.ib.positions(self.account) if p.position != 0]

    def request_reconcile(self) -> None:
        """Bring subscriptions in line with positions soon (coalesced, in order)."""
        self.dirty = True
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(
                self._reconcile_in_background(), name="ibkr-bridge-socket-subscriptions"
            )

    async def _reconcile_in_background(self) -> None:
        try:
            await self.drain()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.closed:
                self.listener.feed_event(
                    "error",
                    f"following a position change failed: {exc!r}",
                    status="error",
                    detail={"error": repr(exc)},
                )

    async def drain(self) -> None:
        """Reconcile until no position change is pending."""
        async with self.lock:
            while self.dirty and not self.closed:
                self.dirty = False
                await self._reconcile()

    async def _request(self, awaitable: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(awaitable, self.feed.request_timeout)
        except TimeoutError:
            raise GatewayError(
                f"no answer to {what} within {self.feed.request_timeout:g} s"
            ) from None

    async def _qualified(self, contract: Contract, what: str) -> Contract | None:
        try:
            found = await self._request(self.ib.qualifyContractsAsync(contract), what)
        except GatewayError as exc:
            self.listener.feed_event("error", str(exc), status="warning")
            return None
        result = found[0] if found else None
        if not isinstance(result, Contract) or not result.conId or not result.exchange:
            self.listener.feed_event(
                "error",
                f"{what}: no unique contract, its market data is not requested",
                status="warning",
            )
            return None
        return result

    def _contract_for(self, contract: Contract) -> Contract | None:
        """The position's contract in a form reqMktData accepts; None until it is known."""
        if contract.exchange:
            return _market_contract(contract, contract.exchange)
        if contract.secType in _SMART_SEC_TYPES:
            return _market_contract(contract, "SMART")
        conid = contract.conId
        known = self.resolved.get(conid)
        if known is None:

            def store(found: Contract) -> None:
                self.resolved[conid] = _market_contract(found, found.exchange)

            what = f"contract details of conId {conid} ({contract.localSymbol})"
            self._look_up(("conid", conid), Contract(conId=conid), what, store)
        return known

    def _stock(self, symbol: str, currency: str) -> Contract | None:
        key = (symbol, currency)
        known = self.stocks.get(key)
        if known is None:

            def store(found: Contract) -> None:
                self.stocks[key] = _market_contract(found, "SMART")

            stock = Contract(secType="STK", symbol=symbol, exchange="SMART", currency=currency)
            what = f"the underlying stock {symbol} {currency}"
            self._look_up(("stock", *key), stock, what, store)
        return known

    # -- contract details: after connect, paced, cached by the feed -----------------------

    def _look_up(
        self, key: Hashable, query: Contract, what: str, store: Callable[[Contract], None]
    ) -> None:
        """Queue a lookup for the resolver; the leg waits unsubscribed, like one without Greeks.

        Connect never waits for these: on a large futures book one lookup per leg, in a
        row, would not fit in IB_CONNECT_TIMEOUT.
        """
        if self.closed or key in self.lookups or key in self.lookups_running:
            return
        if key in self.lookups_failed:
            return  # reported once; tried again after the next position change
        self.lookups[key] = _Lookup(query, what, store)
        if self.resolver is None or self.resolver.done():
            self.resolver = asyncio.get_running_loop().create_task(
                self._resolve(), name="ibkr-bridge-socket-contract-details"
            )

    async def _resolve(self) -> None:
        """Run the queued lookups, a few at a time under the feed's pacer, then subscribe."""
        running: set[asyncio.Task[bool]] = set()
        try:
            while not self.closed:
                if self.lookups and len(running) < _DETAILS_IN_FLIGHT:
                    await self.feed._pacer.acquire(_DETAILS)
                    if self.closed:
                        return
                    key, lookup = next(iter(self.lookups.items()))
                    del self.lookups[key]
                    self.lookups_running.add(key)
                    running.add(asyncio.ensure_future(self._fetch(key, lookup)))
                    continue
                if not running:
                    return
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if any(task.result() for task in done):
                    # Subscribe what is known now; reconciles are coalesced.
                    self.request_reconcile()
        finally:
            for task in running:
                task.cancel()

    async def _fetch(self, key: Hashable, lookup: _Lookup) -> bool:
        try:
            found = await self._qualified(lookup.query, lookup.what)
        except Exception as exc:  # e.g. the connection went: the session is closing anyway
            log.debug("%s failed", lookup.what, exc_info=True)
            if not self.closed:
                self.listener.feed_event("error", f"{lookup.what}: {exc!r}", status="warning")
            found = None
        finally:
            self.lookups_running.discard(key)
        if found is None:
            self.lookups_failed.add(key)
            return False
        lookup.store(found)
        return True

    async def _reconcile(self) -> None:
        positions = [p for p in self.open_positions() if p.contract.secType in SEC_TYPES]
        wanted: dict[int, Contract] = {}
        prices: dict[str, int] = {}
        for pos in positions:
            market = self._contract_for(pos.contract)
            if market is None:
                continue
            wanted[market.conId] = market
            if pos.contract.secType == "STK":
                prices[pos.contract.symbol] = market.conId
                # The shares are the options' underlying: no lookup if they are sold later.
                self.stocks.setdefault((pos.contract.symbol, pos.contract.currency), market)
        # Stock options are priced off the stock's own ticker; a futures option carries
        # its underlying future's price in its model Greeks (undPrice).
        for pos in positions:
            c = pos.contract
            if c.secType == "OPT" and c.symbol not in prices:
                stock = self._stock(c.symbol, c.currency)
                if stock is not None:
                    wanted[stock.conId] = stock
                    prices[c.symbol] = stock.conId
        if self.closed:
            return
        for conid in [c for c in self.subs if c not in wanted]:
            self._cancel(conid)
        for conid, contract in wanted.items():
            if conid not in self.subs:
                self._subscribe(contract)
        self.price_conid = prices

    def _subscribe(self, contract: Contract) -> None:
        ticker = self.ib.reqMktData(contract)
        # ib_async reuses one Ticker per conId: Greeks from an earlier stream must not
        # count as received for this one.
        ticker.modelGreeks = None
        req_id = self.ib.wrapper.ticker2ReqId["mktData"].get(ticker, 0)
        self.subs[contract.conId] = _Subscription(
            contract, ticker, req_id, self.feed.clock.monotonic()
        )

    def _cancel(self, conid: int) -> None:
        sub = self.subs.pop(conid)
        self.cancelled.add(sub.req_id)
        self.ib.cancelMktData(sub.contract)
        # ib_async keeps routing the old reqId to the ticker; late ticks must not land.
        self.ib.wrapper.reqId2Ticker.pop(sub.req_id, None)

    async def resubscribe(self) -> None:
        async with self.lock:
            self.needs_resubscribe = True
            # "Data lost" covers the position stream too: fetch the book again from empty,
            # since a position closed during the outage would never be reported as 0.
            self.synced = False
            self.ib.wrapper.positions.clear()
            self.lookups_failed.clear()
            await self._request(self.ib.reqPositionsAsync(), "reqPositions")
            self.synced = True
            self.ib.reqMarketDataType(self.feed.market_data_type)
            for conid in list(self.subs):
                contract = self.subs[conid].contract
                self._cancel(conid)
                self._subscribe(contract)
            self.dirty = True
        await self.drain()
        self.needs_resubscribe = False
