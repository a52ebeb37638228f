"""The doctor's gateway checks: the TWS API handshake (SOCKET) and Client Portal auth (PORTAL)."""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
from pathlib import Path
from typing import Any

import aiohttp
from attrs import frozen

from ibkr_bridge.config import (
    Settings,
)
from ibkr_bridge.core.errors import HandshakeError
from ibkr_bridge.feeds.portal.feed import api_root
from ibkr_bridge.ops._report import (
    _MAX_REPLY,
    TWS_MAX_VERSION,
    TWS_MIN_VERSION,
    CheckResult,
    _describe,
    _hostport,
)

# --- gateway: SOCKET -------------------------------------------------------------------


@frozen
class TwsHandshake:
    server_version: int
    connection_time: str


async def tws_handshake(host: str, port: int, timeout: float) -> TwsHandshake:
    """Connect, exchange versions, close: never ``startApi``, so no client id is used.

    Raises OSError (refused, unreachable), TimeoutError or :class:`HandshakeError`.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        offer = f"v{TWS_MIN_VERSION}..{TWS_MAX_VERSION}".encode()
        writer.write(b"API\0" + struct.pack(">I", len(offer)) + offer)
        async with asyncio.timeout(timeout):
            await writer.drain()
            try:
                (size,) = struct.unpack(">I", await reader.readexactly(4))
                if size > _MAX_REPLY:
                    raise HandshakeError(f"a {size}-byte reply is not a TWS API handshake")
                body = await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise HandshakeError(
                    "the peer closed the connection during the handshake (API versions "
                    f"{TWS_MIN_VERSION}..{TWS_MAX_VERSION} refused, or this host is not in "
                    "the Gateway's trusted IPs)"
                ) from None
    finally:
        writer.transport.abort()  # no goodbye on the wire: there is no session to end
    fields = body.decode("utf-8", errors="replace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    if len(fields) != 2 or not fields[0].isdigit():
        raise HandshakeError(f"unexpected handshake reply {fields[:4]!r}")
    version = int(fields[0])
    if not TWS_MIN_VERSION <= version <= TWS_MAX_VERSION:
        raise HandshakeError(
            f"server version {version} is outside {TWS_MIN_VERSION}..{TWS_MAX_VERSION}, "
            "which ib_async requires"
        )
    return TwsHandshake(version, fields[1])


async def check_socket_gateway(host: str, port: int, timeout: float) -> CheckResult:
    target = _hostport(host, port)
    data: dict[str, Any] = {"mode": "SOCKET", "target": target}
    try:
        shake = await tws_handshake(host, port, timeout)
    except ConnectionRefusedError:
        why = (
            "connection refused: is IB Gateway running, with its API enabled on this port "
            "(IB_SOCKET_PORT)?"
        )
    except TimeoutError:
        why = (
            f"no handshake reply within {timeout:g} s (IB_CONNECT_TIMEOUT): a frozen "
            "Gateway, or not a TWS API port"
        )
    except HandshakeError as exc:
        why = str(exc)
    except OSError as exc:
        why = f"cannot connect: {_describe(exc)}"
    else:
        data.update(server_version=shake.server_version, connection_time=shake.connection_time)
        return CheckResult(
            "gateway",
            "OK",
            f"{target}: TWS API server version {shake.server_version}, gateway time "
            f"{shake.connection_time} (handshake only: no client id used)",
            data,
        )
    return CheckResult("gateway", "FAIL", f"{target}: {why}", data)


# --- gateway: PORTAL -------------------------------------------------------------------


@frozen
class PortalAuth:
    http_status: int
    authenticated: bool | None
    competing: bool | None
    connected: bool | None
    message: str


async def portal_auth_status(
    gateway_url: str, *, ca_path: Path | None, verify_tls: bool, timeout: float
) -> PortalAuth:
    """``GET /iserver/auth/status`` once. Raises aiohttp/OS errors, TimeoutError, ValueError."""
    url = api_root(gateway_url) + "/iserver/auth/status"
    ssl_option: ssl.SSLContext | bool = False
    if verify_tls:
        ssl_option = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
    connector = aiohttp.TCPConnector(ssl=ssl_option, limit=1)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session,
        session.get(url) as response,
    ):
        status = response.status
        text = await response.text(errors="replace")
    if status != 200:
        return PortalAuth(status, None, None, None, text[:200])
    try:
        body = json.loads(text)
    except ValueError:
        raise ValueError(
            f"auth status answered something that is not JSON: {text[:80]!r}"
        ) from None
    if not isinstance(body, dict):
        raise ValueError("auth status answered something that is not an object")

    def flag(name: str) -> bool | None:
        value = body.get(name)
        return value if isinstance(value, bool) else None

    message = body.get("message") or body.get("fail") or ""
    return PortalAuth(
        status, flag("authenticated"), flag("competing"), flag("connected"), str(message)
    )


async def check_portal_gateway(settings: Settings) -> CheckResult:
    target = settings.gateway_url
    data: dict[str, Any] = {"mode": "PORTAL", "target": target}
    tls = (
        "TLS not verified (IBKR_VERIFY_TLS=false)"
        if not settings.verify_tls
        else f"TLS verified with {settings.gateway_ca or 'the system trust store'}"
    )
    try:
        auth = await portal_auth_status(
            settings.gateway_url,
            ca_path=settings.gateway_ca,
            verify_tls=settings.verify_tls,
            timeout=settings.connect_timeout,
        )
    except aiohttp.ClientConnectorCertificateError as exc:
        why = (
            f"TLS certificate not trusted ({exc.certificate_error}): set IBKR_GATEWAY_CA to "
            "the gateway's certificate"
        )
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        why = f"TLS failed: {_describe(exc)}"
    except aiohttp.ClientConnectorError as exc:
        why = (
            f"cannot connect: {_describe(exc.os_error)}: is the Client Portal gateway "
            "running at IBKR_GATEWAY_URL?"
        )
    except TimeoutError:
        why = f"no answer within {settings.connect_timeout:g} s (IB_CONNECT_TIMEOUT)"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        why = _describe(exc)
    else:
        return _portal_result(auth, target, tls, data)
    return CheckResult("gateway", "FAIL", f"{target}: {why}", data)


def _portal_result(auth: PortalAuth, target: str, tls: str, data: dict[str, Any]) -> CheckResult:
    data.update(
        http_status=auth.http_status,
        authenticated=auth.authenticated,
        competing=auth.competing,
        connected=auth.connected,
        message=auth.message,
    )
    if auth.http_status == 401:
        return CheckResult(
            "gateway",
            "FAIL",
            f"{target}: no login session (HTTP 401): a human must log in at the gateway's web page",
            data,
        )
    if auth.http_status != 200:
        return CheckResult(
            "gateway", "FAIL", f"{target}: auth status answered HTTP {auth.http_status}", data
        )
    flags = (
        f"authenticated={auth.authenticated} competing={auth.competing} connected={auth.connected}"
    )
    if auth.message:
        flags += f" message={auth.message!r}"
    detail = f"{target}: {flags}; {tls}"
    if auth.authenticated is None or auth.connected is None:
        return CheckResult("gateway", "FAIL", f"{detail}\nnot an auth status answer", data)
    if not auth.connected:
        return CheckResult("gateway", "FAIL", f"{detail}\nno IBKR login: a human must log in", data)
    if auth.competing:
        return CheckResult(
            "gateway",
            "FAIL",
            f"{detail}\nanother login holds the brokerage session; the bridge will not take "
            "it over",
            data,
        )
    if not auth.authenticated:
        return CheckResult(
            "gateway",
            "WARN",
            f"{detail}\nlogged in, no brokerage session yet: the bridge starts one itself",
            data,
        )
    return CheckResult("gateway", "OK", detail, data)
