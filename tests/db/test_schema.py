from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ibkr_bridge.errors import SchemaError
from ibkr_bridge.schema import check_bridge_schema, ensure_bridge_schema
from ibkr_bridge.testing import TestDatabase


async def _tables(db: TestDatabase) -> set[str]:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", db.schema
    )
    return {r["table_name"] for r in rows}


async def test_creates_both_tables_then_is_a_noop(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        assert await _tables(db) == {"portfolio_greeks", "api_logs"}
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, delta, bridge_key) VALUES (now(), 1.5, 'k')"
        )
        await ensure_bridge_schema(conn)  # no-op: the row survives, nothing is recreated
        assert await conn.fetchval("SELECT delta FROM portfolio_greeks") == 1.5
        assert await check_bridge_schema(conn) == {}
    finally:
        await conn.close()


async def test_accepts_a_pool(db: TestDatabase) -> None:
    pool = await asyncpg.create_pool(db.dsn, min_size=1, max_size=2)
    try:
        await ensure_bridge_schema(pool)
    finally:
        await pool.close()
    assert await _tables(db) == {"portfolio_greeks", "api_logs"}


async def test_defaults_match_what_dashboards_read(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, bridge_key) VALUES (now(), 'a')"
        )
        assert await conn.fetchval("SELECT contract FROM portfolio_greeks") == "PORTFOLIO"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_logs (timestamp, api_mode, event, status, message, bridge_key)"
                " VALUES (now(), 'SOCKET', 'connect', 'fatal', 'x', 'b')"
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO portfolio_greeks (timestamp, bridge_key) VALUES (now(), 'a')"
            )
    finally:
        await conn.close()


async def test_concurrent_bootstrap_from_many_connections(db: TestDatabase) -> None:
    conns = [await db.connect() for _ in range(6)]
    try:
        await asyncio.gather(*(ensure_bridge_schema(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert await _tables(db) == {"portfolio_greeks", "api_logs"}


async def test_existing_table_missing_columns_is_named_and_untouched(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        # The user's older table: only the columns the dashboards read.
        await conn.execute(
            """CREATE TABLE portfolio_greeks (
                   timestamp timestamptz, contract text DEFAULT 'PORTFOLIO',
                   delta double precision, gamma double precision, vega double precision,
                   theta double precision, underlying_price double precision)"""
        )
        await conn.execute("INSERT INTO portfolio_greeks (timestamp, delta) VALUES (now(), 7)")
        with pytest.raises(SchemaError) as info:
            await ensure_bridge_schema(conn)
        text = str(info.value)
        for column in ("account", "bridge_key", "dollar_delta", "legs", "legs_missing"):
            assert f"missing column {column}" in text
        assert "ALTER TABLE portfolio_greeks ADD COLUMN bridge_key text;" in text
        # Nothing changed: user data and shape intact, api_logs not created either.
        assert await conn.fetchval("SELECT delta FROM portfolio_greeks") == 7
        assert await _tables(db) == {"portfolio_greeks"}
    finally:
        await conn.close()


async def test_missing_unique_key_is_refused(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute("DROP INDEX api_logs_bridge_key_uq")
        with pytest.raises(SchemaError, match="api_logs: no unique index on bridge_key"):
            await ensure_bridge_schema(conn)
    finally:
        await conn.close()
