"""The Client Portal API as the PORTAL feed sees it: endpoints, limits, records, parsing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from attrs import frozen

from ibkr_bridge.core.errors import NeedsLoginError as NeedsLoginError
from ibkr_bridge.core.greeks import parse_portal_number
from ibkr_bridge.core.redaction import gateway_text, remember_secret

MODE: Final = "PORTAL"
API_PREFIX: Final = "/v1/api"

# Endpoint names (the same names key the rate limiter and the simulator's counters).
TICKLE: Final = "tickle"
AUTH_STATUS: Final = "auth_status"
SSODH_INIT: Final = "ssodh_init"
REAUTHENTICATE: Final = "reauthenticate"
ISERVER_ACCOUNTS: Final = "iserver_accounts"
PORTFOLIO_ACCOUNTS: Final = "portfolio_accounts"
POSITIONS: Final = "positions"
SNAPSHOT: Final = "snapshot"

PAGE_SIZE: Final = 100
MAX_PAGES: Final = 100  # 10,000 positions: a garbage answer cannot page forever
CONIDS_PER_SNAPSHOT: Final = 50
DEFAULT_POLL: Final = 2.0  # seconds between snapshot polls


class PortalSettings(Protocol):
    """The settings :meth:`PortalFeed.from_settings` reads (see :mod:`ibkr_bridge.config`)."""

    @property
    def gateway_url(self) -> str: ...

    @property
    def account(self) -> str | None: ...

    @property
    def gateway_ca(self) -> Path | None: ...

    @property
    def verify_tls(self) -> bool: ...

    @property
    def tickle_interval(self) -> float: ...


@frozen
class _Reply:
    """An HTTP answer: ``data`` is the decoded JSON, or None with ``garbage`` saying why."""

    status: int
    data: Any
    garbage: str | None = None
    oversized: bool = False


@frozen
class _Auth:
    authenticated: bool
    connected: bool
    competing: bool
    message: str

    @property
    def ok(self) -> bool:
        return self.authenticated and self.connected and not self.competing


@frozen
class PortalPosition:
    """One open position as the feed understood ``/portfolio/{acct}/positions``."""

    conid: int
    symbol: str  # the underlying's symbol: legs are grouped by it
    sec_type: str
    quantity: float
    multiplier: float
    underlying_conid: int | None
    # An option's terms, for the model fallback; None when the gateway did not say.
    right: str | None = None
    strike: float | None = None
    expiry: str | None = None  # YYYYMMDD


@frozen
class _Market:
    updated: datetime
    fields: Mapping[str, str]


class _BadRow(ValueError):
    pass


def api_root(gateway_url: str) -> str:
    """``https://host:port`` or ``https://host:port/v1/api`` → the API root URL."""
    root = gateway_url.strip().rstrip("/")
    if not root.startswith(("https://", "http://")):
        raise ValueError(f"gateway URL must start with https://, got {gateway_url!r}")
    return root if root.endswith(API_PREFIX) else root + API_PREFIX


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    number = parse_portal_number(value)
    return number if number is not None and math.isfinite(number) else None


def _parse_auth(data: Any) -> _Auth | None:
    """An auth-status object (from auth/status, ssodh/init or tickle), or None if malformed."""
    if not isinstance(data, dict):
        return None
    authenticated = data.get("authenticated")
    connected = data.get("connected", True)
    competing = data.get("competing", False)
    if not all(isinstance(v, bool) for v in (authenticated, connected, competing)):
        return None
    message = data.get("message") or data.get("fail") or ""
    return _Auth(bool(authenticated), bool(connected), bool(competing), gateway_text(message))


def _error_text(data: Any) -> str:
    """The ``error`` of an error body, quoted safely (it may echo the session token)."""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return gateway_text(data["error"])
    return ""


def _describe(exc: BaseException) -> str:
    text = gateway_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _learn_secrets(data: Any) -> None:
    """Remember the session values an answer hands out, so no log line can show them."""
    if isinstance(data, dict):
        for key in ("session", "sessionId"):
            remember_secret(data.get(key))
