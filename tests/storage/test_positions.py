"""position_greeks on a real PostgreSQL: daily partitions made ahead and dropped past the
horizon over 40 days of a fake clock, COPY with replays that write nothing twice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from ibkr_bridge.core.greeks import Leg, position_rows
from ibkr_bridge.core.partitions import partition_name
from ibkr_bridge.storage.positions import (
    POSITION_TABLE,
    copy_positions,
    create_position_table,
    existing_partitions,
    maintain_partitions,
)
from ibkr_bridge.testing import TestDatabase

START = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
BOOK = [
    Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100, account="U1"),
    Leg(conid=2, symbol="SPY", sec_type="OPT", quantity=-2, multiplier=100.0, delta=0.5,
        gamma=0.01, vega=0.2, theta=-0.1, strike=500.0, right="C", expiry="20270319",
        implied_vol=0.2, underlying_price=501.0, account="U2"),
]  # fmt: skip


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {POSITION_TABLE}"))


async def test_forty_days_of_partitions_and_rows(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await create_position_table(conn, START, ahead=2)
        assert await existing_partitions(conn) == [
            partition_name(POSITION_TABLE, (START + timedelta(days=d)).date()) for d in range(3)
        ]
        dropped: list[date] = []
        for day in range(40):
            now = START + timedelta(days=day)
            done = await maintain_partitions(conn, now, ahead=2, retention_days=30)
            dropped.extend(done.drop)
            async with conn.transaction():
                await copy_positions(conn, position_rows(BOOK, timestamp=now, api_mode="SOCKET"))
        names = await existing_partitions(conn)
        assert len(names) == 31 + 2  # today, the 30 days before, two ahead
        assert dropped == [(START + timedelta(days=d)).date() for d in range(9)]
        # Whole partitions went: every row left is inside the horizon, none was deleted else.
        assert await _count(conn) == 2 * 31
        oldest = await conn.fetchval(f"SELECT min(timestamp) FROM {POSITION_TABLE}")
        assert oldest == START + timedelta(days=9)
    finally:
        await conn.close()


async def test_a_replayed_batch_writes_nothing_twice(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await create_position_table(conn, START, ahead=1)
        first = position_rows(BOOK, timestamp=START, api_mode="SOCKET")
        later = position_rows(BOOK, timestamp=START + timedelta(seconds=5), api_mode="SOCKET")
        async with conn.transaction():
            await copy_positions(conn, first)
        async with conn.transaction():  # a replay of the first batch plus new rows
            await copy_positions(conn, [*first, *later])
        async with conn.transaction():
            await copy_positions(conn, later)
        assert await _count(conn) == 4
        row = await conn.fetchrow(
            f"SELECT * FROM {POSITION_TABLE} WHERE conid = 2 ORDER BY timestamp LIMIT 1"
        )
        assert row is not None
        assert (row["account"], row["option_right"], row["greeks_source"]) == ("U2", "C", "ib")
        assert row["delta"] == pytest.approx(-100.0)
        # The legs sum to the net of the snapshot, per account and in all.
        total = await conn.fetchval(
            f"SELECT sum(delta) FROM {POSITION_TABLE} WHERE timestamp = $1", START
        )
        assert total == pytest.approx(100.0 - 100.0)
    finally:
        await conn.close()


async def test_without_a_partition_postgres_refuses_the_row(db: TestDatabase) -> None:
    """Why partitions are made ahead: a row past them is refused (SQLSTATE 23514)."""
    conn = await db.connect()
    try:
        await create_position_table(conn, START, ahead=1)
        rows = position_rows(BOOK, timestamp=START + timedelta(days=5), api_mode="SOCKET")
        with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
            async with conn.transaction():
                await copy_positions(conn, rows)
    finally:
        await conn.close()
