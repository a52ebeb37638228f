"""The SOCKET feed's market-data subscriptions: one stream per leg, in line with the positions.

:class:`_Subscriptions` is the part of a session (:class:`~._session._Session` adds the
connection and its events) that follows the book: after each position change it
reconciles, cancelling the streams no position needs and requesting the new ones. Legs
needing details first (futures, FOPs and their futures, an option's stock) wait unsubscribed
like legs without Greeks, until looked up: after connect, paced, cached by the feed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING

from ib_async import IB, Contract, ContractDetails, Position

from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.greeks import SEC_TYPES
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.socket._ibasync import (
    forget_positions,
    forget_req_id,
    market_data_req_id,
    send_mark,
    until_sent,
)
from ibkr_bridge.feeds.socket._underlyings import fop_futures
from ibkr_bridge.feeds.socket._wire import (
    _DETAILS,
    _DETAILS_IN_FLIGHT,
    _SMART_SEC_TYPES,
    T,
    _Lookup,
    _market_contract,
    _Subscription,
    _unique,
)

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket.feed import SocketFeed  # the feed owning this session

log = logging.getLogger(__name__)


class _Subscriptions:
    """The streams of one ``IB`` instance and the lookups they wait for."""

    closed: bool  # set by the session: once True, nothing more is requested

    def __init__(self, feed: SocketFeed, ib: IB) -> None:
        self.feed = feed
        self.ib = ib
        self.accounts: tuple[str, ...] = ()  # reported on; set once connected
        self.synced = False  # positions received (positionEnd) for this instance
        self.needs_resubscribe = False  # after IB 1101 until resubscribe()
        self.subs: dict[int, _Subscription] = {}
        # reqIds we cancelled: IB's 300 "Can't find EId" for them (the Gateway had already
        # dropped them, as after 1101) is expected, not worth an api_logs row.
        self.cancelled: set[int] = set()
        self.price_conid: dict[str, int] = {}  # underlying symbol -> conId of its price ticker
        # The feed's caches, kept across sessions: conId -> contract with a real exchange,
        # (symbol, currency) -> stock, FOP conId -> its future's (IB's underConId).
        self.resolved: dict[int, Contract] = feed._resolved
        self.stocks: dict[tuple[str, str], Contract] = feed._stocks
        self.under_conids: dict[int, int] = feed._under_conids
        # Lookups still needed, done by the resolver task after (not inside) connect.
        self.lookups: dict[Hashable, _Lookup] = {}
        self.lookups_running: set[Hashable] = set()
        self.lookups_failed: set[Hashable] = set()  # retried after the next position change
        self.resolver: asyncio.Task[None] | None = None
        self.first_seen: dict[int, float] = {}  # conId -> when a leg without a stream appeared
        self.lock = asyncio.Lock()
        self.dirty = False
        self.worker: asyncio.Task[None] | None = None

    @property
    def listener(self) -> FeedListener:
        return self.feed.listener

    def open_positions(self) -> list[Position]:
        """The open positions of every account reported on (a contract may be in several)."""
        return [p for a in self.accounts for p in self.ib.positions(a) if p.position != 0]

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
        timeout = self.feed.request_timeout
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise GatewayError(f"no answer to {what} within {timeout:g} s") from None

    async def _details(self, query: Contract, what: str) -> list[ContractDetails]:
        """reqContractDetails, timed from its write: not its wait in ib_async's throttle queue."""
        answer = asyncio.ensure_future(self.ib.reqContractDetailsAsync(query))
        try:
            if not await until_sent(self.ib, send_mark(self.ib), self.feed.request_timeout):
                raise GatewayError(f"{what}: not sent to the gateway, ib_async's queue is stuck")
        except BaseException:
            answer.cancel()
            raise
        return await self._request(answer, what)

    async def _qualified(self, contract: Contract, what: str) -> Contract | None:
        try:
            details = await self._details(contract, what)
        except GatewayError as exc:
            self.listener.feed_event("error", str(exc), status="warning")
            return None
        result = _unique(contract, details, self.under_conids)
        if result is None or not result.conId or not result.exchange:
            message = f"{what}: no unique contract, its market data is not requested"
            self.listener.feed_event("error", message, status="warning")
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
        for pos in positions:  # stock options are priced off the stock's own ticker
            c = pos.contract
            if c.secType == "OPT" and c.symbol not in prices:
                stock = self._stock(c.symbol, c.currency)
                if stock is not None:
                    wanted[stock.conId] = stock
                    prices[c.symbol] = stock.conId
        fop_futures(self, positions, wanted)  # and futures options off their future's
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
        req_id = market_data_req_id(self.ib, ticker)
        self.subs[contract.conId] = _Subscription(
            contract, ticker, req_id, self.feed.clock.monotonic()
        )

    def _cancel(self, conid: int) -> None:
        sub = self.subs.pop(conid)
        self.cancelled.add(sub.req_id)
        self.ib.cancelMktData(sub.contract)
        # ib_async keeps routing the old reqId to the ticker; late ticks must not land.
        forget_req_id(self.ib, sub.req_id)

    async def resubscribe(self) -> None:
        async with self.lock:
            self.needs_resubscribe = True
            # "Data lost" covers the position stream too: fetch the book again from empty,
            # since a position closed during the outage would never be reported as 0.
            self.synced = False
            forget_positions(self.ib)
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
