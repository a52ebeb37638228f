"""``ibkr-bridge check``: look at everything the bridge needs without disturbing anything.

Checks, each reported as OK, WARN, FAIL or SKIP with a one-screen detail:

``configuration``
    :func:`~ibkr_bridge.config.load_settings` on the environment and the dotenv file; every
    problem is listed (FAIL, exit code 2). Unknown ``IB_``/``IBKR_``/``BRIDGE_`` variables
    are a WARN.
``database``
    One connection to the configured database (its redacted address is shown, never a
    password), the server version, and the privileges the writer needs (TEMP on the
    database: the COPY path uses temporary tables).
``schema``
    :func:`~ibkr_bridge.storage.schema.check_bridge_schema`: tables absent is a WARN (the bridge
    creates them at start) unless the user may not create them; a table in a shape the
    bridge cannot write to is a FAIL with exit code 3.
``gateway``
    SOCKET: a raw TWS API handshake only (``API\\0``, the version range, the server's
    two-field reply, close). ``startApi`` is never sent, so no client id is taken: neither
    the trader's session nor a running bridge can be kicked by a check. PORTAL: one
    ``GET /iserver/auth/status`` with the TLS settings of the bridge.
``buffer``
    :func:`inspect_buffer`, read-only: pending records, oldest/newest, sizes, quarantined
    lines, and whether a running bridge holds the lock (information, not a failure).

Nothing is written anywhere: the buffer is never opened as a :class:`JsonlBuffer` (that
would take its lock and repair it); its lock is probed with a shared ``flock`` released at
once. (A bridge starting in that same microsecond would see the buffer locked and exit 4.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import asyncpg
from attrs import field, frozen
from ib_async.client import Client

from ibkr_bridge.config import (
    ApiMode,
    ConfigError,
    DatabaseConfig,
    Settings,
    load_settings,
)
from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.feeds.portal.feed import api_root
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_SCHEMA
from ibkr_bridge.storage.buffer import BufferReport, inspect_buffer
from ibkr_bridge.storage.drain import RejectedFile, RejectedSummary, reason_of
from ibkr_bridge.storage.schema import (
    EVENTS_TABLE,
    GREEKS_TABLE,
    UNDERLYING_TABLE,
    check_bridge_schema,
)

__all__ = [
    "BufferReport",
    "CheckResult",
    "DoctorReport",
    "HandshakeError",
    "PortalAuth",
    "Status",
    "TwsHandshake",
    "check_buffer",
    "check_configuration",
    "check_database",
    "check_portal_gateway",
    "check_socket_gateway",
    "inspect_buffer",
    "portal_auth_status",
    "render_buffer_status",
    "render_table",
    "run_checks",
    "tws_handshake",
]

Status = Literal["OK", "WARN", "FAIL", "SKIP"]

# The range ib_async offers: a Gateway that answers this handshake will answer the bridge.
TWS_MIN_VERSION: Final[int] = int(Client.MinClientVersion)
TWS_MAX_VERSION: Final[int] = int(Client.MaxClientVersion)
_MAX_REPLY: Final = 4096  # the handshake reply is two short fields
_NEAR_FULL: Final = 0.8


@frozen
class CheckResult:
    """One line of the report; ``code`` is the exit status a FAIL here stands for."""

    name: str
    status: Status
    detail: str
    data: Mapping[str, Any] = field(factory=dict)
    code: int = EXIT_FAILURE


@frozen
class DoctorReport:
    checks: tuple[CheckResult, ...]

    @property
    def exit_code(self) -> int:
        """2 for bad configuration, else 3 for a table shape, else 1 for any FAIL, else 0."""
        codes = {c.code for c in self.checks if c.status == "FAIL"}
        for code in (EXIT_CONFIG, EXIT_SCHEMA, EXIT_FAILURE):
            if code in codes:
                return code
        return EXIT_FAILURE if codes else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, "data": dict(c.data)}
                for c in self.checks
            ],
        }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    # Driver messages can quote a connection string; never let a password through.
    return redact_secrets(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- configuration ---------------------------------------------------------------------


def check_configuration(
    environ: Mapping[str, str], env_file: str | None
) -> tuple[CheckResult, Settings | None]:
    """The settings (or None) and what was found; ``environ`` wins over ``env_file``."""
    if env_file is None:
        source = "environment only"
    elif os.path.isfile(env_file):
        source = f"{env_file} and the environment"
    else:
        source = f"environment only ({env_file} not found)"
    try:
        settings = load_settings(environ, dotenv_path=env_file)
    except ConfigError as exc:
        count = len(exc.problems)
        detail = "\n".join([f"{count} problem{'' if count == 1 else 's'}:", *exc.problems])
        failed = {"source": source, "problems": list(exc.problems)}
        return CheckResult("configuration", "FAIL", detail, failed, code=EXIT_CONFIG), None
    data: dict[str, Any] = {
        "source": source,
        "mode": settings.api_mode.value,
        "unknown_keys": list(settings.unknown_keys),
    }
    detail = f"{settings.api_mode.value} mode; read from {source}"
    if settings.unknown_keys:
        unknown = ", ".join(settings.unknown_keys)
        return (
            CheckResult("configuration", "WARN", f"{detail}\nunknown, ignored: {unknown}", data),
            settings,
        )
    return CheckResult("configuration", "OK", detail, data), settings


# --- database --------------------------------------------------------------------------

_PRIVILEGES: Final = f"""
SELECT current_user AS "user",
       current_schema() AS "schema",
       current_schema() IS NOT NULL AND has_schema_privilege(current_schema(), 'CREATE')
           AS "create",
       has_database_privilege(current_database(), 'TEMP') AS "temp",
       to_regclass('{GREEKS_TABLE}') IS NULL
           OR has_table_privilege(to_regclass('{GREEKS_TABLE}'), 'INSERT') AS "greeks_insert",
       to_regclass('{EVENTS_TABLE}') IS NULL
           OR has_table_privilege(to_regclass('{EVENTS_TABLE}'), 'INSERT') AS "events_insert",
       to_regclass('{UNDERLYING_TABLE}') IS NULL
           OR has_table_privilege(to_regclass('{UNDERLYING_TABLE}'), 'INSERT')
           AS "underlying_insert"
"""


async def check_database(
    db: DatabaseConfig, *, connect_timeout: float, command_timeout: float
) -> tuple[CheckResult, CheckResult]:
    """The ``database`` and ``schema`` results, over one short-lived connection."""
    where = db.redacted()
    data: dict[str, Any] = {"database": where}
    try:
        # asyncpg's own timeout covers the connect; wait_for is the backstop for a black hole.
        conn = await asyncio.wait_for(
            asyncpg.connect(
                **db.connect_kwargs(), timeout=connect_timeout, command_timeout=command_timeout
            ),
            connect_timeout + 1.0,
        )
    except Exception as exc:  # whatever stops the connection is the finding
        why = _describe(exc)
        if isinstance(exc, TimeoutError):
            why = f"no answer within {connect_timeout:g} s (BRIDGE_DB_CONNECT_TIMEOUT)"
        return (
            CheckResult("database", "FAIL", f"{where}: cannot connect: {why}", data),
            CheckResult("schema", "SKIP", "database not reachable"),
        )
    try:
        version = await conn.fetchval("SHOW server_version")
        privileges = await conn.fetchrow(_PRIVILEGES)
        problems = await check_bridge_schema(conn)
    except Exception as exc:  # a query the doctor needs failed: report it, do not crash
        return (
            CheckResult("database", "FAIL", f"{where}: {_describe(exc)}", data),
            CheckResult("schema", "SKIP", "database query failed"),
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), command_timeout)
    data.update(server_version=str(version), user=privileges["user"], schema=privileges["schema"])
    database = CheckResult(
        "database",
        "OK",
        f"{where}: PostgreSQL {version}, user {privileges['user']}",
        data,
    )
    if not privileges["temp"]:
        database = CheckResult(
            "database",
            "FAIL",
            f"{where}: user {privileges['user']} may not create temporary tables "
            "(the writer's COPY path needs TEMP on the database)",
            data,
        )
    return database, _schema_result(problems, privileges)


def _schema_result(problems: Mapping[str, list[str]], privileges: Mapping[str, Any]) -> CheckResult:
    missing = sorted(t for t, items in problems.items() if items == ["table is missing"])
    shape = {t: items for t, items in problems.items() if t not in missing}
    data: dict[str, Any] = {
        "missing_tables": missing,
        "problems": {t: list(items) for t, items in shape.items()},
        "schema": privileges["schema"],
    }
    if shape:
        lines = [f"{table}: {item}" for table, items in shape.items() for item in items]
        lines.append(
            "nothing was changed; `ibkr-bridge schema` shows the fix (`--apply` runs the "
            "additive part)"
        )
        return CheckResult("schema", "FAIL", "\n".join(lines), data, code=EXIT_SCHEMA)
    no_insert = [
        table
        for table, key in (
            (GREEKS_TABLE, "greeks_insert"),
            (UNDERLYING_TABLE, "underlying_insert"),
            (EVENTS_TABLE, "events_insert"),
        )
        if not privileges[key]
    ]
    if no_insert:
        return CheckResult(
            "schema",
            "FAIL",
            f"user {privileges['user']} may not INSERT into {', '.join(no_insert)}",
            data,
        )
    if missing:
        absent = " and ".join(missing)
        if privileges["schema"] is None:
            return CheckResult(
                "schema", "FAIL", f"{absent} absent and no schema in search_path to create", data
            )
        if not privileges["create"]:
            return CheckResult(
                "schema",
                "FAIL",
                f"{absent} absent and user {privileges['user']} may not create tables "
                f"in schema {privileges['schema']}",
                data,
            )
        return CheckResult(
            "schema",
            "WARN",
            f"{absent} absent from schema {privileges['schema']}: the bridge creates them "
            "at start (or run `ibkr-bridge schema --apply`)",
            data,
        )
    return CheckResult(
        "schema",
        "OK",
        f"{GREEKS_TABLE}, {UNDERLYING_TABLE} and {EVENTS_TABLE} present in schema "
        f"{privileges['schema']}, every column, type and unique key in place",
        data,
    )


# --- gateway: SOCKET -------------------------------------------------------------------


class HandshakeError(Exception):
    """The peer answered, but not like a TWS API server."""


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


# --- buffer ----------------------------------------------------------------------------


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def check_buffer(path: Path, max_bytes: int) -> CheckResult:
    try:
        found = inspect_buffer(path)
    except OSError as exc:
        return CheckResult("buffer", "FAIL", f"{path}: {_describe(exc)}", {"path": str(path)})
    data = found.to_json()
    s = found.stats
    if found.error:
        return CheckResult("buffer", "FAIL", f"{s.path}: {found.error}", data)
    lines: list[str] = []
    status: Status = "OK"
    if not found.exists:
        parent = _existing_parent(s.path)
        if not os.access(parent, os.W_OK | os.X_OK):
            return CheckResult(
                "buffer", "FAIL", f"{s.path}: cannot be created ({parent} is not writable)", data
            )
        lines.append(f"{s.path}: no buffer file (nothing pending)")
    elif s.records_pending:
        status = "WARN"
        lines.append(
            f"{s.path}: {s.records_pending} records pending ({_size(s.pending_bytes)}), "
            f"oldest {s.oldest.isoformat() if s.oldest else '?'}, "
            f"newest {s.newest.isoformat() if s.newest else '?'}"
        )
    else:
        lines.append(f"{s.path}: nothing pending ({_size(s.file_bytes)} file)")
    if found.locked_by is not None:
        lines.append(f"in use by a running bridge (pid {found.locked_by})")
    elif s.records_pending:
        lines.append("drained when the bridge starts, or now with `ibkr-bridge buffer drain`")
    if s.file_bytes >= _NEAR_FULL * max_bytes:
        status = "WARN"
        lines.append(f"{_size(s.file_bytes)} of its {_size(max_bytes)} cap used")
    if s.quarantined_lines:
        status = "WARN"
        lines.append(f"{s.quarantined_lines} unreadable lines kept in {found.quarantine_path}")
    if found.notes:
        status = "WARN"
        lines.extend(found.notes)
    rejected = RejectedFile(path).summary()
    data["rejected"] = rejected.to_json()
    if rejected.records or rejected.error:
        status = "WARN"
        lines.append(
            f"{rejected.records} records refused by PostgreSQL kept in {rejected.path}"
            if not rejected.error
            else f"{rejected.path}: {rejected.error}"
        )
        if rejected.records:
            lines.append("see them with `ibkr-bridge buffer replay-rejected`, send with --apply")
    return CheckResult("buffer", status, "\n".join(lines), data)


def _rejected_rows(rejected: RejectedSummary) -> list[tuple[str, str]]:
    rows = [("rejected", f"{rejected.records} records ({rejected.path})")]
    if rejected.error:
        rows.append(("rejected error", rejected.error))
    elif rejected.records:
        when = rejected.oldest_at.isoformat() if rejected.oldest_at else "time not recorded"
        reason = redact_secrets(reason_of(rejected.oldest_error))
        rows.append(("oldest reject", f"{when}: {reason}"))
        rows.append(("replay", "`ibkr-bridge buffer replay-rejected` (dry run, then --apply)"))
    return rows


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


# --- all together ----------------------------------------------------------------------


async def run_checks(environ: Mapping[str, str], env_file: str | None) -> DoctorReport:
    """Every check; those that need the settings are SKIPped when they are invalid."""
    config, settings = check_configuration(environ, env_file)
    if settings is None:
        skipped = "configuration invalid"
        return DoctorReport(
            (
                config,
                *(CheckResult(n, "SKIP", skipped) for n in ("database", "schema", "gateway")),
                CheckResult("buffer", "SKIP", skipped),
            )
        )
    gateway = (
        check_socket_gateway(settings.socket_host, settings.socket_port, settings.connect_timeout)
        if settings.api_mode is ApiMode.SOCKET
        else check_portal_gateway(settings)
    )
    (database, schema), gateway_result, buffer = await asyncio.gather(
        check_database(
            settings.database,
            connect_timeout=settings.db_connect_timeout,
            command_timeout=settings.db_command_timeout,
        ),
        gateway,
        asyncio.to_thread(check_buffer, settings.buffer_path, settings.buffer_max_bytes),
    )
    return DoctorReport((config, database, schema, gateway_result, buffer))


def render_table(report: DoctorReport) -> str:
    """A plain-text table: check, status, detail (continuation lines indented)."""
    width = max(len("CHECK"), *(len(c.name) for c in report.checks))
    indent = " " * (width + 2 + 6 + 2)
    lines = [f"{'CHECK':<{width}}  {'STATUS':<6}  DETAIL"]
    for check in report.checks:
        detail = check.detail.splitlines() or [""]
        lines.append(f"{check.name:<{width}}  {check.status:<6}  {detail[0]}")
        lines.extend(indent + more for more in detail[1:])
    counts = {s: sum(c.status == s for c in report.checks) for s in ("OK", "WARN", "FAIL")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines += ["", f"{summary}; exit code {report.exit_code}"]
    return "\n".join(lines)


def render_buffer_status(found: BufferReport, rejected: RejectedSummary | None = None) -> str:
    """``ibkr-bridge buffer status`` as text."""
    s = found.stats
    when = {
        "oldest": s.oldest.isoformat() if s.oldest else "-",
        "newest": s.newest.isoformat() if s.newest else "-",
    }
    state = (
        f"in use by a running bridge (pid {found.locked_by})"
        if found.locked_by is not None
        else "not in use"
    )
    rows = [
        ("buffer", str(s.path) + ("" if found.exists else " (no file: nothing pending)")),
        ("state", state),
        ("pending", f"{s.records_pending} records, {_size(s.pending_bytes)}"),
        ("oldest", when["oldest"]),
        ("newest", when["newest"]),
        ("file size", _size(s.file_bytes)),
        ("quarantined", f"{s.quarantined_lines} lines ({found.quarantine_path})"),
    ]
    if rejected is not None:
        rows += _rejected_rows(rejected)
    rows += [("note", note) for note in found.notes]
    if found.error:
        rows.append(("error", found.error))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
