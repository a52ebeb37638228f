"""Per-position rows through the store and the buffer drain, on a real PostgreSQL.

The same path as every record: one transaction with the tick's net row, replays that write
nothing twice, a row refused as data rejected alone, and a day without its partition
treated as the environment's fault (the rows wait; the schema probe makes the partition).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.greeks import Leg, aggregate, position_rows
from ibkr_bridge.core.records import PositionRow, Record
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.dberrors import is_schema_problem
from ibkr_bridge.storage.drain import drain_buffer
from ibkr_bridge.storage.positions import POSITION_TABLE, PositionTables
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

NOW = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)
BOOK = [
    Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100),
    Leg(conid=2, symbol="SPY", sec_type="OPT", quantity=-2, multiplier=100.0, delta=0.5,
        gamma=0.01, vega=0.2, theta=-0.1, strike=500.0, right="C", expiry="20270319",
        implied_vol=0.2, underlying_price=501.0),
]  # fmt: skip


async def count(db: TestDatabase, query: str) -> int:
    return int((await db.fetch(query))[0][0])


def tick(at: datetime) -> list[Record]:
    nets: list[Record] = list(aggregate(BOOK, account="DU1", timestamp=at, api_mode="SOCKET"))
    legs: list[Record] = list(position_rows(BOOK, timestamp=at, api_mode="SOCKET"))
    return nets + legs


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


async def open_store(db: TestDatabase, clock: Clock) -> Store:
    store = await Store.open(db.dsn, positions=PositionTables(ahead=1, now=clock))
    await store.ensure_schema()
    return store


async def test_a_tick_and_its_legs_are_one_write_and_replays_are_no_ops(
    db: TestDatabase,
) -> None:
    store = await open_store(db, Clock())
    try:
        records = tick(NOW)
        await store.write(records)
        await store.write(records)  # a commit retried after a lost reply
    finally:
        await store.close()
    legs = await db.fetch(f"SELECT conid, delta FROM {POSITION_TABLE} ORDER BY conid")
    nets = await db.fetch("SELECT delta FROM portfolio_greeks")
    assert [(r["conid"], r["delta"]) for r in legs] == [(1, 100.0), (2, -100.0)]
    assert [r["delta"] for r in nets] == [pytest.approx(sum(r["delta"] for r in legs))]


async def test_buffered_legs_drain_in_order_exactly_once(db: TestDatabase, tmp_path: Path) -> None:
    store = await open_store(db, Clock())
    buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
    buffer.open()
    try:
        for i in range(5):
            buffer.append(tick(NOW + timedelta(seconds=5 * i)))
        await drain_buffer(buffer, store, batch_size=4)
        # A crash before the cursor moved replays what is already there.
        for i in range(5):
            buffer.append(tick(NOW + timedelta(seconds=5 * i)))
        progress = await drain_buffer(buffer, store, batch_size=7)
    finally:
        buffer.close()
        await store.close()
    assert progress.rejected == 0
    assert progress.quarantined == 0
    assert await count(db, f"SELECT count(*) FROM {POSITION_TABLE}") == 10
    assert await count(db, "SELECT count(*) FROM portfolio_greeks") == 5


async def test_a_leg_refused_as_data_is_rejected_alone(db: TestDatabase, tmp_path: Path) -> None:
    store = await open_store(db, Clock())
    buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
    buffer.open()
    refused: list[str] = []
    try:
        records = tick(NOW)
        last = records[-1]
        assert isinstance(last, PositionRow)
        bad = attrs.evolve(last, right="X")  # the table's CHECK refuses it
        buffer.append([*records[:-1], bad])
        progress = await drain_buffer(buffer, store, reject=lambda line, why: refused.append(why))
    finally:
        buffer.close()
        await store.close()
    assert progress.rejected == 1
    assert len(refused) == 1
    assert "option_right" in refused[0]
    assert await count(db, f"SELECT count(*) FROM {POSITION_TABLE}") == 1
    assert await count(db, "SELECT count(*) FROM portfolio_greeks") == 1


async def test_a_day_without_its_partition_waits_for_the_probe(db: TestDatabase) -> None:
    clock = Clock()
    store = await open_store(db, clock)
    try:
        later = NOW + timedelta(days=5)  # the bridge was down for days: no partition yet
        with pytest.raises(TransientStoreError) as caught:
            await store.write(tick(later))
        cause = caught.value.__cause__
        assert cause is not None
        assert is_schema_problem(cause)
        assert not isinstance(caught.value, PermanentStoreError)
        clock.now = later
        await store.ensure_schema()  # what the breaker's probe runs before draining
        await store.write(tick(later))
        done = await store.maintain_partitions()
    finally:
        await store.close()
    assert done is not None
    assert done.create == ()
    assert await count(db, f"SELECT count(*) FROM {POSITION_TABLE}") == 2
