"""The simulated gateway's vocabulary: endpoint names, rate limits, request records, errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final

from aiohttp import web
from attrs import field, frozen

# One logger for the whole simulator, under the name it has always had.
log = logging.getLogger("ibkr_bridge.sim.portal")

API_PREFIX: Final = "/v1/api"

# Endpoint names used in request counts, limits and by the client's rate limiter.
TICKLE: Final = "tickle"
AUTH_STATUS: Final = "auth_status"
SSODH_INIT: Final = "ssodh_init"
REAUTHENTICATE: Final = "reauthenticate"
SSO_VALIDATE: Final = "sso_validate"
LOGOUT: Final = "logout"
ISERVER_ACCOUNTS: Final = "iserver_accounts"
PORTFOLIO_ACCOUNTS: Final = "portfolio_accounts"
POSITIONS: Final = "positions"
SNAPSHOT: Final = "snapshot"
OTHER: Final = "other"

PAGE_SIZE: Final = 100
GREEK_FIELDS: Final = ("7308", "7309", "7310", "7311")
IMPLIED_VOL_FIELD: Final = "7633"  # "Implied Vol. %"
GREEK_FIELD_OF: Final = MappingProxyType(
    {"delta": "7308", "gamma": "7309", "theta": "7310", "vega": "7311"}
)
#: The cookie the simulated gateway sets on its session answers (a session secret).
SESSION_COOKIE: Final = "x-sess-uuid"
SENTINEL_MODES: Final = ("missing", "empty", "minus2", "na")
SENTINEL_TEXT: Final = {"empty": "", "minus2": "-2", "na": "N/A"}
SERVER_INFO: Final = MappingProxyType(
    {"serverName": "SimGw1", "serverVersion": "Build 10.30.1, simulated (ibkr-bridge)"}
)

# The endpoints a data fault hits by default: everything but the session's own.
DATA_ENDPOINTS: Final = frozenset(
    {ISERVER_ACCOUNTS, PORTFOLIO_ACCOUNTS, POSITIONS, SNAPSHOT, SSO_VALIDATE}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@frozen
class SimLimits:
    """The gateway's rate limits: ``(requests, per seconds)`` sliding windows.

    ``penalty_after`` rate-limit violations within ``penalty_window`` seconds put the
    client in the penalty box for ``penalty_seconds`` (everything answers 429).
    """

    global_limit: tuple[int, float] = (10, 1.0)
    endpoints: Mapping[str, tuple[int, float]] = field(
        factory=lambda: MappingProxyType(
            {
                SNAPSHOT: (10, 1.0),
                TICKLE: (1, 1.0),
                PORTFOLIO_ACCOUNTS: (1, 5.0),
                SSO_VALIDATE: (1, 60.0),
            }
        )
    )
    penalty_after: int = 5
    penalty_window: float = 60.0
    penalty_seconds: float = 600.0


@frozen
class RequestRecord:
    """One request the simulator received. ``status`` is None for a frozen (unanswered) one."""

    at: float  # simulator clock, monotonic
    wall: datetime
    method: str
    path: str
    endpoint: str
    status: int | None


def error(status: int, message: str) -> web.Response:
    """The gateway's JSON error body, ``{"error": ..., "statusCode": ...}``."""
    return web.json_response({"error": message, "statusCode": status}, status=status)
