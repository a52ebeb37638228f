"""``ibkr-bridge schema``: check the bridge's tables; ``--apply`` creates and upgrades them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from ibkr_bridge.config import Settings
from ibkr_bridge.core.errors import SchemaError
from ibkr_bridge.ops._common import PROG, _describe, _settings_or_exit
from ibkr_bridge.ops.exitcodes import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_SCHEMA,
)

log = logging.getLogger("ibkr_bridge")


# --- schema ----------------------------------------------------------------------------


async def _schema(settings: Settings, *, apply: bool) -> int:
    import asyncpg

    from ibkr_bridge.storage.schema import (
        TABLES,
        apply_bridge_schema,
        legacy_underlying_rows,
        plan_bridge_schema,
        table_ddl,
    )

    where = settings.database.redacted()
    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(
                **settings.database.connect_kwargs(),
                timeout=settings.db_connect_timeout,
                command_timeout=settings.db_command_timeout,
            ),
            settings.db_connect_timeout + 1.0,
        )
    except Exception as exc:  # any reason the connection failed is worth showing as is
        print(f"{PROG}: cannot connect to {where}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        plan = await (apply_bridge_schema(conn) if apply else plan_bridge_schema(conn))
        legacy = 0
        with contextlib.suppress(Exception):  # a note only: never fail what already ran
            legacy = await legacy_underlying_rows(conn)
    except SchemaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except Exception as exc:  # e.g. no CREATE privilege: the server's words say it best
        print(f"{PROG}: {where}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=settings.db_command_timeout)
    upgraded = sorted({f.table for f in plan.upgrade})
    kept = sorted(set(TABLES) - set(plan.create) - set(upgraded))
    if apply:
        print(f"{where}: the bridge's tables are in place")
        if plan.create:
            print(f"created: {', '.join(sorted(plan.create))}")
        if upgraded:
            print(f"upgraded, every row kept: {', '.join(upgraded)}")
            for finding in plan.upgrade:
                print("\n".join(f"  {stmt}" for stmt in finding.fix))
        if kept:
            print(f"already present, unchanged: {', '.join(kept)}")
    elif plan.empty:
        print(f"{where}: the bridge's tables are in place; `schema --apply` has nothing to do")
    else:
        print(f"-- {where}: what `ibkr-bridge schema --apply` would do (nothing changed yet)")
        if plan.blocked:
            print("-- first, by hand as the tables' owner (--apply refuses until these are done):")
            for finding in plan.blocked:
                print(f"-- {finding.table}: {finding.problem}")
                print("\n".join(finding.fix))
        for finding in plan.upgrade:
            print(f"-- {finding.table}: {finding.problem}")
            print("\n".join(finding.fix))
        for table in plan.create:
            print(f"-- create {table}")
            print(table_ddl(table))
    if legacy:
        print(
            f"note: {legacy} per-underlying rows are in portfolio_greeks (written by an earlier "
            "version); new ones go to underlying_greeks. docs/operations.md shows how to move "
            "them (the bridge does not)."
        )
    return EXIT_SCHEMA if plan.blocked else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from ibkr_bridge.storage.schema import DDL

    if args.ddl:
        print(DDL)
        return EXIT_OK
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    return asyncio.run(_schema(settings, apply=args.apply))
