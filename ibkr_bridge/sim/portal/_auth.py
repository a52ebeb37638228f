"""The session endpoints: ``/tickle``, auth status, ``ssodh/init``, reauthenticate, SSO, logout."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ibkr_bridge.sim.portal._api import SESSION_COOKIE, error
from ibkr_bridge.sim.portal._gate import Gate


class SessionEndpoints(Gate):
    """The handlers that report on, open and end the gateway's session."""

    def _with_cookie(self, response: web.Response) -> web.Response:
        response.set_cookie(SESSION_COOKIE, self._cookie_token, secure=True, httponly=True)
        return response

    async def _tickle(self, request: web.Request) -> web.Response:
        now = self._clock.monotonic()
        left_ms = max(0, int((self._sso_login_at + self.sso_lifetime - now) * 1000))
        return self._with_cookie(
            web.json_response(
                {
                    "session": self._session_token,
                    "ssoExpires": left_ms,
                    "collission": self._competing(),
                    "userId": self.user_id,
                    "hmds": {} if self._bridge_ready else {"error": "no bridge"},
                    "iserver": {"authStatus": self._auth_status()},
                }
            )
        )

    async def _auth(self, request: web.Request) -> web.Response:
        return self._with_cookie(web.json_response(self._auth_status()))

    async def _ssodh_init(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: Any = {}
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return error(400, "Bad Request: body is not JSON")
        if not isinstance(body, dict):
            return error(400, "Bad Request: body must be an object")
        flag = body.get("compete")
        self.compete_flags.append(flag if isinstance(flag, bool) else None)
        compete = bool(flag)
        if self._needs_human:
            self._fail = "login required"
        elif self._competing() and not compete:
            self._message = "another session is connected"
        elif not self._authenticated or self._competing():
            self._start_brokerage()
        return web.json_response(self._auth_status())

    async def _reauthenticate(self, request: web.Request) -> web.Response:
        if not self._authenticated and not self._needs_human and self._reauth_due is None:
            self._reauth_due = self._clock.monotonic() + self.reauth_delay
        return web.json_response({"message": "triggered"})

    async def _sso_validate(self, request: web.Request) -> web.Response:
        now = self._clock.monotonic()
        paper = all(a.startswith("D") for a in self.portfolio.accounts)
        return web.json_response(
            {
                "USER_ID": self.user_id,
                "USER_NAME": self.user_name,
                "RESULT": True,
                "AUTH_TIME": int(self._sso_login_wall.timestamp() * 1000),
                "SF_ENABLED": False,
                "IS_FREE_TRIAL": False,
                "CREDENTIAL": self.user_name,
                "IP": request.remote or "127.0.0.1",
                "EXPIRES": max(0, int((self._sso_login_at + self.sso_lifetime - now) * 1000)),
                "QUALIFIED_FOR_MOBILE_AUTH": None,
                "LANDING_APP": "UNIVERSAL",
                "IS_MASTER": False,
                "lastAccessed": int(self._clock.now().timestamp() * 1000),
                "LOGIN_TYPE": 2 if paper else 1,
                "PAPER_USER_NAME": self.user_name,
                "features": {"env": "PROD", "wlms": True, "realtime": True},
                "region": "NJ",
            }
        )

    async def _logout(self, request: web.Request) -> web.Response:
        self._end_brokerage("logged out")
        self._sso_valid = False
        self._needs_human = True
        return web.json_response({"status": True})
