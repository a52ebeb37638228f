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
import logging
from datetime import datetime

from ib_async import Contract
from ib_async.ib import StartupFetchNONE

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import AccountSelectionError
from ibkr_bridge.core.greeks import (
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    SEC_TYPES,
    GreeksRule,
    Leg,
    LegGreeks,
    LegsVerdict,
    aggregate,
    flat_row,
    judge_legs,
)
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.ratelimit import SOCKET_DETAILS_LIMIT, RateLimiter
from ibkr_bridge.feeds.socket._session import _Session
from ibkr_bridge.feeds.socket._wire import (
    _DETAILS,
    _PROBE_POLL,
    MARKET_DATA_TYPES,
    MAX_FRAME_BYTES,
    MODE,
    FrameLimit,
    SocketSettings,
    _multiplier,
    _NullListener,
    _ticker_price,
)

log = logging.getLogger(__name__)


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
