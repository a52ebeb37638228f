"""The ``position_greeks`` table: its DDL, its daily partitions, and its COPY path.

One row per leg per tick (BRIDGE_POSITION_ROWS=true): a 1,000-leg book every 5 s is
200 rows/s and ~17 million rows a day, so the table is range-partitioned by day on
``timestamp`` (PostgreSQL's native partitioning) and rows go in with COPY, in the same
transaction as the tick's PORTFOLIO row. Retention (BRIDGE_RETENTION_DAYS) drops whole
partitions; the rule is :func:`ibkr_bridge.core.partitions.plan`.

Idempotency as for the other tables: a unique key on ``(bridge_key, timestamp)`` (a
partitioned table's unique key must hold the partition column; a record's key and its
timestamp travel together, so this is the same guarantee). A COPY that meets a replayed key
fails as a whole; :func:`copy_positions` then goes through a temporary table and
``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg
from attrs import frozen

from ibkr_bridge.core.partitions import (
    DEFAULT_AHEAD,
    PartitionPlan,
    day_bounds,
    partition_day,
    partition_name,
    plan,
)
from ibkr_bridge.core.records import PositionRow, utcnow
from ibkr_bridge.storage.dberrors import is_replay

POSITION_TABLE: Final = "position_greeks"


@frozen
class PositionTables:
    """What the store keeps of ``position_greeks`` (BRIDGE_POSITION_ROWS=true): the table,
    partitions ``ahead`` days in advance, and with ``retention_days`` no older ones."""

    ahead: int = DEFAULT_AHEAD
    retention_days: int | None = None
    now: Callable[[], datetime] = utcnow  # the bridge passes its clock's


# Partition DDL from two bridges at once would race; the same idea as the schema's lock.
PARTITION_LOCK_ID: Final = 0x1BB2_B41E

COLUMNS: Final = (
    ("timestamp", "timestamptz NOT NULL"),
    ("account", "text NOT NULL DEFAULT ''"),
    ("api_mode", "text"),
    ("conid", "bigint NOT NULL"),
    ("symbol", "text NOT NULL"),
    ("underlying", "text NOT NULL"),
    ("sec_type", "text NOT NULL"),
    ("option_right", "text CHECK (option_right IN ('C', 'P'))"),
    ("strike", "double precision"),
    ("expiry", "text"),
    ("multiplier", "double precision NOT NULL"),
    ("position", "double precision NOT NULL"),
    ("delta", "double precision"),
    ("gamma", "double precision"),
    ("vega", "double precision"),
    ("theta", "double precision"),
    ("unit_delta", "double precision"),
    ("unit_gamma", "double precision"),
    ("unit_vega", "double precision"),
    ("unit_theta", "double precision"),
    ("implied_vol", "double precision"),
    ("underlying_price", "double precision"),
    ("greeks_source", "text CHECK (greeks_source IN ('ib', 'model'))"),
    ("bridge_key", "text NOT NULL"),
)
COPY_COLUMNS: Final = tuple(name for name, _ in COLUMNS)

CREATE_SQL: Final = f"""
CREATE TABLE IF NOT EXISTS {POSITION_TABLE} (
    {", ".join(f'"{name}" {ddl}' for name, ddl in COLUMNS)},
    CONSTRAINT {POSITION_TABLE}_bridge_key_uq UNIQUE (bridge_key, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE INDEX IF NOT EXISTS {POSITION_TABLE}_time_idx ON {POSITION_TABLE} (timestamp DESC);
CREATE INDEX IF NOT EXISTS {POSITION_TABLE}_underlying_idx
    ON {POSITION_TABLE} (underlying, timestamp DESC);
"""

_TEMP: Final = "_bridge_positions_in"
_REPLAY_SQL: Final = f"""
INSERT INTO {POSITION_TABLE} ({", ".join(f'"{c}"' for c in COPY_COLUMNS)})
SELECT {", ".join(f'"{c}"' for c in COPY_COLUMNS)} FROM {_TEMP}
ON CONFLICT (bridge_key, timestamp) DO NOTHING
"""


def position_tuple(row: PositionRow) -> tuple[Any, ...]:
    """The row in COPY_COLUMNS order."""
    return (
        row.timestamp, row.account, row.api_mode, row.conid, row.symbol, row.underlying,
        row.sec_type, row.right, row.strike, row.expiry, row.multiplier, row.position,
        row.delta, row.gamma, row.vega, row.theta,
        row.unit_delta, row.unit_gamma, row.unit_vega, row.unit_theta,
        row.implied_vol, row.underlying_price, row.greeks_source, row.key,
    )  # fmt: skip


async def create_position_table(conn: asyncpg.Connection, now: datetime, ahead: int) -> None:
    """Create ``position_greeks`` (partitioned) if absent, with partitions up to ``ahead``."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
        await conn.execute(CREATE_SQL)
    await maintain_partitions(conn, now, ahead=ahead)


async def existing_partitions(conn: asyncpg.Connection) -> list[str]:
    """Names of ``position_greeks``'s partitions in the current schema, oldest first."""
    rows = await conn.fetch(
        """
        SELECT child.relname FROM pg_inherits
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE pg_inherits.inhparent = to_regclass($1)
        ORDER BY child.relname
        """,
        POSITION_TABLE,
    )
    return [r["relname"] for r in rows]


async def maintain_partitions(
    conn: asyncpg.Connection, now: datetime, *, ahead: int, retention_days: int | None = None
) -> PartitionPlan:
    """Create the partitions :func:`plan` asks for and drop those past retention.

    Returns what was done. Only partitions named by :func:`partition_name` are considered:
    a partition a human attached under another name is never dropped.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
        names = await existing_partitions(conn)
        days = [d for n in names if (d := partition_day(POSITION_TABLE, n)) is not None]
        todo = plan(now, days, ahead=ahead, retention_days=retention_days)
        for day in todo.create:
            start, end = day_bounds(day)
            # DDL takes no parameters; the bounds are our own ISO timestamps.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(POSITION_TABLE, day)} "
                f"PARTITION OF {POSITION_TABLE} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        for day in todo.drop:
            await conn.execute(f"DROP TABLE IF EXISTS {partition_name(POSITION_TABLE, day)}")
    return todo


async def copy_positions(conn: asyncpg.Connection, rows: Sequence[PositionRow]) -> None:
    """COPY the rows inside the caller's transaction; a replayed key makes the batch a no-op
    for the rows already there (and writes the rest)."""
    await copy_position_tuples(conn, [position_tuple(r) for r in rows])


async def copy_position_tuples(
    conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]
) -> None:
    """:func:`copy_positions` for rows already in COPY_COLUMNS order."""
    if not records:
        return
    try:
        async with conn.transaction():  # a savepoint: the failed COPY is undone alone
            await conn.copy_records_to_table(POSITION_TABLE, records=records, columns=COPY_COLUMNS)
        return
    except asyncpg.UniqueViolationError as exc:
        if not is_replay(exc):
            raise  # not the idempotency key: the record's own data

    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP} "
        f"(LIKE {POSITION_TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(_TEMP, records=records, columns=COPY_COLUMNS)
    await conn.execute(_REPLAY_SQL)
    await conn.execute(f"TRUNCATE {_TEMP}")
