"""PORTAL mode: the portfolio's Greeks from IBKR's Client Portal Web API gateway.

:class:`PortalFeed` implements :class:`~ibkr_bridge.feeds.protocol.Feed` over HTTPS with aiohttp,
in layers, each its own module: the HTTP client (:mod:`._http`: rate limits, body cap, timeouts),
session keeping (:mod:`._keeper`: auth status, ``ssodh/init``, tickles, the accounts; never
competing, never ``/logout``), the positions (:mod:`._positions`) and the market data
(:mod:`._market`: the snapshot pre-flight and polls; :mod:`._fields` maps the fields).
``connect()`` checks the session, opens the accounts, chooses the account, loads the positions
and sends the pre-flight, then starts two background tasks on the injectable clock: a tickle
task (``POST /tickle`` about once a minute) and a poll task (snapshots every
``poll_interval`` seconds, positions every ``positions_interval``).

:meth:`PortalFeed.snapshot` turns the latest data into rows with the same
:func:`~ibkr_bridge.core.greeks.aggregate` the SOCKET feed uses. It returns None until the
positions are synced and every option leg has data from after the pre-flight, and when an
option's data is older than ``stale_after``.

Nothing the gateway says is trusted into a log or ``api_logs`` verbatim: it is quoted through
:func:`~ibkr_bridge.core.redaction.gateway_text`, and the session values it hands out are
remembered as secrets to redact. TLS is verified: pass ``ca_path`` to trust the gateway's
self-signed certificate; ``verify_tls=False`` is logged as a warning at every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from datetime import datetime

import attrs

from ibkr_bridge.config import default_of
from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.greeks import GreeksRule, Leg, LegGreeks, LegsVerdict
from ibkr_bridge.core.records import GreeksRow, PositionRow
from ibkr_bridge.feeds._rows import rows_from_legs
from ibkr_bridge.feeds.portal._market import _MarketData
from ibkr_bridge.feeds.portal._wire import (
    DEFAULT_POLL,
    MODE,
    TICKLE,
    PortalPosition,
    PortalSettings,
    _Market,
    api_root,
)
from ibkr_bridge.feeds.protocol import FeedListener, LoggingListener
from ibkr_bridge.feeds.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# api_root too: ops/_check_gateway.py imports it from here.
__all__ = ["PortalFeed", "api_root"]


class PortalFeed(_MarketData):
    """The Client Portal Web API feed (mode ``"PORTAL"``).

    ``gateway_url`` is ``https://host:port`` (``/v1/api`` is appended unless present).
    ``account`` chooses among several accounts (else the single one is used, or, with
    several, each of them plus all of them under account ``""``). Timing, in
    seconds of ``clock``: ``tickle_interval`` (keep-alive), ``poll_interval`` (snapshots),
    ``positions_interval`` (re-read positions), ``stale_after`` (default three poll
    periods: older option data is not used), ``request_timeout`` (per request),
    ``reauth_grace`` (how long a triggered re-authentication may take before only a human
    login can help), ``event_interval`` (a repeated warning is logged at most this often).
    """

    mode: str = MODE

    def __init__(
        self,
        *,
        gateway_url: str,
        account: str | None = None,
        ca_path: str | None = None,
        verify_tls: bool = True,
        tickle_interval: float = default_of("tickle_interval"),
        clock: Clock | None = None,
        request_timeout: float = 10.0,
        poll_interval: float = DEFAULT_POLL,
        positions_interval: float = 60.0,
        stale_after: float | None = None,
        reauth_grace: float = 30.0,
        event_interval: float = 60.0,
        limiter: RateLimiter | None = None,
        rule: GreeksRule | None = None,
    ) -> None:
        for name, value in (
            ("tickle_interval", tickle_interval),
            ("request_timeout", request_timeout),
            ("poll_interval", poll_interval),
            ("positions_interval", positions_interval),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.gateway_url = api_root(gateway_url)
        self.ca_path = str(ca_path) if ca_path else None
        self.verify_tls = verify_tls
        self.tickle_interval = tickle_interval
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.positions_interval = positions_interval
        if stale_after is None:
            stale_after = rule.stale_after if rule is not None else 3 * poll_interval
        self.stale_after = stale_after
        # One staleness rule for both modes (greeks.judge_legs); stale_after is its limit.
        self.rule = attrs.evolve(rule or GreeksRule(), stale_after=stale_after)
        #: What the staleness rule said at the last snapshot (None: no market state then).
        self.legs_verdict: LegsVerdict | None = None
        # The per-position rows of the latest snapshot (BRIDGE_POSITION_ROWS), for the writer.
        self.position_rows: list[PositionRow] = []
        self._leg_since: dict[int, float] = {}  # conid -> when its data was first wanted
        self.reauth_grace = reauth_grace
        self.event_interval = event_interval
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limiter = limiter if limiter is not None else RateLimiter(self._clock)
        self._wanted_account = account or None
        self._listener: FeedListener = LoggingListener(
            log, disconnect_level=logging.WARNING, level=None
        )
        self._session = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._reported: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        # Survive reconnects: the login episode and the account.
        self._account: str | None = None
        self._accounts: tuple[str, ...] = ()  # several, reported on together (no IB_ACCOUNT)
        self._needs_login = False
        self._reauth_at: float | None = None
        self._last_tickle = -math.inf
        self._last_answer = -math.inf
        self._reset_connection()

    def _reset_connection(self) -> None:
        self._connected = False
        self._lost = False
        self._lost_reason = ""
        self._bridge_ready = False
        self._portfolio_ready = False
        self._positions: dict[int, PortalPosition] | None = None
        self._positions_at = -math.inf
        self._by_account: dict[str, dict[int, PortalPosition]] = {}
        self._market: dict[int, _Market] = {}
        self._leg_since = {}
        self._greeks_at: dict[int, datetime] = {}  # conid -> time of its latest Greek fields

    @classmethod
    def from_settings(cls, settings: PortalSettings, clock: Clock | None = None) -> PortalFeed:
        """Build from :class:`ibkr_bridge.config.Settings` (``IBKR_GATEWAY_URL``,
        ``IB_ACCOUNT``, ``IBKR_GATEWAY_CA``, ``IBKR_VERIFY_TLS``, ``IBKR_TICKLE_INTERVAL``)."""
        return cls(
            gateway_url=settings.gateway_url,
            account=settings.account or None,
            ca_path=str(settings.gateway_ca) if settings.gateway_ca is not None else None,
            verify_tls=settings.verify_tls,
            tickle_interval=settings.tickle_interval,
            clock=clock,
            # Empty BRIDGE_STALE_AFTER: three of the feed's snapshot polls (its default).
            rule=GreeksRule.from_settings(settings, default_stale_after=3 * DEFAULT_POLL),
        )

    # -- Feed protocol --------------------------------------------------------------------

    def set_listener(self, listener: FeedListener) -> None:
        self._listener = listener

    @property
    def account(self) -> str | None:
        """The chosen account once connected; before that, the configured one (if any)."""
        return self._account if self._account is not None else self._wanted_account

    @property
    def connected(self) -> bool:
        return self._connected and not self._lost

    @property
    def needs_login(self) -> bool:
        """True during an episode where only a human login at the gateway can help."""
        return self._needs_login

    @property
    def requests_in_flight(self) -> int:
        """HTTP requests sent and not yet answered (tests wait for 0 before moving time)."""
        return self._in_flight

    @property
    def positions(self) -> Mapping[int, PortalPosition] | None:
        """The open positions by conid once synced (None before); with several accounts, a
        conid held in several is one entry, its quantity their sum (the all-accounts book)."""
        return None if self._positions is None else dict(self._positions)

    @property
    def positions_by_account(self) -> Mapping[str, Mapping[int, PortalPosition]]:
        """Each account's open positions by conid (empty before the first read)."""
        return {name: dict(held) for name, held in self._by_account.items()}

    async def connect(self) -> None:
        await self._shutdown()
        self._reset_connection()
        if not self.verify_tls:
            message = (
                f"TLS verification of the gateway {self.gateway_url} is OFF (verify_tls=False): "
                "anyone on the path could read or alter the traffic; set a CA file instead"
            )
            log.warning(message)
            self._listener.feed_event(
                "tls_unverified", message, status="warning", detail={"gateway": self.gateway_url}
            )
        self._session = self._new_session()
        try:
            await self._authenticate()
            # One tickle now, not a minute from now: it tells the session value, which must
            # be known (as a secret to redact) before any error body could echo it.
            await self._learn_session()
            await self._open_accounts()
            if not await self._refresh_positions():
                raise GatewayError("could not read the positions from the gateway")
            # The pre-flight: the first snapshot call per conid subscribes, without data.
            await self._poll_snapshots()
            if self._lost:
                raise GatewayError(self._lost_reason)
        except BaseException:
            await self._shutdown()
            raise
        self._connected = True
        self._last_tickle = self._clock.monotonic()
        self._tasks = [
            asyncio.create_task(self._tickle_loop(), name="portal-tickle"),
            asyncio.create_task(self._poll_loop(), name="portal-poll"),
        ]

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self._shutdown()
        self._reset_connection()

    async def probe(self) -> None:
        if self._session is None:
            raise GatewayError("not connected to the gateway")
        if self._limiter.paused(TICKLE) and (
            self._clock.monotonic() - self._last_answer < self.request_timeout
        ):
            # /tickle is backing off after a 429, and the gateway answered just now: it is
            # alive, and asking again would only prolong the penalty.
            return
        await self._tickle()

    async def resubscribe(self) -> None:
        self._market.clear()
        self._greeks_at.clear()
        await self._poll_snapshots()

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        self.legs_verdict = None
        self.position_rows = []
        positions = self._positions
        account = self._account
        if not self.connected or positions is None or account is None:
            return None
        accounts = self._accounts
        if accounts:
            # Each account's legs carry it; a conid held twice is judged on one market entry.
            legs: list[Leg] = []
            judged: list[LegGreeks] = []
            for name in accounts:
                some, ages = self._legs(self._by_account.get(name, {}).values(), now)
                legs.extend(attrs.evolve(leg, account=name) for leg in some)
                judged.extend(a for a in ages if all(j.conid != a.conid for j in judged))
        else:
            legs, judged = self._legs(positions.values(), now)
        self.legs_verdict, rows, self.position_rows = rows_from_legs(
            legs,
            judged,
            self.rule,
            account=account,
            now=now,
            mode=MODE,
            prices=lambda: self._underlying_prices(positions.values(), now),
            accounts=accounts,
        )
        return rows

    async def _shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
