"""The gateway's session rules: SSO and brokerage sessions, idle timeout, nightly reset, competing.

Time-driven changes (a reauthentication coming through, a competing login ending, the idle
timeout, the SSO lifetime, the nightly reset) are applied lazily by ``_advance_time`` on
every request, so a FakeClock drives them without background tasks.
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime, timedelta
from typing import Any

from ibkr_bridge.sim.portal._api import SERVER_INFO, log
from ibkr_bridge.sim.portal._ratelimit import RateLimits
from ibkr_bridge.sim.portfolio import NEW_YORK


class Session(RateLimits):
    """The SSO and brokerage session state machine, and the faults that act on it."""

    @property
    def authenticated(self) -> bool:
        self._advance_time()
        return self._sso_valid and self._authenticated

    @property
    def sso_valid(self) -> bool:
        return self._sso_valid

    @property
    def competing_now(self) -> bool:
        self._advance_time()
        return self._competing()

    def _competing(self) -> bool:
        return self._competing_until is not None

    def _start_brokerage(self) -> None:
        self._authenticated = True
        self._competing_until = None
        self._reauth_due = None
        self._bridge_ready = False
        self._portfolio_ready = False
        self._preflighted = set()
        self._message = ""
        self._fail = ""
        self._last_activity = self._clock.monotonic()

    def _end_brokerage(self, message: str) -> None:
        self._authenticated = False
        self._bridge_ready = False
        self._portfolio_ready = False
        self._preflighted = set()
        self._reauth_due = None
        self._message = message

    def _schedule_nightly(self) -> None:
        if self.nightly_reset is None:
            self._next_nightly = None
            return
        local = self._clock.now().astimezone(NEW_YORK)
        candidate = datetime.combine(local.date(), self.nightly_reset, tzinfo=NEW_YORK)
        if candidate <= local:
            candidate = datetime.combine(
                local.date() + timedelta(days=1), self.nightly_reset, tzinfo=NEW_YORK
            )
        self._next_nightly = candidate

    def _advance_time(self) -> None:
        """Apply what the clock's passage implies: reauth done, competing over, timeouts."""
        now = self._clock.monotonic()
        if self._competing_until is not None and now >= self._competing_until:
            self._competing_until = None
            self._message = "the other session ended; initialise a new brokerage session"
        if self._reauth_due is not None and now >= self._reauth_due:
            self._reauth_due = None
            if self._sso_valid and not self._needs_human and not self._competing():
                self._start_brokerage()
        if self._authenticated and now - self._last_activity > self.idle_timeout:
            log.info("simulator: brokerage session timed out (idle)")
            self._end_brokerage("session timed out")
        if now - self._sso_login_at > self.sso_lifetime and self._sso_valid:
            self._sso_valid = False
            self._needs_human = True
            self._end_brokerage("session expired")
        if self._next_nightly is not None and self._clock.now() >= self._next_nightly:
            self.nightly_logout(self.nightly_needs_human)
            self._schedule_nightly()

    def _auth_status(self) -> dict[str, Any]:
        authenticated = self._sso_valid and self._authenticated
        return {
            "authenticated": authenticated,
            "competing": self._competing(),
            "connected": self._sso_valid,
            "established": authenticated,
            "fail": self._fail,
            "message": self._message,
            "MAC": "98:F2:B3:23:BF:A0",
            "hardware_info": "a1b2c3d4|98:F2:B3:23:BF:A0",
            "serverInfo": dict(SERVER_INFO),
        }

    # -- session faults -------------------------------------------------------------------

    def expire_session(self) -> None:
        """The brokerage session times out: ``authenticated: false``; ssodh/init restores it."""
        log.info("fault: brokerage session expired")
        self._end_brokerage("session timed out")

    def nightly_logout(self, needs_human: bool = False, *, sso_expired: bool = True) -> None:
        """IBKR's nightly end of session.

        ``needs_human=False``: ``authenticated: false``; ssodh/init or reauthenticate
        restore it. ``needs_human=True`` (a live login with two-factor authentication):
        nothing but :meth:`human_login` restores it; with ``sso_expired`` every endpoint
        answers 401 meanwhile, else auth status says ``authenticated: false`` and
        ssodh/init and reauthenticate are accepted but do nothing.
        """
        log.info("fault: nightly logout (needs_human=%s)", needs_human)
        self._end_brokerage("session ended (nightly reset)")
        self._needs_human = needs_human
        if needs_human:
            self._fail = "login required"
            if sso_expired:
                self._sso_valid = False

    def human_login(self, *, brokerage: bool = True) -> None:
        """Someone logged in through the gateway's web page (with 2FA).

        With ``brokerage=False`` only the SSO session exists and a client must still call
        ssodh/init.
        """
        log.info("fault: human login")
        self._sso_valid = True
        self._needs_human = False
        self._sso_login_at = self._clock.monotonic()
        self._sso_login_wall = self._clock.now()
        self._session_token = secrets.token_hex(16)
        self._cookie_token = secrets.token_hex(16)
        self._competing_until = None
        self._fail = ""
        if brokerage:
            self._start_brokerage()
        else:
            self._end_brokerage("")

    def competing(self, seconds: float | None = None) -> None:
        """Another login takes the brokerage session for ``seconds`` (None = until it is
        competed back with ``ssodh/init {"compete": true}``); afterwards
        ``authenticated: false`` until ssodh/init."""
        log.info("fault: competing session (%s s)", seconds)
        self._end_brokerage("another session is connected")
        self._competing_until = math.inf if seconds is None else self._clock.monotonic() + seconds
