"""The doctor's configuration and database checks: settings, reachability, schema, privileges."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from ibkr_bridge.config import (
    ConfigError,
    DatabaseConfig,
    Settings,
    load_settings,
)
from ibkr_bridge.ops._report import CheckResult, _describe
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG, EXIT_SCHEMA
from ibkr_bridge.storage.schema import (
    EVENTS_TABLE,
    GREEKS_TABLE,
    UNDERLYING_TABLE,
    check_bridge_schema,
)

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
