"""One ib_async connection of the SOCKET feed: its lifecycle and the events it hears.

:class:`_Session` is one ``IB`` instance from connect to close, never reused after it
closes. Its subscriptions (:class:`~._subscriptions._Subscriptions`) follow the positions;
IB's codes are routed by :func:`~._codes.route_error`; the reaches into ib_async's
internals go through :mod:`._ibasync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ib_async import IB, Contract, Position, Ticker

from ibkr_bridge.core.redaction import gateway_text
from ibkr_bridge.feeds.socket._codes import route_error
from ibkr_bridge.feeds.socket._ibasync import (
    close_socket,
    intercept_socket_data,
    replace_error_handler,
)
from ibkr_bridge.feeds.socket._subscriptions import _Subscriptions
from ibkr_bridge.feeds.socket._wire import FrameLimit, T

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket.feed import SocketFeed  # the feed owning this session

log = logging.getLogger(__name__)


class _Session(_Subscriptions):
    """One ``IB`` instance from connect to close; never reused after it closes.

    Event handlers are bound to the session, not the feed, and check ``closed`` first, so a
    dead IB instance cannot reach the listener even if ib_async emits late.
    """

    def __init__(self, feed: SocketFeed) -> None:
        super().__init__(feed, IB())
        self.ready = False  # connect() finished: events go to the listener as they are
        self.closed = False
        self.data_lost = False  # between IB 1100 and 1101/1102
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.last_api_error = ""
        self.started_at = feed.clock.monotonic()
        self.broken_farms: set[str] = set()  # market-data farms IB reported broken (2103)
        self.frames = FrameLimit(feed.max_frame_bytes)
        self.frame_refused = False
        self._attach()

    # -- events ---------------------------------------------------------------------------

    def _attach(self) -> None:
        ib = self.ib
        # Every byte the socket reads passes the frame-size check before ib_async's own
        # handler buffers it (on this session's IB instance only).
        self._deliver = intercept_socket_data(ib, self.on_socket_data)
        replace_error_handler(ib, self.on_error)
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
        if self.closed or not self.synced or position.account not in self.accounts:
            return
        self.lookups_failed.clear()
        self.request_reconcile()

    def on_tickers(self, tickers: set[Ticker]) -> None:
        # ib_async replaces modelGreeks with a new object on every tickOptionComputation,
        # so a new object is a new Greeks tick: its arrival time is the leg's Greeks age.
        if self.closed:
            return
        now = self.feed.clock.monotonic()
        legs = self.feed.net_legs
        for ticker in tickers:
            contract = ticker.contract
            sub = self.subs.get(contract.conId) if contract is not None else None
            if sub is not None and sub.ticker is ticker:
                greeks = ticker.modelGreeks
                if greeks is not None and greeks is not sub.greeks:
                    sub.greeks = greeks
                    sub.greeks_at = now
                    legs.arrived(sub.contract.conId, ticker, greeks)

    def on_error(self, req_id: int, code: int, message: str, contract: Contract | None) -> None:
        if self.closed:
            return
        route_error(self, req_id, code, message, contract)

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
            close_socket(self.ib)
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
