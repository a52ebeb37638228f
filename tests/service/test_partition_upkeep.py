"""The service's partition upkeep over 40 days of a fake clock, on a real PostgreSQL:
partitions made ahead, whole days dropped past BRIDGE_RETENTION_DAYS, each drop an
``api_logs`` event, and an unreachable database said once per episode."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.partitions import partition_name
from ibkr_bridge.service._partitions import keep_partitions
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.positions import POSITION_TABLE, PositionTables, existing_partitions
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TcpProxy, TestDatabase

START = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
DAY = 86400.0


async def partitions(db: TestDatabase) -> list[str]:
    conn = await db.connect()
    try:
        return await existing_partitions(conn)
    finally:
        await conn.close()


async def until_partition(db: TestDatabase, day: date) -> None:
    name = partition_name(POSITION_TABLE, day)
    for _ in range(300):
        have = await partitions(db)
        if name in have:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} not in {have}")


async def asleep(clock: FakeClock, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(10):
        while clock.sleepers == 0 and not task.done():  # noqa: ASYNC110  (no event to wait on)
            await asyncio.sleep(0.01)
    assert not task.done()


async def test_forty_days_of_upkeep(db: TestDatabase, tmp_path: Path) -> None:
    clock = FakeClock(start=START)
    store = await Store.open(
        db.dsn, positions=PositionTables(ahead=2, retention_days=30, now=clock.now)
    )
    await store.ensure_schema()
    buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
    buffer.open()
    sink = DurableWriter(store, buffer, api_mode="SOCKET", clock=clock)
    await sink.start()
    upkeep = asyncio.create_task(keep_partitions(store, sink, clock, every=DAY))
    try:
        for day in range(1, 40):
            await asleep(clock, upkeep)  # the day's run is over: the next one is a day away
            await clock.advance(DAY)
            await until_partition(db, (START + timedelta(days=day + 2)).date())
        await asyncio.sleep(0.1)  # the last run's drops, after its creations
        await sink.flush()
    finally:
        upkeep.cancel()
        await asyncio.gather(upkeep, return_exceptions=True)
        await sink.stop()
        buffer.close()
        await store.close()
    names = await partitions(db)
    assert len(names) == 31 + 2  # today, the 30 days before, two ahead
    assert names[0] == partition_name(POSITION_TABLE, (START + timedelta(days=39 - 30)).date())
    events = await db.fetch(
        "SELECT detail FROM api_logs WHERE event = 'partitions_dropped' ORDER BY id"
    )
    dropped = [d for e in events for d in json.loads(e["detail"])["days"]]
    assert dropped == [(START + timedelta(days=d)).date().isoformat() for d in range(9)]


async def test_an_unreachable_database_is_one_event_per_episode(
    db: TestDatabase, tmp_path: Path
) -> None:
    clock = FakeClock(start=START)
    async with TcpProxy(*db.server_address()) as proxy:
        store = await Store.open(
            db.proxied_dsn(proxy),
            connect_timeout=0.5,
            command_timeout=0.5,
            positions=PositionTables(ahead=1, now=clock.now),
        )
        await store.ensure_schema()
        buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
        buffer.open()
        seen: list[str] = []
        sink = DurableWriter(store, buffer, api_mode="SOCKET", clock=clock)
        sink.add_listener(lambda e: seen.append(e.event))
        await sink.start()
        proxy.down()
        upkeep = asyncio.create_task(keep_partitions(store, sink, clock, every=3600.0))
        try:
            for _ in range(4):
                await asleep(clock, upkeep)
                await clock.advance(3600.0)
            await asyncio.sleep(0.2)
        finally:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
            proxy.up()
            await sink.stop()
            buffer.close()
            await store.close()
    assert seen.count("partition_upkeep_failed") == 1
