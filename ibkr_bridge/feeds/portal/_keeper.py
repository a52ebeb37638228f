"""Keeping the PORTAL feed's gateway session: auth status, ssodh/init, tickles, the accounts.

:class:`_SessionKeeper` checks the session at connect (starting a brokerage session with
``ssodh/init`` or ``reauthenticate`` when that can work without a human), opens
``/iserver/accounts`` and ``/portfolio/accounts`` and chooses the account (all of them, under
account ``""``, when none is configured and the login sees several), and tickles about
once a minute, reporting ``feed_disconnected`` when the session is no longer authenticated,
connected, or is competing with another login. It never competes (``compete: false``): that
would disconnect the trader's own sessions. It never calls ``/logout`` either.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from ibkr_bridge.core.errors import AccountSelectionError, GatewayError
from ibkr_bridge.feeds.portal._http import _PortalHttp
from ibkr_bridge.feeds.portal._wire import (
    AUTH_STATUS,
    ISERVER_ACCOUNTS,
    PORTFOLIO_ACCOUNTS,
    REAUTHENTICATE,
    SSODH_INIT,
    TICKLE,
    NeedsLoginError,
    _Auth,
    _describe,
    _error_text,
    _parse_auth,
    _Reply,
)

log = logging.getLogger(__name__)


class _SessionKeeper(_PortalHttp):
    """The session layer of the PORTAL feed (its state is set by PortalFeed)."""

    tickle_interval: float
    reauth_grace: float
    _wanted_account: str | None
    _account: str | None
    _accounts: tuple[str, ...]
    _needs_login: bool
    _reauth_at: float | None
    _last_tickle: float
    _connected: bool
    _lost: bool
    _lost_reason: str
    _bridge_ready: bool
    _portfolio_ready: bool

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
        self._accounts = ()
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
            # No IB_ACCOUNT and several accounts: report on each, and on all under "".
            self._account = ""
            self._accounts = tuple(accounts)

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
