"""The bridge's two tables, created if absent, checked if present.

The database is shared with the trader's dashboards and workers, so the bridge touches
``portfolio_greeks`` and ``api_logs`` and nothing else, and never drops or rewrites data:
a table that exists without a column the bridge needs is an error that names the missing
columns and shows the statements that would add them, for a human to run.

``bridge_key`` carries each record's idempotency key; its unique index turns a replayed
row (from the buffer, or a retried commit whose reply was lost) into a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

import asyncpg

from .errors import SchemaError

# Two processes bootstrapping at once would race on CREATE TABLE IF NOT EXISTS (it is not
# atomic against concurrent creators); a transaction-scoped advisory lock serialises them.
SCHEMA_LOCK_ID: Final = 0x1BB2_B41D

GREEKS_TABLE: Final = "portfolio_greeks"
EVENTS_TABLE: Final = "api_logs"

# column -> SQL type as it would be added
GREEKS_COLUMNS: Final[Mapping[str, str]] = {
    "timestamp": "timestamptz NOT NULL",
    "contract": "text NOT NULL DEFAULT 'PORTFOLIO'",
    "delta": "double precision",
    "gamma": "double precision",
    "vega": "double precision",
    "theta": "double precision",
    "underlying_price": "double precision",
    "dollar_delta": "double precision",
    "account": "text",
    "api_mode": "text",
    "legs": "integer",
    "legs_missing": "integer",
    "bridge_key": "text",
}
EVENTS_COLUMNS: Final[Mapping[str, str]] = {
    "timestamp": "timestamptz NOT NULL",
    "api_mode": "text NOT NULL",
    "event": "text NOT NULL",
    "status": "text NOT NULL CHECK (status IN ('info', 'warning', 'error'))",
    "message": "text NOT NULL",
    "machine": "text",
    "source_state": "text",
    "dest_state": "text",
    "detail": "jsonb NOT NULL DEFAULT '{}'::jsonb",
    "bridge_key": "text",
}

DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {GREEKS_TABLE} (
    id               bigserial PRIMARY KEY,
    timestamp        timestamptz NOT NULL,
    contract         text NOT NULL DEFAULT 'PORTFOLIO',
    delta            double precision,
    gamma            double precision,
    vega             double precision,
    theta            double precision,
    underlying_price double precision,
    dollar_delta     double precision,
    account          text,
    api_mode         text,
    legs             integer,
    legs_missing     integer,
    bridge_key       text NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS {GREEKS_TABLE}_bridge_key_uq ON {GREEKS_TABLE} (bridge_key);
CREATE INDEX IF NOT EXISTS {GREEKS_TABLE}_timestamp_idx ON {GREEKS_TABLE} (timestamp);

CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    id           bigserial PRIMARY KEY,
    timestamp    timestamptz NOT NULL,
    api_mode     text NOT NULL,
    event        text NOT NULL,
    status       text NOT NULL CHECK (status IN ('info', 'warning', 'error')),
    message      text NOT NULL,
    machine      text,
    source_state text,
    dest_state   text,
    detail       jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    bridge_key   text NOT NULL,
    inserted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS {EVENTS_TABLE}_bridge_key_uq ON {EVENTS_TABLE} (bridge_key);
CREATE INDEX IF NOT EXISTS {EVENTS_TABLE}_timestamp_idx ON {EVENTS_TABLE} (timestamp);
""".strip()

_REQUIRED: Final[Mapping[str, Mapping[str, str]]] = {
    GREEKS_TABLE: GREEKS_COLUMNS,
    EVENTS_TABLE: EVENTS_COLUMNS,
}

Executor: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


async def ensure_bridge_schema(db: Executor) -> None:
    """Create both tables if absent; check them if present. Safe to call concurrently.

    Raises :class:`~ibkr_bridge.errors.SchemaError` naming every missing column (and a
    missing unique key on ``bridge_key``) without changing anything.
    """
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            await _ensure(conn)
    else:
        await _ensure(db)


async def _ensure(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        problems = await check_bridge_schema(conn, missing_tables_ok=True)
        if problems:
            raise SchemaError(_describe(problems))
        await conn.execute(DDL)


async def check_bridge_schema(
    conn: asyncpg.Connection, *, missing_tables_ok: bool = False
) -> dict[str, list[str]]:
    """What is wrong with the bridge tables: ``{table: [problem, ...]}`` (empty when fine)."""
    rows = await conn.fetch(
        """
        SELECT c.relname AS table, a.attname AS column
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.oid IN (to_regclass($1), to_regclass($2))
        """,
        GREEKS_TABLE,
        EVENTS_TABLE,
    )
    present: dict[str, set[str]] = {}
    for row in rows:
        present.setdefault(row["table"], set()).add(row["column"])
    problems: dict[str, list[str]] = {}
    for table, columns in _REQUIRED.items():
        if table not in present:
            if not missing_tables_ok:
                problems[table] = ["table is missing"]
            continue
        missing = [name for name in columns if name not in present[table]]
        if missing:
            problems[table] = [f"missing column {name}" for name in missing]
        elif not await _has_unique_key(conn, table):
            problems.setdefault(table, []).append("no unique index on bridge_key")
    return problems


async def _has_unique_key(conn: asyncpg.Connection, table: str) -> bool:
    found = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1
              AND a.attname = 'bridge_key' AND i.indpred IS NULL
        )
        """,
        table,
    )
    return bool(found)


def _describe(problems: Mapping[str, list[str]]) -> str:
    lines = ["the bridge's tables exist but cannot be written safely (nothing was changed):"]
    fixes: list[str] = []
    for table, items in problems.items():
        lines.extend(f"  {table}: {item}" for item in items)
        for item in items:
            if item.startswith("missing column "):
                name = item.removeprefix("missing column ")
                ddl = _REQUIRED[table][name].replace(" NOT NULL", "")
                fixes.append(f"ALTER TABLE {table} ADD COLUMN {name} {ddl};")
            elif item.startswith("no unique index"):
                fixes.append(f"CREATE UNIQUE INDEX {table}_bridge_key_uq ON {table} (bridge_key);")
    if fixes:
        lines.append("review and run, for example:")
        lines.extend(f"  {fix}" for fix in fixes)
    return "\n".join(lines)
