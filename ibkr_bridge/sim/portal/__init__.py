"""A Client Portal Web API gateway simulator over HTTPS (aiohttp).

:class:`PortalSimulator` serves the endpoints a portfolio-Greeks client needs under
``/v1/api`` with the shapes of IBKR's "IB REST API 2.29.0" (see
``/work/shared/reference/client-portal.md``): ``/tickle``, ``/iserver/auth/status``,
``/iserver/auth/ssodh/init``, ``/iserver/reauthenticate``, ``/sso/validate``, ``/logout``,
``/iserver/accounts``, ``/portfolio/accounts``, ``/portfolio/{acct}/positions/{page}`` and
``/iserver/marketdata/snapshot``. Positions, prices and model Greeks (Black-Scholes, Black-76
for futures options) come from the shared :class:`~ibkr_bridge.sim.portfolio.Portfolio`,
valued at the simulator clock's time.

The gateway's habits are reproduced: a self-signed certificate; snapshot values as strings
(``"1,300"``, ``"10.2K"``, a ``C`` prefix on the last price outside regular hours); the
snapshot pre-flight (the first call per conid returns no fields); ``/iserver/accounts``
before snapshots and ``/portfolio/accounts`` before other ``/portfolio`` calls; rate limits
answered with 429 and a penalty box for repeat offenders; a brokerage session that times
out when idle and ends every night; ``competing`` when another login takes the session.

Faults (methods, or a JSON fault script in the format of :mod:`ibkr_bridge.sim.faults`
with the names in :data:`PORTAL_FAULTS`) run on the injectable clock, so tests drive them
with a FakeClock. Every request is recorded (:attr:`PortalSimulator.requests`) so a test can
prove a client never exceeded a limit and never hammered the gateway while waiting.

The parts, one class per module in a single inheritance chain as in :mod:`ibkr_bridge.sim.tws`:
``_state.PortalState`` (what all parts share, the request log) → ``_ratelimit.RateLimits``
→ ``_session.Session`` (session rules and session faults) → ``_faults.Faults`` (timed
faults) → ``_gate.Gate`` (the middleware that answers before an endpoint) →
``_auth.SessionEndpoints`` → ``_accounts.AccountEndpoints`` → ``_market.MarketData``
(snapshots) → ``_server.PortalSimulator`` (lifecycle and routes). ``_api`` holds the
endpoint names and limits, ``_format`` the gateway's number formats and ``_script`` the
fault scripts.
"""

from __future__ import annotations

from ibkr_bridge.sim.portal._api import (
    AUTH_STATUS,
    PAGE_SIZE,
    PORTFOLIO_ACCOUNTS,
    POSITIONS,
    REAUTHENTICATE,
    SNAPSHOT,
    SSO_VALIDATE,
    SSODH_INIT,
    TICKLE,
    SimLimits,
)
from ibkr_bridge.sim.portal._format import format_size
from ibkr_bridge.sim.portal._script import load_portal_fault_script, parse_portal_fault_script
from ibkr_bridge.sim.portal._server import PortalSimulator, serve_portal

__all__ = [
    "AUTH_STATUS",
    "PAGE_SIZE",
    "PORTFOLIO_ACCOUNTS",
    "POSITIONS",
    "REAUTHENTICATE",
    "SNAPSHOT",
    "SSODH_INIT",
    "SSO_VALIDATE",
    "TICKLE",
    "PortalSimulator",
    "SimLimits",
    "format_size",
    "load_portal_fault_script",
    "parse_portal_fault_script",
    "serve_portal",
]
