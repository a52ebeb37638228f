"""The live path's write: one tick's records in one statement, one round trip, any tables.

A tick spans several tables (its PORTFOLIO row, the per-underlying rows and, with
BRIDGE_POSITION_ROWS, one ``position_greeks`` row per leg). The COPY path pays a BEGIN, a
COPY per table and a COMMIT for that; here the whole batch is one ``INSERT ... SELECT
... FROM unnest(...) ON CONFLICT DO NOTHING`` per table, chained as data-modifying CTEs
into a single statement sent on its own (autocommit). One statement is one transaction:
a failure anywhere leaves nothing, so the net row never lands without its legs. A
replayed key is skipped by its table's ``ON CONFLICT``; each table's rows go in batch
order (``WITH ORDINALITY ... ORDER BY``). The statement's text depends only on which
tables the batch touches, so asyncpg's per-connection statement cache prepares each
shape once.

The columns, their order and their types come from the declarations
(:data:`~ibkr_bridge.storage.schema.REQUIRED`, :data:`ibkr_bridge.storage.positions.COLUMNS`);
the values from the COPY tuples, looked up by column name, so a declared column is
written as soon as the tuples carry it, and one they lack fails at import.

Errors are those of the COPY path: PostgreSQL's SQLSTATE for the same bad value or the
same missing table, asyncpg's ``DataError`` for a value it cannot encode.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg
from attrs import frozen

from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.storage.positions import COLUMNS as POSITION_COLUMNS
from ibkr_bridge.storage.positions import COPY_COLUMNS as POSITION_COPY_COLUMNS
from ibkr_bridge.storage.positions import POSITION_TABLE
from ibkr_bridge.storage.schema import EVENTS_TABLE, GREEKS_TABLE, REQUIRED, UNDERLYING_TABLE
from ibkr_bridge.storage.store._rows import (
    EVENTS_COPY_COLUMNS,
    GREEKS_COPY_COLUMNS,
    EventTuple,
    GreeksTuple,
    PositionTuple,
)

#: Above this many position rows a batch goes the COPY way (Store.write_live). Measured
#: with 1,000 rows: COPY about 22 ms against 38 ms for ``INSERT ... SELECT FROM unnest``
#: (~16 us a row more), while the statement saves BEGIN, COMMIT and a COPY per table
#: (~1 ms): the two meet near 60 rows.
STATEMENT_MAX_POSITIONS: Final = 50

# Words after a type in positions.COLUMNS' DDL ("text NOT NULL DEFAULT ''").
_CONSTRAINT_WORDS: Final = frozenset({"NOT", "NULL", "DEFAULT", "CHECK", "PRIMARY", "UNIQUE"})


@frozen
class TablePlan:
    """One table's part of the statement: its columns, their types, where the values are."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    indexes: tuple[int, ...]  # of each column's value in the seq-first tuple
    conflict: str  # the idempotency key's columns


def _plan(
    table: str, declared: Mapping[str, str], tuple_columns: Sequence[str], conflict: str
) -> TablePlan:
    missing = [name for name in declared if name not in tuple_columns]
    if missing:
        # A declared column the records never carry would be written NULL or default.
        raise ValueError(f"{table}: declared columns {missing} are not in the COPY tuples")
    return TablePlan(
        table=table,
        columns=tuple(declared),
        types=tuple(declared.values()),
        indexes=tuple(tuple_columns.index(name) for name in declared),
        conflict=conflict,
    )


def _position_type(ddl: str) -> str:
    words = ddl.split()
    end = next((i for i, w in enumerate(words) if w.upper() in _CONSTRAINT_WORDS), len(words))
    return " ".join(words[:end])


def _types(table: str) -> dict[str, str]:
    return {name: column.type for name, column in REQUIRED[table].items()}


# In the statement's order; a batch uses the tables it has rows for.
PLANS: Final[Mapping[str, TablePlan]] = {
    GREEKS_TABLE: _plan(GREEKS_TABLE, _types(GREEKS_TABLE), GREEKS_COPY_COLUMNS, "bridge_key"),
    UNDERLYING_TABLE: _plan(
        UNDERLYING_TABLE, _types(UNDERLYING_TABLE), GREEKS_COPY_COLUMNS, "bridge_key"
    ),
    EVENTS_TABLE: _plan(EVENTS_TABLE, _types(EVENTS_TABLE), EVENTS_COPY_COLUMNS, "bridge_key"),
    POSITION_TABLE: _plan(
        POSITION_TABLE,
        {name: _position_type(ddl) for name, ddl in POSITION_COLUMNS},
        ("seq", *POSITION_COPY_COLUMNS),
        "bridge_key, timestamp",
    ),
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _insert(plan: TablePlan, first: int) -> str:
    """``plan``'s INSERT, its arrays bound from parameter ``$first`` on."""
    names = [_quote(c) for c in plan.columns]
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(plan.types))
    return (
        f"INSERT INTO {_quote(plan.table)} ({', '.join(names)}) "
        f"SELECT {', '.join(names)} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS _in({', '.join(names)}, _ord) ORDER BY _ord "
        f"ON CONFLICT ({plan.conflict}) DO NOTHING"
    )


@functools.cache
def statement(tables: tuple[str, ...]) -> str:
    """One statement inserting into ``tables``: all but the last as data-modifying CTEs."""
    parts: list[str] = []
    first = 1
    for table in tables:
        plan = PLANS[table]
        parts.append(_insert(plan, first))
        first += len(plan.columns)
    *ctes, last = parts
    if not ctes:
        return last
    # A statement's CTEs all run, each once, in the statement's one snapshot.
    body = ",\n".join(f"_w{i} AS ({sql})" for i, sql in enumerate(ctes))
    return f"WITH {body}\n{last}"


def _arrays(plan: TablePlan, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    columns = list(zip(*rows, strict=True))
    return [columns[i] for i in plan.indexes]


def batch_statement(
    greeks: Sequence[GreeksTuple],
    events: Sequence[EventTuple],
    positions: Sequence[PositionTuple] = (),
) -> tuple[str, list[tuple[Any, ...]]] | None:
    """The statement and its array arguments for one batch (None when empty)."""
    portfolio = [g for g in greeks if g[2] == PORTFOLIO]
    underlying = [g for g in greeks if g[2] != PORTFOLIO] if len(portfolio) < len(greeks) else []
    batches = {
        GREEKS_TABLE: portfolio,
        UNDERLYING_TABLE: underlying,
        EVENTS_TABLE: events,
        POSITION_TABLE: positions,
    }
    present = tuple(table for table, rows in batches.items() if rows)
    if not present:
        return None
    args: list[tuple[Any, ...]] = []
    for table in present:
        args += _arrays(PLANS[table], batches[table])
    return statement(present), args


async def write_statement(
    conn: asyncpg.Connection,
    greeks: Sequence[GreeksTuple],
    events: Sequence[EventTuple],
    positions: Sequence[PositionTuple] = (),
) -> None:
    """Write one batch as one autocommit statement; replayed keys are skipped."""
    built = batch_statement(greeks, events, positions)
    if built is not None:
        sql, args = built
        await conn.execute(sql, *args)
