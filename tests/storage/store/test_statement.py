"""The live path's one-statement write (store/_statement.py) on a real PostgreSQL.

One tick's records across portfolio_greeks, underlying_greeks, api_logs and position_greeks
in one autocommit statement: all or nothing, replays skipped, order kept, every declared
column written, and failures classified as the COPY path classifies them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.machines.breaker import BreakerState
from ibkr_bridge.core.records import ApiEvent, GreeksRow, PositionRow, Record, new_key
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.dberrors import is_missing_partition
from ibkr_bridge.storage.positions import COLUMNS as POSITION_COLUMNS
from ibkr_bridge.storage.positions import COPY_COLUMNS as POSITION_COPY_COLUMNS
from ibkr_bridge.storage.positions import POSITION_TABLE, PositionTables
from ibkr_bridge.storage.schema import EVENTS_TABLE, GREEKS_TABLE, REQUIRED, UNDERLYING_TABLE
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import (
    EVENTS_COPY_COLUMNS,
    GREEKS_COPY_COLUMNS,
    Store,
    split_records,
)
from ibkr_bridge.storage.store._statement import (
    PLANS,
    STATEMENT_MAX_POSITIONS,
    _plan,
    statement,
    write_statement,
)
from ibkr_bridge.testing import TestDatabase

NOW = datetime(2027, 3, 1, 15, 0, 0, 123456, tzinfo=UTC)
TABLES = (GREEKS_TABLE, UNDERLYING_TABLE, EVENTS_TABLE, POSITION_TABLE)


def net(i: int = 0, **kw: Any) -> GreeksRow:
    values: dict[str, Any] = dict(
        timestamp=NOW + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        delta=100.0 + i,
        gamma=0.25,
        vega=-3.5,
        theta=-12.0,
        underlying_price=501.5,
        dollar_delta=50_150.0,
        legs=3,
        legs_missing=1,
        legs_model=2,  # not a default (0), so a column left unwritten would show
    )
    values.update(kw)
    return GreeksRow(**values)


def under(i: int, u: int, **kw: Any) -> GreeksRow:
    return net(i, contract=f"UND{u}", delta=float(u), **kw)


def leg(i: int, k: int, **kw: Any) -> PositionRow:
    values: dict[str, Any] = dict(
        timestamp=NOW + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        conid=900_000_000 + k,
        symbol=f"UND{k % 3} C",
        underlying=f"UND{k % 3}",
        sec_type="OPT",
        right="C",
        strike=100.0 + k,
        expiry="20270319",
        multiplier=100.0,
        position=float(k + 1),
        delta=0.5,
        gamma=0.01,
        vega=0.2,
        theta=-0.1,
        unit_delta=0.005,
        unit_gamma=0.0001,
        unit_vega=0.002,
        unit_theta=-0.001,
        implied_vol=0.2,
        underlying_price=501.0,
        greeks_source="model",
        key=new_key(),
    )
    values.update(kw)
    return PositionRow(**values)


def event(i: int, **kw: Any) -> ApiEvent:
    values: dict[str, Any] = dict(
        timestamp=NOW + timedelta(seconds=i),
        api_mode="SOCKET",
        event="transition",
        message=f"event {i}",
        machine="breaker",
        source_state="CLOSED",
        dest_state="OPEN",
        detail={"n": i, "nested": [1, 2]},
    )
    values.update(kw)
    return ApiEvent(**values)


def tick(i: int, legs: int = 4) -> list[Record]:
    return [net(i), *(under(i, u) for u in range(3)), event(i), *(leg(i, k) for k in range(legs))]


Write = Callable[[Store, Sequence[Record]], Awaitable[None]]


async def one_statement(store: Store, records: Sequence[Record]) -> None:
    """The statement itself, position rows included (write_live COPYs those today)."""
    greeks, events, positions = split_records(records)
    await store._run(lambda conn: write_statement(conn, greeks, events, positions))


async def live(store: Store, records: Sequence[Record]) -> None:
    await store.write_live(records)


WRITES = pytest.mark.parametrize("write", [one_statement, live], ids=["statement", "write_live"])


@pytest.fixture
async def store(db: TestDatabase) -> AsyncIterator[Store]:
    s = await Store.open(
        db.dsn,
        command_timeout=5.0,
        connect_timeout=2.0,
        positions=PositionTables(ahead=1, now=lambda: NOW),
    )
    await s.ensure_schema()
    yield s
    await s.close()


async def counts(db: TestDatabase) -> dict[str, int]:
    return {t: int((await db.fetch(f"SELECT count(*) FROM {t}"))[0][0]) for t in TABLES}


async def keys(db: TestDatabase, table: str) -> list[str]:
    order = "id" if table != POSITION_TABLE else "ctid"  # position_greeks has no id
    return [
        r["bridge_key"] for r in await db.fetch(f"SELECT bridge_key FROM {table} ORDER BY {order}")
    ]


# -- the statement is built from the declarations -------------------------------------------


def test_every_declared_column_is_in_the_statement() -> None:
    for table in (GREEKS_TABLE, UNDERLYING_TABLE, EVENTS_TABLE):
        assert PLANS[table].columns == tuple(REQUIRED[table])
        assert PLANS[table].types == tuple(c.type for c in REQUIRED[table].values())
    assert PLANS[POSITION_TABLE].columns == tuple(name for name, _ in POSITION_COLUMNS)
    sql = statement(TABLES)
    for table in TABLES:
        for column in PLANS[table].columns:
            assert f'"{column}"' in sql


def test_a_declared_column_the_tuples_lack_fails_loudly() -> None:
    with pytest.raises(ValueError, match="new_column"):
        _plan("t", {"a": "text", "new_column": "text"}, ("seq", "a"), "bridge_key")


@WRITES
@pytest.mark.parametrize("legs", [0, 2])
async def test_every_declared_column_is_written(
    store: Store, db: TestDatabase, write: Write, legs: int
) -> None:
    """Each column holds what the record's COPY tuple carries, name by name."""
    records = tick(0, legs=legs)
    await write(store, records)
    greeks, events, positions = split_records(records)
    expected: dict[str, list[tuple[Any, ...]]] = {
        GREEKS_TABLE: [g for g in greeks if g[2] == PORTFOLIO],
        UNDERLYING_TABLE: [g for g in greeks if g[2] != PORTFOLIO],
        EVENTS_TABLE: list(events),
        POSITION_TABLE: list(positions),
    }
    # The declarations and the tuples' own column lists, not the statement's plan.
    declared: dict[str, tuple[Sequence[str], Sequence[str]]] = {
        GREEKS_TABLE: (tuple(REQUIRED[GREEKS_TABLE]), GREEKS_COPY_COLUMNS),
        UNDERLYING_TABLE: (tuple(REQUIRED[UNDERLYING_TABLE]), GREEKS_COPY_COLUMNS),
        EVENTS_TABLE: (tuple(REQUIRED[EVENTS_TABLE]), EVENTS_COPY_COLUMNS),
        POSITION_TABLE: (
            tuple(name for name, _ in POSITION_COLUMNS),
            ("seq", *POSITION_COPY_COLUMNS),
        ),
    }
    for table, tuples in expected.items():
        columns, order = declared[table]
        got = {r["bridge_key"]: r for r in await db.fetch(f"SELECT * FROM {table}")}
        assert len(got) == len(tuples) > 0 or (table == POSITION_TABLE and not legs)
        for values in tuples:
            stored = got[values[order.index("bridge_key")]]
            for column in columns:
                want = values[order.index(column)]
                have = stored[column]
                if column == "detail":
                    want, have = json.loads(want), json.loads(have)
                assert want is not None, f"{table}.{column}: the test needs a value"
                assert have == want, f"{table}.{column}"


# -- one tick is one transaction -------------------------------------------------------------


@WRITES
async def test_replays_are_no_ops_and_order_is_kept(
    store: Store, db: TestDatabase, write: Write
) -> None:
    first, second = tick(0), tick(1)
    await write(store, first)
    await write(store, first)  # a commit retried after a lost reply
    await write(store, [*first, *second])  # a spilled batch drained after it committed
    await write(store, [*second, *second])  # the same key twice in one statement
    assert await counts(db) == {
        GREEKS_TABLE: 2,
        UNDERLYING_TABLE: 6,
        EVENTS_TABLE: 2,
        POSITION_TABLE: 8,
    }
    by_table = {
        GREEKS_TABLE: [
            r.key for r in (*first, *second) if isinstance(r, GreeksRow) and r.contract == PORTFOLIO
        ],
        UNDERLYING_TABLE: [
            r.key for r in (*first, *second) if isinstance(r, GreeksRow) and r.contract != PORTFOLIO
        ],
        EVENTS_TABLE: [r.key for r in (*first, *second) if isinstance(r, ApiEvent)],
    }
    for table, want in by_table.items():
        assert await keys(db, table) == want


@WRITES
async def test_a_bad_record_anywhere_leaves_nothing(
    store: Store, db: TestDatabase, write: Write
) -> None:
    records = tick(0)
    for bad in (
        event(9, message="nul\x00byte"),  # 22021, refused by the server
        net(0, contract="UND\x00"),  # the same in underlying_greeks
        net(1, legs=2**40),  # beyond integer: asyncpg refuses to encode it
        leg(0, 99, right="X"),  # position_greeks' CHECK (23514, not a partition)
    ):
        with pytest.raises(PermanentStoreError):
            await write(store, [*records, bad])
    assert await counts(db) == dict.fromkeys(TABLES, 0)
    await write(store, records)  # the good ones go in afterwards, once
    assert (await counts(db))[GREEKS_TABLE] == 1


@WRITES
async def test_a_missing_partition_waits_and_leaves_nothing(
    store: Store, db: TestDatabase, write: Write
) -> None:
    far = leg(0, 1, timestamp=NOW + timedelta(days=30))  # no partition made that far ahead
    with pytest.raises(TransientStoreError, match="no partition"):
        await write(store, [*tick(0), far])
    assert await counts(db) == dict.fromkeys(TABLES, 0)


async def test_the_statement_raises_what_the_classifier_knows(
    db: TestDatabase, store: Store
) -> None:
    conn = await db.connect()
    try:
        greeks, events, positions = split_records(
            [*tick(0), leg(0, 1, timestamp=NOW + timedelta(days=30))]
        )
        with pytest.raises(asyncpg.PostgresError) as caught:
            await write_statement(conn, greeks, events, positions)
        assert is_missing_partition(caught.value)
    finally:
        await conn.close()


async def test_a_missing_table_waits_and_leaves_nothing(store: Store, db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await conn.execute("DROP TABLE underlying_greeks")
    finally:
        await conn.close()
    with pytest.raises(TransientStoreError):
        await store.write_live(tick(0, legs=0))
    assert await keys(db, GREEKS_TABLE) == []


async def test_a_read_only_database_waits(db: TestDatabase) -> None:
    s = await Store.open(
        db.dsn, connect_timeout=2.0, server_settings={"default_transaction_read_only": "on"}
    )
    try:
        with pytest.raises(TransientStoreError, match="read-only"):
            await s.write_live(tick(0, legs=0))
    finally:
        await s.close()


async def test_an_unreachable_database_waits() -> None:
    s = await Store.open("postgresql://bridge@127.0.0.1:1/none", connect_timeout=1.0)
    try:
        with pytest.raises(TransientStoreError):
            await s.write_live(tick(0, legs=0))
    finally:
        await s.close()


# -- through the sink: one bad record is rejected alone, the environment makes rows wait ---


@pytest.fixture
async def sink(store: Store, tmp_path: Path) -> AsyncIterator[DurableWriter]:
    buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
    buffer.open()
    writer = DurableWriter(
        store, buffer, api_mode="SOCKET", clock=FakeClock(start=NOW), retry_interval=60.0
    )
    await writer.start()
    yield writer
    await writer.stop()
    buffer.close()


async def test_the_sink_rejects_the_bad_record_alone(
    sink: DurableWriter, db: TestDatabase, tmp_path: Path
) -> None:
    bad = net(0, contract="UND\x00")
    records: list[Record] = [net(0), under(0, 1), bad, under(0, 2), event(0)]
    await sink.write(records)
    assert sink.breaker.state is BreakerState.CLOSED
    assert await keys(db, UNDERLYING_TABLE) == [records[1].key, records[3].key]
    assert await keys(db, GREEKS_TABLE) == [records[0].key]
    rejected = (tmp_path / "buffer.jsonl.rejected").read_text().splitlines()
    assert [json.loads(json.loads(line)["record"])["key"] for line in rejected] == [bad.key]


async def test_the_sink_keeps_a_tick_waiting_when_a_table_is_gone(
    sink: DurableWriter, db: TestDatabase, tmp_path: Path
) -> None:
    conn = await db.connect()
    try:
        await conn.execute("DROP TABLE underlying_greeks")
    finally:
        await conn.close()
    records = [net(0), under(0, 1)]
    await sink.write(records)  # durable: in the buffer
    assert sink.breaker.state is BreakerState.OPEN
    assert sink.stats.rejected == 0
    assert not (tmp_path / "buffer.jsonl.rejected").exists()
    assert await keys(db, GREEKS_TABLE) == []
    pending = (tmp_path / "buffer.jsonl").read_text()
    assert all(r.key in pending for r in records)


def test_fixture_records_fill_every_column() -> None:
    """The column test above means something only if no value it checks is None or 0."""
    for record in (net(0), under(0, 1), leg(0, 1), event(0)):
        assert all(v not in (None, 0) for v in attrs.asdict(record).values()), record


# -- routing and the pool --------------------------------------------------------------------


async def test_a_big_book_goes_the_copy_way_with_the_same_promises(
    store: Store, db: TestDatabase
) -> None:
    many = STATEMENT_MAX_POSITIONS + 1
    records = tick(0, legs=many)
    with pytest.raises(TransientStoreError, match="no partition"):
        await store.write_live([*records, leg(0, 999, timestamp=NOW + timedelta(days=30))])
    assert await counts(db) == dict.fromkeys(TABLES, 0)
    await store.write_live(records)
    await store.write_live(records)  # a replay: no-op
    assert await counts(db) == {
        GREEKS_TABLE: 1,
        UNDERLYING_TABLE: 3,
        EVENTS_TABLE: 1,
        POSITION_TABLE: many,
    }


async def test_a_transaction_left_open_is_rolled_back_on_release(
    store: Store, db: TestDatabase
) -> None:
    """The pool's reset does nothing more, but asyncpg still ends an open transaction."""

    async def leave_open(conn: asyncpg.Connection) -> None:
        await conn.execute("BEGIN")
        greeks, events, positions = split_records([net(0)])
        await write_statement(conn, greeks, events, positions)

    await store._run(leave_open)
    assert await keys(db, GREEKS_TABLE) == []
    row = net(1)
    await store.write_live([row])  # the same pooled connection, usable as ever
    assert await keys(db, GREEKS_TABLE) == [row.key]
