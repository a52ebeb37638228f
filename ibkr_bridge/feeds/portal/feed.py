"""PORTAL mode: the portfolio's Greeks from IBKR's Client Portal Web API gateway.

:class:`PortalFeed` implements :class:`~ibkr_bridge.feeds.protocol.Feed` over HTTPS with aiohttp.
``connect()`` checks the session (starting a brokerage session with ``ssodh/init`` or
``reauthenticate`` when that can work without a human), calls ``/iserver/accounts`` (the
gateway's precondition for market data) and ``/portfolio/accounts`` (the precondition for
``/portfolio``), chooses the account, loads the positions page by page and starts two
background tasks on the injectable clock:

* a tickle task (``POST /tickle`` about once a minute) that keeps the session alive and
  reports ``feed_disconnected`` when the gateway says the session is no longer
  authenticated, connected or is competing with another login;
* a poll task that asks ``/iserver/marketdata/snapshot`` for every position's conid and
  underlying every ``poll_interval`` seconds and re-reads the positions every
  ``positions_interval`` seconds so that trades are followed.

:meth:`PortalFeed.snapshot` turns the latest data into rows with the same
:func:`~ibkr_bridge.core.greeks.aggregate` the SOCKET feed uses. It returns None until the
positions are synced and every option leg has data from after the gateway's pre-flight
(the first snapshot call per conid answers without fields), and when an option's data is
older than ``stale_after``. A Greek the gateway did not send is missing (NULL), never 0.
Field 7310 is theta and 7311 is vega.

Nothing the gateway says is trusted into a log or ``api_logs`` verbatim: error bodies and
messages are quoted through :func:`~ibkr_bridge.core.redaction.gateway_text` (redacted, cut to a few
hundred characters), and the session values the gateway hands out (``/tickle``'s
``session``, ``/iserver/accounts``' ``sessionId``, every cookie it sets) are remembered as
secrets the log redactor replaces. A body larger than :data:`MAX_BODY_BYTES` is refused
without being read whole (by its ``Content-Length``, else while it streams in), with one
``oversized_answer`` event per endpoint and episode.

Every request goes through :class:`~ibkr_bridge.feeds.ratelimit.RateLimiter` so the gateway's
limits are never reached; a 429 anyway pauses that endpoint and is logged. Answers that are
not JSON or have the wrong shape are logged through ``feed_event`` and skipped. TLS is
verified: pass ``ca_path`` to trust the gateway's self-signed certificate; ``verify_tls=False``
is an explicit choice that is logged as a warning at every connect. The feed never calls
``/logout``: that would end the gateway's login and need a human.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import attrs

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
    flat_row,
    judge_legs,
    multiplier_from,
    parse_portal_number,
)
from ibkr_bridge.core.records import GreeksRow, Status
from ibkr_bridge.core.redaction import gateway_text, remember_secret
from ibkr_bridge.feeds.portal._wire import (
    _FIELD_SET,
    _GREEK_FIELDS,
    _T,
    ASK,
    AUTH_STATUS,
    BID,
    CONIDS_PER_SNAPSHOT,
    DEFAULT_POLL,
    DELTA,
    GAMMA,
    ISERVER_ACCOUNTS,
    LAST,
    MAX_BODY_BYTES,
    MAX_PAGES,
    MODE,
    PAGE_SIZE,
    PORTFOLIO_ACCOUNTS,
    POSITIONS,
    REAUTHENTICATE,
    SNAPSHOT,
    SNAPSHOT_FIELDS,
    SSODH_INIT,
    THETA,
    TICKLE,
    VEGA,
    NeedsLoginError,
    PortalPosition,
    PortalSettings,
    _as_float,
    _as_int,
    _Auth,
    _BadRow,
    _describe,
    _error_text,
    _learn_secrets,
    _Market,
    _NullListener,
    _parse_auth,
    _read_capped,
    _Reply,
    api_root,
)
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.ratelimit import RateLimiter

log = logging.getLogger(__name__)

__all__ = [
    "MAX_BODY_BYTES",
    "MODE",
    "NeedsLoginError",
    "PortalFeed",
    "PortalPosition",
    "PortalSettings",
    "api_root",
]


class PortalFeed:
    """The Client Portal Web API feed (mode ``"PORTAL"``).

    ``gateway_url`` is ``https://host:port`` (``/v1/api`` is appended unless present).
    ``account`` chooses among several accounts (else the single one is used). Timing, in
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
        tickle_interval: float = 60.0,
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
        self._leg_since: dict[int, float] = {}  # conid -> when its data was first wanted
        self.reauth_grace = reauth_grace
        self.event_interval = event_interval
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limiter = limiter if limiter is not None else RateLimiter(self._clock)
        self._wanted_account = account or None
        self._listener: FeedListener = _NullListener()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._reported: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        # Survive reconnects: the login episode and the account.
        self._account: str | None = None
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
        """The open positions by conid once synced (None before)."""
        return None if self._positions is None else dict(self._positions)

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
        positions = self._positions
        account = self._account
        if not self.connected or positions is None or account is None:
            return None
        mono = self._clock.monotonic()
        legs: list[Leg] = []
        judged: list[LegGreeks] = []
        for pos in positions.values():
            greeks: dict[str, float | None] = {}
            if pos.sec_type in OPTION_SEC_TYPES:
                market = self._market.get(pos.conid)
                since = self._leg_since.setdefault(pos.conid, mono)
                # Timed by the data's own timestamp (_updated) when the gateway sends one.
                greeks_at = self._greeks_at.get(pos.conid)
                judged.append(
                    LegGreeks(
                        conid=pos.conid,
                        name=f"{pos.symbol} {pos.sec_type}",
                        age=None if greeks_at is None else (now - greeks_at).total_seconds(),
                        waited=mono - since,
                    )
                )
                if market is not None:
                    greeks = {
                        "delta": parse_portal_number(market.fields.get(DELTA)),
                        "gamma": parse_portal_number(market.fields.get(GAMMA)),
                        "theta": parse_portal_number(market.fields.get(THETA)),
                        "vega": parse_portal_number(market.fields.get(VEGA)),
                    }
            legs.append(
                Leg(
                    conid=pos.conid,
                    symbol=pos.symbol,
                    sec_type=pos.sec_type,
                    quantity=pos.quantity,
                    multiplier=pos.multiplier,
                    **greeks,
                    # Client Portal strings carry no -2 sentinel: "-2.000" is a real theta.
                    ib_sentinels=False,
                )
            )
        verdict = judge_legs(judged, self.rule)
        self.legs_verdict = verdict
        if not verdict.write:
            return None  # no data after the pre-flight yet, stale, or a leg missing (skip)
        if not any(leg.sec_type in SEC_TYPES for leg in legs):
            return [flat_row(account, now, MODE)]
        return aggregate(
            legs,
            account=account,
            timestamp=now,
            api_mode=MODE,
            underlying_prices=self._underlying_prices(positions.values(), now),
            omit=verdict.omit,
        )

    # -- snapshot helpers -----------------------------------------------------------------

    def _fresh(self, conid: int, now: datetime) -> _Market | None:
        market = self._market.get(conid)
        if market is None or (now - market.updated).total_seconds() > self.stale_after:
            return None
        return market

    def _underlying_prices(
        self, positions: Iterable[PortalPosition], now: datetime
    ) -> dict[str, float]:
        prices: dict[str, float] = {}
        for pos in sorted(positions, key=lambda p: p.conid):
            if pos.symbol in prices or pos.underlying_conid is None:
                continue
            market = self._fresh(pos.underlying_conid, now)
            if market is None:
                continue
            price = parse_portal_number(market.fields.get(LAST))
            if price is None or price <= 0:
                bid = parse_portal_number(market.fields.get(BID))
                ask = parse_portal_number(market.fields.get(ASK))
                price = (bid + ask) / 2 if bid and ask and bid > 0 and ask > 0 else None
            if price is not None and price > 0:
                prices[pos.symbol] = price
        return prices

    # -- plumbing -------------------------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession:
        ssl_option: ssl.SSLContext | bool
        if not self.verify_tls:
            ssl_option = False
        else:
            try:
                ssl_option = ssl.create_default_context(cafile=self.ca_path)
            except (OSError, ssl.SSLError) as exc:
                raise GatewayError(
                    f"cannot load the gateway CA file {self.ca_path!r}: {_describe(exc)}"
                ) from exc
        connector = aiohttp.TCPConnector(ssl=ssl_option, limit=4)
        # aiohttp's own timeout is a backstop; the clock-driven one below is the rule.
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + 5.0)
        return aiohttp.ClientSession(connector=connector, timeout=timeout)

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

    async def _within_timeout(self, work: Awaitable[_T]) -> _T:
        """``work``, or TimeoutError after ``request_timeout`` seconds of the feed's clock."""
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self._clock.sleep(self.request_timeout))
        try:
            done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError(f"no answer within {self.request_timeout:g} s")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> _Reply:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = dict(body)
        elif method == "POST":
            kwargs["data"] = b""  # Content-Length: 0; the gateway refuses a POST without it
        async with session.request(
            method, self.gateway_url + path, params=params, **kwargs
        ) as response:
            status = response.status
            for morsel in response.cookies.values():
                remember_secret(morsel.value)
            declared = response.content_length
            raw: bytes | None = None
            if declared is None or declared <= MAX_BODY_BYTES:
                raw = await _read_capped(response)
            if raw is None:
                response.close()  # drop the connection rather than read the rest
                size = f"{declared} bytes" if declared is not None else "a streamed body"
                why = f"{size}, over the {MAX_BODY_BYTES} byte limit: refused unread"
                return _Reply(status, None, why, oversized=True)
        if not raw:
            return _Reply(status, None, "empty body")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            preview = gateway_text(raw[:60].decode("utf-8", errors="replace"))
            return _Reply(status, None, f"not JSON: {preview!r}")
        _learn_secrets(data)
        return _Reply(status, data)

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> _Reply:
        """One rate-limited request; raises GatewayError/TimeoutError when nothing came back."""
        session = self._session
        if session is None:
            raise GatewayError("not connected to the gateway")
        await self._limiter.acquire(endpoint)
        self._in_flight += 1
        try:
            reply = await self._within_timeout(self._send(session, method, path, params, body))
        except TimeoutError:
            raise  # an OSError subclass, but it means "no answer", not "unreachable"
        except aiohttp.ClientConnectorCertificateError as exc:
            raise GatewayError(
                f"the gateway's TLS certificate is not trusted ({_describe(exc)}): give its "
                "certificate PEM as the CA file (IBKR_GATEWAY_CA)"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(f"{method} {path} failed: {_describe(exc)}") from exc
        finally:
            self._in_flight -= 1
        self._last_answer = self._clock.monotonic()
        if reply.oversized:
            self._report(
                "oversized_answer",
                f"{endpoint} answered HTTP {reply.status} with {reply.garbage}",
                key=f"oversized:{endpoint}",
                detail={"endpoint": endpoint, "status": reply.status, "limit": MAX_BODY_BYTES},
            )
        if reply.status == 429:
            pause = self._limiter.penalize(endpoint)
            self._report(
                "rate_limited",
                f"the gateway answered 429 to {endpoint}; pausing it for {pause:g} s",
                key=f"rate_limited:{endpoint}",
                detail={"endpoint": endpoint, "pause": pause},
            )
        elif reply.status < 400:
            self._limiter.succeeded(endpoint)
        return reply

    def _report(
        self,
        event: str,
        message: str,
        *,
        status: Status = "warning",
        detail: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """A ``feed_event``, at most once per ``event_interval`` for the same ``key``."""
        key = key or event
        now = self._clock.monotonic()
        last = self._reported.get(key)
        if last is not None and now - last < self.event_interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._reported[key] = now
        full = dict(detail or {})
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            full["repeated"] = suppressed
        log.log(logging.WARNING if status != "info" else logging.INFO, "%s: %s", event, message)
        self._listener.feed_event(event, message, status=status, detail=full)

    def _garbage(self, endpoint: str, reply: _Reply, what: str) -> None:
        self._report(
            "garbage",
            f"unexpected answer from {endpoint} ({what}); skipped",
            key=f"garbage:{endpoint}",
            detail={"endpoint": endpoint, "status": reply.status, "why": reply.garbage or what},
        )

    @staticmethod
    def _why_not(auth: _Auth) -> str:
        if auth.competing:
            return "another login took the IBKR session (competing)"
        if not auth.connected:
            return "the gateway is not connected to IBKR"
        return "the brokerage session is no longer authenticated" + (
            f" ({auth.message})" if auth.message else ""
        )

    async def _check_session(self, trigger: str, *, lost: bool) -> None:
        """A data endpoint refused (``trigger``): ask auth status why, and act on it.

        ``lost=True`` (a 401) ends the connection whatever the answer; otherwise it ends only
        if the session really is gone (a 400 "no bridge" just needs /iserver/accounts).
        """
        try:
            reply = await self._call("POST", AUTH_STATUS, "/iserver/auth/status")
        except (GatewayError, TimeoutError):
            reply = None
        auth = _parse_auth(reply.data) if reply is not None and reply.status == 200 else None
        if reply is not None and reply.status == 401:
            self._lose(f"the gateway has no login session (HTTP 401 after {trigger})")
        elif auth is not None and not auth.ok:
            self._lose(self._why_not(auth))
        elif lost:
            self._lose(trigger)

    def _lose(self, reason: str) -> None:
        """The session is gone: tell the listener once (or fail connect() if still in it)."""
        if self._lost:
            return
        self._lost = True
        self._lost_reason = reason
        log.warning("gateway session lost: %s", reason)
        if self._connected:
            self._connected = False
            self._listener.feed_disconnected(reason)

    # -- session --------------------------------------------------------------------------

    def _needs_human(self, message: str) -> NoReturn:
        if not self._needs_login:
            self._needs_login = True
            self._listener.feed_event(
                "needs_login", message, status="error", detail={"gateway": self.gateway_url}
            )
        raise NeedsLoginError(message)

    def _auth_reply(self, reply: _Reply, what: str) -> _Auth:
        if reply.status == 401:
            self._needs_human(
                f"the gateway has no login session ({what}: HTTP 401): a human must log in "
                "at the gateway's web page"
            )
        if reply.status != 200:
            raise GatewayError(f"{what} answered HTTP {reply.status} {_error_text(reply.data)}")
        auth = _parse_auth(reply.data)
        if auth is None:
            self._garbage(what, reply, "not an auth status")
            raise GatewayError(f"{what} answered something that is not an auth status")
        return auth

    def _logged_in(self) -> None:
        if self._needs_login:
            self._listener.feed_event("login_restored", "the gateway session is authenticated")
        self._needs_login = False
        self._reauth_at = None

    def _competing_error(self, auth: _Auth) -> NoReturn:
        message = (
            "another login holds the IBKR brokerage session (competing); not taking it over"
            + (f": {auth.message}" if auth.message else "")
        )
        self._report("competing", message)
        raise GatewayError(message)

    async def _authenticate(self) -> None:
        auth = self._auth_reply(
            await self._call("POST", AUTH_STATUS, "/iserver/auth/status"), "auth status"
        )
        if auth.ok:
            self._logged_in()
            return
        if auth.competing:
            self._competing_error(auth)
        init = self._auth_reply(
            await self._call(
                "POST",
                SSODH_INIT,
                "/iserver/auth/ssodh/init",
                # Never compete: IBKR documents compete=true as disconnecting the user's
                # other brokerage sessions (the trader's own apps).
                body={"publish": True, "compete": False},
            ),
            "ssodh/init",
        )
        if init.ok:
            self._logged_in()
            return
        if init.competing:
            self._competing_error(init)
        if self._needs_login:
            raise NeedsLoginError("still waiting for a human login at the gateway")
        now = self._clock.monotonic()
        if self._reauth_at is None:
            reply = await self._call("POST", REAUTHENTICATE, "/iserver/reauthenticate")
            if reply.status == 401:
                self._needs_human("reauthenticate answered HTTP 401: a human must log in")
            self._reauth_at = now
            self._report(
                "reauthenticate",
                "the brokerage session is not authenticated; re-authentication triggered",
            )
            raise GatewayError("brokerage session not authenticated: re-authentication triggered")
        if now - self._reauth_at < self.reauth_grace:
            raise GatewayError("waiting for the brokerage session to re-authenticate")
        self._needs_human(
            "the brokerage session could not be restarted (ssodh/init and reauthenticate did "
            f"not help{': ' + init.message if init.message else ''}): a human must log in at "
            "the gateway (two-factor authentication)"
        )

    async def _iserver_accounts(self) -> list[str]:
        reply = await self._call("GET", ISERVER_ACCOUNTS, "/iserver/accounts")
        if reply.status == 401 and self._connected:
            await self._check_session("HTTP 401 on /iserver/accounts", lost=True)
        if reply.status != 200:
            raise GatewayError(
                f"/iserver/accounts answered HTTP {reply.status} {_error_text(reply.data)}"
            )
        accounts = reply.data.get("accounts") if isinstance(reply.data, dict) else None
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            self._garbage(ISERVER_ACCOUNTS, reply, "no account list")
            raise GatewayError("/iserver/accounts answered without an account list")
        self._bridge_ready = True
        return [str(a) for a in accounts]

    async def _portfolio_accounts(self) -> list[str]:
        reply = await self._call("GET", PORTFOLIO_ACCOUNTS, "/portfolio/accounts")
        if reply.status != 200:
            raise GatewayError(
                f"/portfolio/accounts answered HTTP {reply.status} {_error_text(reply.data)}"
            )
        if not isinstance(reply.data, list):
            self._garbage(PORTFOLIO_ACCOUNTS, reply, "not a list")
            raise GatewayError("/portfolio/accounts answered something that is not a list")
        ids: list[str] = []
        for item in reply.data:
            ident = item.get("accountId") or item.get("id") if isinstance(item, dict) else None
            if not isinstance(ident, str) or not ident:
                self._garbage(PORTFOLIO_ACCOUNTS, reply, "an account without an id")
                raise GatewayError("/portfolio/accounts answered an account without an id")
            ids.append(ident)
        self._portfolio_ready = True
        return ids

    async def _open_accounts(self) -> None:
        brokerage = await self._iserver_accounts()
        accounts = await self._portfolio_accounts() or brokerage
        wanted = self._wanted_account
        if wanted is not None:
            if wanted not in accounts:
                raise AccountSelectionError(
                    f"IB_ACCOUNT={wanted} is not among the gateway's accounts: "
                    f"{', '.join(accounts) or 'none'}"
                )
            self._account = wanted
        elif len(accounts) == 1:
            self._account = accounts[0]
        elif not accounts:
            raise GatewayError("the gateway reports no account")
        else:
            raise AccountSelectionError(
                f"the gateway manages several accounts ({', '.join(accounts)}): "
                "set IB_ACCOUNT to choose one"
            )

    # -- positions ------------------------------------------------------------------------

    def _parse_position(self, raw: Any) -> PortalPosition | None:
        if not isinstance(raw, dict):
            raise _BadRow(f"a position that is not an object: {gateway_text(repr(raw), 60)}")
        conid = _as_int(raw.get("conid"))
        quantity = _as_float(raw.get("position"))
        asset = raw.get("assetClass")
        if conid is None or quantity is None or not isinstance(asset, str) or not asset:
            raise _BadRow(
                "a position without conid, position or assetClass: " + gateway_text(repr(raw), 120)
            )
        account = raw.get("acctId")
        if isinstance(account, str) and account and account != self._account:
            return None
        if quantity == 0:
            return None  # closed today, still listed
        sec_type = asset.strip().upper()
        raw_multiplier = raw.get("multiplier")
        if sec_type in OPTION_SEC_TYPES | FUTURE_SEC_TYPES:
            # A derivative without its multiplier would be off by a factor of 50 or 100.
            number = _as_float(raw_multiplier)
            if number is None or number <= 0:
                raise _BadRow(f"{sec_type} {conid} has no multiplier ({raw_multiplier!r})")
            multiplier = number
        else:
            try:
                multiplier = multiplier_from(
                    raw_multiplier if isinstance(raw_multiplier, str | int | float) else None
                )
            except ValueError as exc:
                raise _BadRow(str(exc)) from None
        underlying = _as_int(raw.get("undConid")) or None
        if underlying is None and sec_type not in OPTION_SEC_TYPES:
            underlying = conid  # a stock or future is its own underlying
        symbol = next(
            (
                str(value).strip()
                for value in (
                    raw.get("undSym") if sec_type not in ("STK", "ETF") else None,
                    raw.get("ticker"),
                    str(raw.get("contractDesc") or "").split(" ")[0],
                )
                if isinstance(value, str) and value.strip()
            ),
            str(conid),
        )
        return PortalPosition(conid, symbol, sec_type, quantity, multiplier, underlying)

    async def _refresh_positions(self) -> bool:
        """Re-read every page of positions; False (old positions kept) if that failed."""
        account = self._account
        if account is None:
            return False
        if not self._portfolio_ready:
            await self._portfolio_accounts()
        self._positions_at = self._clock.monotonic()
        rows: list[Any] = []
        for page in range(MAX_PAGES):
            path = f"/portfolio/{quote(account, safe='')}/positions/{page}"
            reply = await self._call("GET", POSITIONS, path)
            if reply.status == 401:
                await self._check_session("HTTP 401 on positions", lost=True)
                return False
            if reply.status != 200:
                if reply.status == 400:
                    self._portfolio_ready = False  # e.g. "/portfolio/accounts first"
                self._report(
                    "gateway_error",
                    f"positions answered HTTP {reply.status} {_error_text(reply.data)}",
                    key="positions_error",
                    detail={"endpoint": POSITIONS, "status": reply.status},
                )
                return False
            if not isinstance(reply.data, list):
                self._garbage(POSITIONS, reply, "not a list")
                return False
            rows.extend(reply.data)
            if len(reply.data) < PAGE_SIZE:
                break
        parsed: dict[int, PortalPosition] = {}
        try:
            for raw in rows:
                position = self._parse_position(raw)
                if position is not None:
                    parsed[position.conid] = position
        except _BadRow as exc:
            self._report(
                "garbage",
                f"positions skipped: {exc}",
                key=f"garbage:{POSITIONS}",
                detail={"endpoint": POSITIONS},
            )
            return False
        before = self._positions
        self._positions = parsed
        if before is not None and before != parsed:
            self._listener.feed_event(
                "positions_changed",
                f"positions changed: {len(before)} -> {len(parsed)} open",
                detail={
                    "added": sorted(set(parsed) - set(before)),
                    "removed": sorted(set(before) - set(parsed)),
                    "changed": sorted(
                        c for c in set(before) & set(parsed) if before[c] != parsed[c]
                    ),
                },
            )
        return True

    # -- market data ----------------------------------------------------------------------

    def _wanted_conids(self) -> list[int]:
        positions = self._positions or {}
        wanted = set(positions)
        wanted.update(p.underlying_conid for p in positions.values() if p.underlying_conid)
        return sorted(wanted)

    async def _poll_snapshots(self) -> None:
        conids = self._wanted_conids()
        for start in range(0, len(conids), CONIDS_PER_SNAPSHOT):
            if self._lost:
                return
            if not self._bridge_ready:
                await self._iserver_accounts()
            batch = conids[start : start + CONIDS_PER_SNAPSHOT]
            reply = await self._call(
                "GET",
                SNAPSHOT,
                "/iserver/marketdata/snapshot",
                params={"conids": ",".join(map(str, batch)), "fields": ",".join(SNAPSHOT_FIELDS)},
            )
            await self._take_snapshot_reply(reply)

    async def _take_snapshot_reply(self, reply: _Reply) -> None:
        if reply.status == 401:
            await self._check_session("HTTP 401 on snapshot", lost=True)
            return
        if reply.status == 400:
            # "no bridge" / "Init session first": /iserver/accounts must come (again) first,
            # unless the session itself is gone.
            self._bridge_ready = False
            await self._check_session("HTTP 400 on snapshot", lost=False)
            self._report(
                "gateway_error",
                f"snapshot answered HTTP 400 {_error_text(reply.data)}",
                key="snapshot_400",
                detail={"endpoint": SNAPSHOT, "status": 400},
            )
            return
        if reply.status != 200:
            if reply.status != 429:
                self._report(
                    "gateway_error",
                    f"snapshot answered HTTP {reply.status} {_error_text(reply.data)}",
                    key=f"snapshot_{reply.status}",
                    detail={"endpoint": SNAPSHOT, "status": reply.status},
                )
            return
        if not isinstance(reply.data, list):
            self._garbage(SNAPSHOT, reply, "not a list")
            return
        received = self._clock.now()
        for item in reply.data:
            conid = _as_int(item.get("conid")) if isinstance(item, dict) else None
            if conid is None or not isinstance(item, dict):
                self._garbage(SNAPSHOT, reply, "a row without a conid")
                continue
            fields = {
                key: str(value)
                for key, value in item.items()
                if key in _FIELD_SET
                and isinstance(value, str | int | float)
                and not isinstance(value, bool)
            }
            updated_ms = _as_int(item.get("_updated"))
            if not fields and updated_ms is None:
                continue  # the pre-flight answer: subscribed, no data yet
            updated = received
            if updated_ms is not None:
                with contextlib.suppress(OverflowError, OSError, ValueError):
                    updated = datetime.fromtimestamp(updated_ms / 1000.0, UTC)
            self._market[conid] = _Market(updated, fields)
            if not _GREEK_FIELDS.isdisjoint(fields):
                # A Greeks "tick": its age is what the staleness rule judges.
                self._greeks_at[conid] = updated

    # -- background tasks -----------------------------------------------------------------

    async def _tickle(self) -> None:
        """POST /tickle and act on the session status it reports; raises if no answer."""
        self._last_tickle = self._clock.monotonic()
        reply = await self._call("POST", TICKLE, "/tickle")
        if reply.status == 401:
            self._lose("the gateway session ended (HTTP 401 on /tickle)")
            return
        if reply.status == 429:
            return
        if reply.status != 200:
            self._report(
                "gateway_error",
                f"/tickle answered HTTP {reply.status} {_error_text(reply.data)}",
                key="tickle_error",
                detail={"endpoint": TICKLE, "status": reply.status},
            )
            return
        iserver = reply.data.get("iserver") if isinstance(reply.data, dict) else None
        auth = _parse_auth(iserver.get("authStatus") if isinstance(iserver, dict) else None)
        if auth is None:
            self._garbage(TICKLE, reply, "no iserver.authStatus")
            return
        if not auth.ok:
            self._lose(self._why_not(auth))

    async def _learn_session(self) -> None:
        """POST /tickle once to learn the session value (its auth status is acted on later)."""
        self._last_tickle = self._clock.monotonic()
        reply = await self._call("POST", TICKLE, "/tickle")
        if reply.status == 401:
            self._needs_human("the gateway has no login session (/tickle: HTTP 401)")

    async def _tickle_loop(self) -> None:
        while not self._lost:
            await self._clock.sleep_until(self._last_tickle + self.tickle_interval)
            if self._clock.monotonic() - self._last_tickle < self.tickle_interval:
                continue  # a probe tickled meanwhile
            try:
                await self._tickle()
            except (GatewayError, TimeoutError) as exc:
                self._report("gateway_error", f"/tickle failed: {_describe(exc)}", key="tickle")

    async def _poll_loop(self) -> None:
        start = self._clock.monotonic()
        k = 0
        while not self._lost:
            k = max(k + 1, math.floor((self._clock.monotonic() - start) / self.poll_interval) + 1)
            await self._clock.sleep_until(start + k * self.poll_interval)
            try:
                if self._clock.monotonic() - self._positions_at >= self.positions_interval:
                    await self._refresh_positions()
                await self._poll_snapshots()
            except (GatewayError, TimeoutError) as exc:
                self._report("gateway_error", f"polling failed: {_describe(exc)}", key="poll")
            except Exception as exc:  # a bug here must not end polling silently
                log.exception("portal poll failed")
                self._report("gateway_error", f"polling failed: {_describe(exc)}", key="poll")
