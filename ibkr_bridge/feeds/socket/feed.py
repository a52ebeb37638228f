"""SOCKET mode: net Greeks from an IB Gateway/TWS over the TWS API, through ib_async.

:class:`SocketFeed` implements :class:`~ibkr_bridge.feeds.protocol.Feed`. Each
:meth:`~SocketFeed.connect` builds a fresh ``ib_async.IB`` (a :class:`_Session`), picks
the account, waits for the position sync and subscribes streaming market data for every
leg; IB's connectivity codes are passed to the
:class:`~ibkr_bridge.feeds.protocol.FeedListener`. Legs that need contract details
first (futures, futures options, an option's underlying stock) are looked up after connect,
paced by ``SOCKET_DETAILS_LIMIT`` and cached by the feed across reconnects, so connect does
not grow with the book; until then such a leg counts as one without Greeks.
:meth:`~SocketFeed.snapshot` turns the latest model Greeks into rows with
:func:`ibkr_bridge.core.greeks.aggregate`.

The Gateway is shared with the trader's own session, so the feed is a polite guest: read-only
API, never clientId 0, no order requests (no reqGlobalCancel, no reqAutoOpenOrders) and no
reqAccountUpdates (the Gateway keeps one account-update subscription per login, so ours could
take the trader's away: IB codes 2100/2101). Positions come from reqPositions alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Hashable, Mapping
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar

from ib_async import IB, Contract, Position, Ticker
from ib_async.ib import StartupFetchNONE

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import AccountSelectionError, GatewayError
from ibkr_bridge.core.greeks import (
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    SEC_TYPES,
    GreeksRule,
    Leg,
    LegGreeks,
    LegsVerdict,
    aggregate,
    clean_price,
    flat_row,
    judge_legs,
    multiplier_from,
)
from ibkr_bridge.core.records import GreeksRow, Status
from ibkr_bridge.core.redaction import gateway_text
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.ratelimit import SOCKET_DETAILS_LIMIT, RateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

MODE: Final = "SOCKET"

# IB message codes (see docs: TWS API message codes).
CLIENT_ID_IN_USE: Final = 326
CONNECTIVITY_LOST: Final = 1100
RESTORED_DATA_LOST: Final = 1101
RESTORED_DATA_KEPT: Final = 1102
SOCKET_PORT_RESET: Final = 1300
NO_SUCH_TICKER: Final = 300
FARM_BROKEN: Final = frozenset({2103, 2105, 2157})
# 2107/2108: a farm is idle but connects on demand; as harmless as "OK".
FARM_OK: Final = frozenset({2104, 2106, 2158, 2107, 2108})
# Only a market-data farm carries Greeks: 2103 makes every leg's Greeks stale until that
# farm is OK again (2104, or 2108 "inactive, available on demand"). Historical (2105/2106)
# and security-definition (2157/2158) farms are logged only.
MARKET_FARM_BROKEN: Final = 2103
MARKET_FARM_OK: Final = frozenset({2104, 2108})
MARKET_DATA_TYPES: Final = (1, 2, 3, 4)

# Contracts whose exchange may be SMART when the position message leaves it empty;
# futures and futures options must name their real exchange, found by conId.
_SMART_SEC_TYPES: Final = frozenset({"STK", "OPT"})
# Contract-details lookups in flight at once (each also waits for a pacing token).
_DETAILS_IN_FLIGHT: Final = 4
_DETAILS: Final = "contract_details"  # the pacer's endpoint name


#: The largest frame the Gateway may announce. ib_async buffers a frame until all of its
#: declared length has arrived (and copies the buffer on every read), so a hostile or broken
#: Gateway announcing 2 GB would grow memory without bound; real IB messages are at most a
#: few hundred KiB.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024


class FrameLimit:
    """Follows the TWS API framing (4-byte big-endian length, then the body) of one
    connection's incoming bytes without keeping them, to find a frame announced larger
    than ``limit`` as soon as its length prefix arrives."""

    __slots__ = ("_header", "_remaining", "limit")

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self.limit = limit
        self._header = b""  # a length prefix split across reads
        self._remaining = 0  # body bytes of the current frame still to come

    def oversized(self, data: bytes) -> int | None:
        """Take the next bytes read; the declared length of a frame over the limit in them,
        else None. After a non-None answer the stream is not followed any further."""
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                continue
            need = 4 - len(self._header)
            self._header += data[pos : pos + need]
            pos += need
            if len(self._header) < 4:
                break
            size = int.from_bytes(self._header, "big")
            self._header = b""
            if size > self.limit:
                return size
            self._remaining = size
        return None


class _Lookup:
    """One contract-details request the book needs: what to ask, and where the answer goes."""

    __slots__ = ("query", "store", "what")

    def __init__(self, query: Contract, what: str, store: Callable[[Contract], None]) -> None:
        self.query = query
        self.what = what
        self.store = store


class SocketSettings(Protocol):
    """The settings :meth:`SocketFeed.from_settings` reads."""

    @property
    def socket_host(self) -> str: ...

    @property
    def socket_port(self) -> int: ...

    @property
    def client_id(self) -> int: ...

    @property
    def account(self) -> str | None: ...

    @property
    def market_data_type(self) -> int: ...

    @property
    def connect_timeout(self) -> float: ...


_FARM_NAME: Final = re.compile(r"(?::|upon demand\.)\s*(\S+)\s*$")


def farm_name(message: str) -> str:
    """The farm an IB 210x notice names: "...is broken:usfarm" and 2108's "...available
    upon demand.usfarm" both give "usfarm"."""
    match = _FARM_NAME.search(message)
    return match[1] if match else message.strip()


class _NullListener:
    """Listener used until :meth:`SocketFeed.set_listener` is called."""

    def feed_disconnected(self, reason: str) -> None:
        log.info("feed disconnected: %s", reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        log.info("IB %d: %s", code, message)

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        log.info("IB %d: %s", code, message)

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        log.info("%s: %s", event, message)


def _market_contract(contract: Contract, exchange: str) -> Contract:
    """A plain copy of a position's contract with ``exchange`` set, for reqMktData."""
    # A plain Contract, not Option/Stock: their constructors take other arguments.
    return Contract(
        secType=contract.secType,
        conId=contract.conId,
        symbol=contract.symbol,
        lastTradeDateOrContractMonth=contract.lastTradeDateOrContractMonth,
        strike=contract.strike,
        right=contract.right,
        multiplier=contract.multiplier,
        exchange=exchange,
        currency=contract.currency,
        localSymbol=contract.localSymbol,
        tradingClass=contract.tradingClass,
    )


def _ticker_price(ticker: Ticker | None) -> float | None:
    """The traded price of an underlying: market price, else last, else previous close."""
    if ticker is None:
        return None
    for value in (ticker.marketPrice(), ticker.last, ticker.close):
        price = clean_price(value)
        if price is not None:
            return price
    return None


class _Subscription:
    """One reqMktData stream of a session, with when its latest Greeks arrived."""

    __slots__ = ("contract", "greeks", "greeks_at", "req_id", "subscribed_at", "ticker")

    def __init__(self, contract: Contract, ticker: Ticker, req_id: int, at: float) -> None:
        self.contract = contract
        self.ticker = ticker
        self.req_id = req_id
        self.subscribed_at = at  # the feed clock's monotonic time of reqMktData
        self.greeks: object = None  # the OptionComputation last seen on the ticker
        self.greeks_at: float | None = None  # monotonic time it was first seen


# How often a probe looks for Gateway traffic while its reqCurrentTime is pending.
_PROBE_POLL: Final = 0.02

# Contract multipliers are a handful of strings ("", "100", "50"): parse each once, not
# once per leg per tick.
_multiplier = functools.lru_cache(maxsize=1024)(multiplier_from)


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


class SocketFeed:
    """The SOCKET-mode :class:`~ibkr_bridge.feeds.protocol.Feed` over ib_async 2.1.0.

    ``account`` is IB_ACCOUNT (required when the login manages several accounts);
    ``market_data_type`` is IB's 1 live, 2 frozen, 3 delayed, 4 delayed-frozen;
    ``connect_timeout`` bounds each step of the handshake and each request the feed waits on;
    a Gateway announcing a frame over ``max_frame_bytes`` is disconnected (:class:`FrameLimit`).
    """

    mode: str = MODE

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4001,
        client_id: int = 10,
        account: str | None = None,
        market_data_type: int = 1,
        connect_timeout: float = 10.0,
        clock: Clock | None = None,
        rule: GreeksRule | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if client_id == 0:
            raise ValueError(
                "clientId 0 belongs to the trader's own app: TWS binds manual orders to it "
                "and ib_async would send reqAutoOpenOrders; choose another IB_CLIENT_ID"
            )
        if market_data_type not in MARKET_DATA_TYPES:
            raise ValueError(
                f"market_data_type must be 1 (live), 2 (frozen), 3 (delayed) or 4 "
                f"(delayed-frozen), got {market_data_type!r}"
            )
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout!r}")
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes!r}")
        self.host = host
        self.port = int(port)
        self.client_id = int(client_id)
        self.configured_account = account or None
        self.market_data_type = market_data_type
        self.connect_timeout = float(connect_timeout)
        self.max_frame_bytes = int(max_frame_bytes)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.listener: FeedListener = _NullListener()
        # Contract details outlive a session: a conId's exchange does not change, and
        # looking a futures book up again on every reconnect is what kept it from LIVE.
        self._resolved: dict[int, Contract] = {}
        self._stocks: dict[tuple[str, str], Contract] = {}
        # One pacer for the feed's lifetime, so a flapping connection cannot burst anew.
        self._pacer = RateLimiter(
            self.clock, global_limit=None, limits={_DETAILS: SOCKET_DETAILS_LIMIT}
        )
        self._account: str | None = self.configured_account
        self._session: _Session | None = None
        self.rule = rule if rule is not None else GreeksRule()
        #: What the staleness rule said at the last snapshot (None: no market state then).
        self.legs_verdict: LegsVerdict | None = None

    @classmethod
    def from_settings(cls, settings: SocketSettings, clock: Clock | None = None) -> SocketFeed:
        return cls(
            host=settings.socket_host,
            port=settings.socket_port,
            client_id=settings.client_id,
            account=settings.account,
            market_data_type=settings.market_data_type,
            connect_timeout=settings.connect_timeout,
            clock=clock,
            # Three writer ticks: SOCKET Greeks stream, a tick normally brings several.
            rule=GreeksRule.from_settings(
                settings, default_stale_after=3 * getattr(settings, "poll_interval", 5.0)
            ),
        )

    @property
    def request_timeout(self) -> float:
        return self.connect_timeout

    @property
    def account(self) -> str | None:
        """The account reported on: IB_ACCOUNT, or the one found at the last connect."""
        return self._account

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and session.ready and not session.closed

    def set_listener(self, listener: FeedListener) -> None:
        self.listener = listener

    async def connect(self) -> None:
        """Connect with a fresh IB instance, choose the account, subscribe market data.

        Raises AccountSelectionError, GatewayError (326: clientId in use), ConnectionError,
        ConnectionRefusedError or TimeoutError; the session is closed before it raises.
        """
        await self.disconnect()
        session = _Session(self)
        self._session = session
        try:
            await session.race(
                session.ib.connectAsync(
                    self.host,
                    self.port,
                    self.client_id,
                    self.connect_timeout,
                    readonly=True,
                    account=self.configured_account or "",
                    # With nothing else fetched, a position sync that times out is the
                    # only sync error, so connectAsync returning means positions are in.
                    raiseSyncErrors=True,
                    fetchFields=StartupFetchNONE,
                )
            )
            session.account = self._choose_account(session.ib.managedAccounts())
            self._account = session.account
            session.synced = True
            session.ib.reqMarketDataType(self.market_data_type)
            session.dirty = True
            await session.race(session.drain())
            if session.needs_resubscribe:
                # IB 1101 arrived while connecting: some streams may predate it.
                await session.race(session.resubscribe())
            session.ready = True
        except BaseException:
            if self._session is session:
                self._session = None
            session.close("connect failed")
            raise

    def _choose_account(self, accounts: list[str]) -> str:
        listed = ", ".join(accounts) or "none"
        wanted = self.configured_account
        if wanted is not None:
            if wanted not in accounts:
                raise AccountSelectionError(
                    f"IB_ACCOUNT {wanted} is not managed by this login; it manages: {listed}"
                )
            return wanted
        if len(accounts) == 1:
            return accounts[0]
        raise AccountSelectionError(
            f"this login manages several accounts ({listed}); set IB_ACCOUNT to one of them"
            if accounts
            else "the gateway reported no managed account"
        )

    async def disconnect(self) -> None:
        """Close the current IB instance; quiet, idempotent, never raises."""
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close("disconnect requested")
            except Exception:
                log.debug("disconnect failed", exc_info=True)

    def _live_session(self) -> _Session:
        session = self._session
        if session is None or session.closed or not session.ib.isConnected():
            raise ConnectionError("not connected to the gateway")
        return session

    async def probe(self) -> None:
        """Return once the Gateway proves it is alive; hang while it is frozen.

        One reqCurrentTime is sent, and any message arriving after that proves life as
        well as its answer does: while ib_async throttles its own requests (45 a second; a
        book of 1,000 legs takes over 20 s to subscribe) the request waits behind them,
        but the Gateway's ticks keep coming. A frozen Gateway sends neither, and the
        Bridge's timeout around this call ends the connection.
        """
        session = self._live_session()
        client = session.ib.client
        mark: int = client._numMsgRecv  # ib_async is pinned to 2.1.0
        answer = asyncio.ensure_future(session.ib.reqCurrentTimeAsync())
        try:
            while not answer.done():
                if client._numMsgRecv > mark:
                    return
                await asyncio.sleep(_PROBE_POLL)
            answer.result()
        finally:
            if not answer.done():
                answer.cancel()

    async def resubscribe(self) -> None:
        """Re-sync positions, cancel and re-request every market-data stream (after 1101)."""
        await self._live_session().resubscribe()

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        """Rows for ``now``, or None while the staleness rule says not to write.

        Every option leg's Greeks are judged by :func:`~ibkr_bridge.core.greeks.judge_legs`
        (age of the last Greeks tick, market-data farms); the verdict is kept in
        :attr:`legs_verdict` for the Bridge's events and health.
        """
        self.legs_verdict = None
        session = self._session
        if session is None or not session.usable or session.account is None:
            return None
        account = session.account
        mono = self.clock.monotonic()
        legs: list[Leg] = []
        judged: list[LegGreeks] = []
        for pos in session.open_positions():
            contract = pos.contract
            sec_type = contract.secType.upper()
            if sec_type not in SEC_TYPES:
                continue
            sub = session.subs.get(contract.conId)
            ticker = sub.ticker if sub is not None else None
            if sec_type in OPTION_SEC_TYPES:
                greeks = ticker.modelGreeks if ticker is not None else None
                if sub is not None:
                    since = sub.subscribed_at
                    age = None if sub.greeks_at is None or greeks is None else mono - sub.greeks_at
                else:
                    # No stream at all (its contract could not be resolved): it waits from
                    # when it was first seen, like a requested one.
                    since = session.first_seen.setdefault(contract.conId, mono)
                    age = None
                judged.append(
                    LegGreeks(
                        conid=contract.conId,
                        name=contract.localSymbol or f"{contract.symbol} {sec_type}",
                        age=age,
                        waited=mono - since,
                    )
                )
                legs.append(
                    Leg(
                        conid=contract.conId,
                        symbol=contract.symbol,
                        sec_type=sec_type,
                        quantity=pos.position,
                        multiplier=_multiplier(contract.multiplier),
                        delta=greeks.delta if greeks is not None else None,
                        gamma=greeks.gamma if greeks is not None else None,
                        vega=greeks.vega if greeks is not None else None,
                        theta=greeks.theta if greeks is not None else None,
                        underlying_price=greeks.undPrice if greeks is not None else None,
                    )
                )
            else:
                legs.append(
                    Leg(
                        conid=contract.conId,
                        symbol=contract.symbol,
                        sec_type=sec_type,
                        quantity=pos.position,
                        multiplier=_multiplier(contract.multiplier),
                        underlying_price=(
                            _ticker_price(ticker) if sec_type in FUTURE_SEC_TYPES else None
                        ),
                    )
                )
        verdict = judge_legs(judged, self.rule, broken_farms=session.broken_farms)
        self.legs_verdict = verdict
        if not verdict.write:
            return None
        if not legs:
            # Positions are synced and none carries a Greek: a genuinely flat book.
            return [flat_row(account, now, self.mode)]
        prices: dict[str, float] = {}
        for symbol, conid in session.price_conid.items():
            sub = session.subs.get(conid)
            price = _ticker_price(sub.ticker if sub is not None else None)
            if price is not None:
                prices[symbol] = price
        return aggregate(
            legs,
            account=account,
            timestamp=now,
            api_mode=self.mode,
            underlying_prices=prices,
            omit=verdict.omit,
        )


__all__ = ["MAX_FRAME_BYTES", "MODE", "FrameLimit", "SocketFeed", "SocketSettings"]
