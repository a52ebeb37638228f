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
from collections.abc import Mapping

from ibkr_bridge.config import (
    ApiMode,
)
from ibkr_bridge.core.errors import HandshakeError
from ibkr_bridge.ops._check_buffer import _rejected_rows, _size, check_buffer
from ibkr_bridge.ops._check_config_db import check_configuration, check_database
from ibkr_bridge.ops._check_gateway import (
    PortalAuth,
    TwsHandshake,
    check_portal_gateway,
    check_socket_gateway,
    portal_auth_status,
    tws_handshake,
)
from ibkr_bridge.ops._report import CheckResult, DoctorReport, Status
from ibkr_bridge.storage.buffer import BufferReport, inspect_buffer
from ibkr_bridge.storage.drain import RejectedSummary

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
