"""SOCKET mode: net Greeks from an IB Gateway/TWS over the TWS API, through ib_async.

:class:`SocketFeed` implements :class:`~ibkr_bridge.feeds.protocol.Feed`. Each
:meth:`~SocketFeed.connect` builds a fresh ``ib_async.IB`` (a :class:`_Session`), picks
the accounts (IB_ACCOUNT, else every account the login manages), waits for the position
sync and subscribes streaming market data for every contract held (once, whichever
accounts hold it); IB's connectivity codes are passed to the
:class:`~ibkr_bridge.feeds.protocol.FeedListener`. Legs that need contract details
first (futures, futures options, an option's underlying stock) are looked up after connect,
paced by ``SOCKET_DETAILS_LIMIT`` and cached by the feed across reconnects, so connect does
not grow with the book; until then such a leg counts as one without Greeks.
:meth:`~SocketFeed.snapshot` turns the latest model Greeks into rows with
:func:`ibkr_bridge.core.greeks.aggregate`.

The parts, each its own module: the ib_async session (:mod:`._session`), its subscriptions
and contract lookups (:mod:`._subscriptions`), the positions as legs (:mod:`._positions`),
IB's codes (:mod:`._codes`), the probe (:mod:`._probe`), and the one adapter over ib_async's
internals (:mod:`._ibasync`).

The Gateway is shared with the trader's own session, so the feed is a polite guest: read-only
API, never clientId 0, no order requests (no reqGlobalCancel, no reqAutoOpenOrders) and no
reqAccountUpdates (the Gateway keeps one account-update subscription per login, so ours could
take the trader's away: IB codes 2100/2101). Positions come from reqPositions alone.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ib_async import Contract, StartupFetchNONE

from ibkr_bridge.config import default_of
from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import AccountSelectionError
from ibkr_bridge.core.greeks import GreeksRule, LegsVerdict
from ibkr_bridge.core.records import GreeksRow, PositionRow
from ibkr_bridge.feeds._rows import rows_from_net
from ibkr_bridge.feeds.protocol import FeedListener, LoggingListener
from ibkr_bridge.feeds.ratelimit import SOCKET_DETAILS_LIMIT, RateLimiter
from ibkr_bridge.feeds.socket._netlegs import NetLegs
from ibkr_bridge.feeds.socket._positions import underlying_prices
from ibkr_bridge.feeds.socket._probe import probe_gateway
from ibkr_bridge.feeds.socket._session import _Session
from ibkr_bridge.feeds.socket._wire import (
    _DETAILS,
    MARKET_DATA_TYPES,
    MAX_FRAME_BYTES,
    MODE,
    SocketSettings,
)

log = logging.getLogger(__name__)


class SocketFeed:
    """The SOCKET-mode :class:`~ibkr_bridge.feeds.protocol.Feed` over ib_async 2.1.0.

    ``account`` is IB_ACCOUNT; without it the feed reports on every account the login
    manages (one set of rows per account, then the all-accounts rows under account ``""``);
    ``market_data_type`` is IB's 1 live, 2 frozen, 3 delayed, 4 delayed-frozen;
    ``connect_timeout`` bounds each step of the handshake and each request the feed waits on;
    a Gateway announcing a frame over ``max_frame_bytes`` is disconnected (:class:`FrameLimit`).
    """

    mode: str = MODE

    def __init__(
        self,
        *,
        host: str = default_of("socket_host"),
        port: int = default_of("socket_port"),
        client_id: int = default_of("client_id"),
        account: str | None = None,
        market_data_type: int = default_of("market_data_type"),
        connect_timeout: float = default_of("connect_timeout"),
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
        self.listener: FeedListener = LoggingListener(
            log, disconnect_level=logging.INFO, level=logging.INFO
        )
        # Contract details outlive a session: a conId's exchange does not change, and
        # looking a futures book up again on every reconnect is what kept it from LIVE.
        self._resolved: dict[int, Contract] = {}
        self._stocks: dict[tuple[str, str], Contract] = {}
        self._under_conids: dict[int, int] = {}  # FOP conId -> its future's (IB's underConId)
        # One pacer for the feed's lifetime, so a flapping connection cannot burst anew.
        self._pacer = RateLimiter(
            self.clock, global_limit=None, limits={_DETAILS: SOCKET_DETAILS_LIMIT}
        )
        self._accounts: tuple[str, ...] = ()  # reported on, as found at the last connect
        self._session: _Session | None = None
        self.rule = rule if rule is not None else GreeksRule()
        #: What the staleness rule said at the last snapshot (None: no market state then).
        self.legs_verdict: LegsVerdict | None = None
        # The per-position rows of the latest snapshot (BRIDGE_POSITION_ROWS), for the writer.
        self.position_rows: list[PositionRow] = []
        # The legs kept from tick to tick (the fast path; session_legs is the reference);
        # the session refreshes them as Greeks arrive.
        self.net_legs = NetLegs()

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
        """The account reported on: IB_ACCOUNT, or the ones found at the last connect.

        Several accounts read as one string, comma-separated (``"DU111,DU222"``), for the
        connect event, status and health; the rows of all of them carry account ``""``.
        """
        if not self._accounts:
            return self.configured_account
        return ",".join(self._accounts)

    @property
    def accounts(self) -> tuple[str, ...]:
        """The accounts reported on since the last connect (empty before the first)."""
        return self._accounts

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
            session.accounts = self._choose_accounts(session.ib.managedAccounts())
            self._accounts = session.accounts
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

    def _choose_accounts(self, accounts: list[str]) -> tuple[str, ...]:
        """IB_ACCOUNT if the login manages it, else every managed account (in IB's order)."""
        wanted = self.configured_account
        if wanted is not None:
            if wanted not in accounts:
                listed = ", ".join(accounts) or "none"
                raise AccountSelectionError(
                    f"IB_ACCOUNT {wanted} is not managed by this login; it manages: {listed}"
                )
            return (wanted,)
        if not any(accounts):
            raise AccountSelectionError("the gateway reported no managed account")
        # IB lists each once; a repeat or an empty entry must not become an account.
        return tuple(dict.fromkeys(a for a in accounts if a))

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
        """Return once the Gateway proves it is alive; hang while it is frozen (see
        :func:`~ibkr_bridge.feeds.socket._probe.probe_gateway`: any message counts as an answer)."""
        await probe_gateway(self._live_session().ib)

    async def resubscribe(self) -> None:
        """Re-sync positions, cancel and re-request every market-data stream (after 1101)."""
        await self._live_session().resubscribe()

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        """Rows for ``now``, or None while the staleness rule says not to write.

        Every option leg's Greeks are judged by :func:`~ibkr_bridge.core.greeks.judge_legs`
        (age of the last Greeks tick, market-data farms); the verdict is kept in
        :attr:`legs_verdict` for the Bridge's events and health. The legs are read by
        :class:`~._netlegs.NetLegs` and summed by :func:`~ibkr_bridge.feeds._rows.rows_from_net`,
        which give what :func:`~._positions.session_legs` and
        :func:`~ibkr_bridge.feeds._rows.rows_from_legs` (the reference) give, faster.
        """
        self.legs_verdict = None
        self.position_rows = []
        session = self._session
        if session is None or not session.usable or not session.accounts:
            return None
        # Only the legs not current are judged, unless a farm is broken or the model may
        # find a current leg it cannot price (then every leg is).
        current = None if session.broken_farms or self.rule.model else self.rule.stale_after
        legs, ages, judged = self.net_legs.read(session, self.clock.monotonic(), current=current)
        accounts = session.accounts
        self.legs_verdict, rows, self.position_rows = rows_from_net(
            legs,
            ages,
            self.rule,
            account=accounts[0] if len(accounts) == 1 else "",
            accounts=accounts,
            now=now,
            mode=self.mode,
            prices=lambda: underlying_prices(session),
            broken_farms=session.broken_farms,
            judged=judged,
            groups=self.net_legs.groups,
        )
        return rows
