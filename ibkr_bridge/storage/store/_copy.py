"""The COPY paths: one batch in one transaction, optimistic COPY first, replays as no-ops.

Optimistically the batch is COPYed straight into the tables: a batch for one table in
one COPY, which is a transaction of its own, several in one transaction. If any key is
already there (a replay) that COPY fails as a whole and its transaction leaves nothing;
then the batch goes, in a new transaction, through per-connection temporary tables and
one ``INSERT ... SELECT ... ORDER BY seq ON CONFLICT (bridge_key) DO NOTHING`` per table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Final

import asyncpg

from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.storage.dberrors import is_replay
from ibkr_bridge.storage.positions import COPY_COLUMNS as POSITION_COPY_COLUMNS
from ibkr_bridge.storage.positions import POSITION_TABLE, copy_position_tuples
from ibkr_bridge.storage.schema import EVENTS_TABLE, GREEKS_TABLE, UNDERLYING_TABLE
from ibkr_bridge.storage.store._rows import (
    EVENTS_COPY_COLUMNS,
    GREEKS_COPY_COLUMNS,
    EventTuple,
    GreeksTuple,
    PositionTuple,
    by_table,
)

TEMP_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS _bridge_greeks_in (
    seq integer, timestamp timestamptz, contract text, delta double precision,
    gamma double precision, vega double precision, theta double precision,
    underlying_price double precision, dollar_delta double precision, account text,
    api_mode text, legs integer, legs_missing integer, legs_model integer,
    bridge_key text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _bridge_events_in (
    seq integer, timestamp timestamptz, api_mode text, event text, status text,
    message text, machine text, source_state text, dest_state text, detail jsonb,
    bridge_key text
) ON COMMIT DELETE ROWS;
""".strip()

_GREEKS_COLUMNS: Final = ", ".join(GREEKS_COPY_COLUMNS[1:])
_EVENTS_COLUMNS: Final = ", ".join(EVENTS_COPY_COLUMNS[1:])

# A Greeks record's table follows from its contract alone, so a replayed record (a buffer
# line written by a version that put every row in portfolio_greeks included) always lands
# in the same table as its first copy and its key makes the replay a no-op there.
_GREEKS_INSERT: Final = f"""
INSERT INTO {GREEKS_TABLE} ({_GREEKS_COLUMNS})
SELECT {_GREEKS_COLUMNS} FROM _bridge_greeks_in
WHERE contract = '{PORTFOLIO}' ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING;
INSERT INTO {UNDERLYING_TABLE} ({_GREEKS_COLUMNS})
SELECT {_GREEKS_COLUMNS} FROM _bridge_greeks_in
WHERE contract IS DISTINCT FROM '{PORTFOLIO}' ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING
"""
_EVENTS_INSERT: Final = f"""
INSERT INTO {EVENTS_TABLE} ({_EVENTS_COLUMNS})
SELECT {_EVENTS_COLUMNS} FROM _bridge_events_in ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING
"""


class _RollBack(Exception):
    """Leaves a trial transaction (:func:`trial_copy`) without committing it."""


async def _copy_direct(
    conn: asyncpg.Connection,
    greeks: Mapping[str, Sequence[GreeksTuple]],
    events: Sequence[EventTuple],
) -> None:
    """COPY into the tables themselves; ``greeks`` is ``{table: rows without seq}``."""
    for table, rows in greeks.items():
        await conn.copy_records_to_table(table, records=rows, columns=GREEKS_COPY_COLUMNS[1:])
    if events:
        await conn.copy_records_to_table(
            EVENTS_TABLE, records=[e[1:] for e in events], columns=EVENTS_COPY_COLUMNS[1:]
        )


async def copy_batch(
    conn: asyncpg.Connection,
    greeks: Sequence[GreeksTuple],
    events: Sequence[EventTuple],
    positions: Sequence[PositionTuple] = (),
) -> None:
    """Write one batch in one transaction, in order; replayed keys are skipped.

    A tick's per-position rows go in the same transaction as its PORTFOLIO row, so a reader
    never sees the net without its legs, nor the legs without the net.
    """
    tables = by_table(greeks)
    legs = [p[1:] for p in positions]  # in seq order already, as every tuple list is
    # Optimistic first: COPY straight into the tables, as fast as COPY gets. A replayed
    # key makes it fail as a whole and its transaction leaves nothing; then the
    # temp-table path below inserts what is new and skips replays, in a transaction anew.
    try:
        if not legs and len(tables) + bool(events) == 1:
            # One COPY is a transaction of its own: no BEGIN and COMMIT round trips,
            # which the drain (almost always one table per batch) would wait for.
            await _copy_direct(conn, tables, events)
        else:
            async with conn.transaction():
                await _copy_direct(conn, tables, events)
                if legs:
                    await conn.copy_records_to_table(
                        POSITION_TABLE, records=legs, columns=POSITION_COPY_COLUMNS
                    )
        return
    except asyncpg.UniqueViolationError as exc:
        if not is_replay(exc):
            raise  # another unique constraint: the record's own data
    async with conn.transaction():
        if greeks:
            await conn.copy_records_to_table(
                "_bridge_greeks_in", records=greeks, columns=GREEKS_COPY_COLUMNS
            )
            await conn.execute(_GREEKS_INSERT)
        if events:
            await conn.copy_records_to_table(
                "_bridge_events_in", records=events, columns=EVENTS_COPY_COLUMNS
            )
            await conn.execute(_EVENTS_INSERT)
        if legs:
            await copy_position_tuples(conn, legs)


async def trial_copy(
    conn: asyncpg.Connection,
    greeks: Sequence[GreeksTuple],
    events: Sequence[EventTuple],
    positions: Sequence[PositionTuple] = (),
) -> None:
    """COPY a batch in a transaction that is always rolled back; refusals raise as usual."""
    # Every Greeks row is tried in portfolio_greeks, as the probe always did.
    tables = {GREEKS_TABLE: [g[1:] for g in greeks]} if greeks else {}
    with contextlib.suppress(_RollBack):
        async with conn.transaction():
            await _copy_direct(conn, tables, events)
            if positions:
                await copy_position_tuples(conn, [p[1:] for p in positions])
            raise _RollBack
