from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.records import ApiEvent, GreeksRow, record_from_json, record_to_json
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import drain_buffer
from ibkr_bridge.storage.store import Store, split_raw
from ibkr_bridge.testing import TcpProxy, TestDatabase

T0 = datetime(2026, 3, 8, 6, 59, 58, 123456, tzinfo=UTC)


def row(i: int, **kw: object) -> GreeksRow:
    values: dict[str, object] = dict(
        timestamp=T0 + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        delta=100.0 + i / 3,
        gamma=0.1,
        vega=None,
        theta=-12.5,
        underlying_price=501.25,
        legs=3,
    )
    values.update(kw)
    return GreeksRow(**values)  # type: ignore[arg-type]


def event(i: int, **kw: object) -> ApiEvent:
    values: dict[str, object] = dict(
        timestamp=T0 + timedelta(seconds=i),
        api_mode="SOCKET",
        event="transition",
        message=f"event {i}",
        machine="breaker",
        source_state="CLOSED",
        dest_state="OPEN",
        detail={"n": i, "nested": {"a": [1, 2]}},
    )
    values.update(kw)
    return ApiEvent(**values)  # type: ignore[arg-type]


@pytest.fixture
async def store(db: TestDatabase) -> AsyncIterator[Store]:
    s = await Store.open(db.dsn, command_timeout=2.0, connect_timeout=2.0)
    await s.ensure_schema()
    yield s
    await s.close()


async def test_write_round_trips_values_and_order(store: Store, db: TestDatabase) -> None:
    rows = [row(i) for i in range(5)]
    events = [event(i) for i in range(3)]
    await store.write([rows[0], events[0], rows[1], events[1], *rows[2:], events[2]])
    got = await db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
    assert [r["bridge_key"] for r in got] == [r.key for r in rows]
    first = got[0]
    assert first["timestamp"] == T0
    assert first["delta"] == rows[0].delta
    assert first["vega"] is None
    assert first["contract"] == "PORTFOLIO"
    ev = await db.fetch("SELECT * FROM api_logs ORDER BY id")
    assert [e["message"] for e in ev] == ["event 0", "event 1", "event 2"]
    assert ev[0]["source_state"] == "CLOSED"


async def test_replay_is_a_noop(store: Store, db: TestDatabase) -> None:
    batch: list[GreeksRow | ApiEvent] = [row(0), event(0), row(1)]
    await store.write(batch)
    await store.write(batch)
    await store.write([row(2), *batch])
    assert len(await db.fetch("SELECT 1 FROM portfolio_greeks")) == 3
    assert len(await db.fetch("SELECT 1 FROM api_logs")) == 1


async def test_raw_path_equals_record_path(store: Store, db: TestDatabase) -> None:
    records: list[GreeksRow | ApiEvent] = [row(0), event(1), row(2, delta=None)]
    lines = [json.loads(record_to_json(r)) for r in records]
    await store.write_tuples(*split_raw(lines))
    got = await db.fetch("SELECT bridge_key, delta FROM portfolio_greeks ORDER BY id")
    assert [(g["bridge_key"], g["delta"]) for g in got] == [
        (records[0].key, records[0].delta),  # type: ignore[union-attr]
        (records[2].key, None),
    ]
    assert record_from_json(record_to_json(records[1])) == records[1]


async def test_bad_data_is_permanent(store: Store, db: TestDatabase) -> None:
    # PostgreSQL text cannot hold NUL: this row can never be written.
    with pytest.raises(PermanentStoreError):
        await store.write([event(0, message="garbage\x00from gateway")])
    await store.write([event(1)])  # the store is still usable
    assert len(await db.fetch("SELECT 1 FROM api_logs")) == 1


async def test_refused_is_transient(db: TestDatabase) -> None:
    async with TcpProxy(*db.server_address()) as proxy:
        proxy.down()
        s = await Store.open(db.proxied_dsn(proxy), connect_timeout=1.0, command_timeout=1.0)
        try:
            with pytest.raises(TransientStoreError):
                await s.write([row(0)])
        finally:
            await s.close()


async def test_black_hole_hits_the_deadline(db: TestDatabase) -> None:
    async with TcpProxy(*db.server_address()) as proxy:
        s = await Store.open(db.proxied_dsn(proxy), connect_timeout=0.5, command_timeout=0.5)
        try:
            await s.ensure_schema()
            proxy.blackhole()
            with pytest.raises(TransientStoreError):
                await s.write([row(0)])
            proxy.up()
            proxy.cut()
            later = row(1)
            await s.write([later])  # a fresh connection works again
        finally:
            await s.close()
    keys = [r["bridge_key"] for r in await db.fetch("SELECT bridge_key FROM portfolio_greeks")]
    assert later.key in keys


async def test_cut_mid_transaction_is_transient_and_atomic(db: TestDatabase) -> None:
    async with TcpProxy(*db.server_address()) as proxy:
        s = await Store.open(db.proxied_dsn(proxy), connect_timeout=1.0, command_timeout=2.0)
        try:
            await s.ensure_schema()
            big = [row(i) for i in range(20000)]

            write = asyncio.create_task(s.write(big))
            # Let the COPY start streaming, then cut the connection under it.
            for _ in range(200):
                await asyncio.sleep(0.001)
                if proxy.open_connections:
                    break
            await asyncio.sleep(0.01)
            proxy.cut()
            with pytest.raises(TransientStoreError):
                await write
        finally:
            await s.close()
    # All or nothing: the batch was one transaction.
    assert len(await db.fetch("SELECT 1 FROM portfolio_greeks")) in (0, 20000)


# --- per-underlying rows have their own table (issue 14.2) -----------------------------------


async def _contracts(db: TestDatabase, table: str) -> list[tuple[str, str]]:
    rows = await db.fetch(f"SELECT contract, bridge_key FROM {table} ORDER BY id")
    return [(r["contract"], r["bridge_key"]) for r in rows]


async def test_underlying_rows_go_to_their_own_table_on_both_paths(
    store: Store, db: TestDatabase
) -> None:
    p0, spy0, es0 = row(0), row(0, contract="SPY"), row(0, contract="ES")
    await store.write([p0, spy0, es0, event(0)])  # the optimistic COPY path
    p1, spy1, es1 = row(1), row(1, contract="SPY"), row(1, contract="ES")
    await store.write([p0, spy0, p1, spy1, es1])  # a replayed key: the temp-table path
    assert await _contracts(db, "portfolio_greeks") == [
        ("PORTFOLIO", p0.key),
        ("PORTFOLIO", p1.key),
    ]
    assert await _contracts(db, "underlying_greeks") == [
        ("SPY", spy0.key),
        ("ES", es0.key),
        ("SPY", spy1.key),
        ("ES", es1.key),
    ]
    latest = await db.fetch("SELECT contract FROM portfolio_greeks ORDER BY timestamp DESC LIMIT 1")
    assert latest[0]["contract"] == "PORTFOLIO"


async def test_leg_counts_are_written_on_every_path(store: Store, db: TestDatabase) -> None:
    p0, spy0 = row(0, legs_missing=1, legs_model=2), row(0, contract="SPY", legs_model=1)
    await store.write([p0, spy0])  # the optimistic COPY
    p1, spy1 = row(1, legs_model=3), row(1, contract="SPY", legs_model=2)
    await store.write([p0, p1, spy1])  # a replayed key: the temp-table path
    p2 = row(2, legs_model=4)
    await store.write_tuples(*split_raw([json.loads(record_to_json(p2))]))  # raw lines
    counts = "SELECT bridge_key, legs, legs_missing, legs_model FROM {} ORDER BY id"
    got = [tuple(r.values()) for r in await db.fetch(counts.format("portfolio_greeks"))]
    assert got == [(p0.key, 3, 1, 2), (p1.key, 3, 0, 3), (p2.key, 3, 0, 4)]
    got = [tuple(r.values()) for r in await db.fetch(counts.format("underlying_greeks"))]
    assert got == [(spy0.key, 3, 0, 1), (spy1.key, 3, 0, 2)]


def _line_as_main_wrote_it(r: GreeksRow) -> str:
    # Spelled out, not record_to_json: the buffer format of the version before this change.
    data = {
        "timestamp": r.timestamp.isoformat(),
        "account": r.account,
        "api_mode": r.api_mode,
        "contract": r.contract,
        "delta": r.delta,
        "gamma": r.gamma,
        "vega": r.vega,
        "theta": r.theta,
        "underlying_price": r.underlying_price,
        "dollar_delta": r.dollar_delta,
        "legs": r.legs,
        "legs_missing": r.legs_missing,
    }
    return json.dumps({"v": 1, "type": "greeks", "key": r.key, "data": data})


async def test_buffered_underlying_rows_of_the_old_version_drain_to_their_table(
    store: Store, db: TestDatabase, tmp_path: Path
) -> None:
    # A buffer left by the old version, which wrote every row of a tick to portfolio_greeks.
    tick = [row(0), row(0, contract="ES"), row(0, contract="SPY"), row(1), row(1, contract="SPY")]
    path = tmp_path / "buffer.jsonl"
    header = json.dumps({"v": 1, "type": "header", "file_id": "0" * 32})
    text = "\n".join([header, *map(_line_as_main_wrote_it, tick)]) + "\n"
    for attempt in range(2):  # the second time: the same lines replayed (a lost cursor)
        path.write_text(text)
        path.chmod(0o600)
        with JsonlBuffer(path) as buffer:
            progress = await drain_buffer(buffer, store)
        assert progress.drained == len(tick), attempt
        assert progress.rejected == 0
        assert await _contracts(db, "portfolio_greeks") == [
            ("PORTFOLIO", tick[0].key),
            ("PORTFOLIO", tick[3].key),
        ]
        assert await _contracts(db, "underlying_greeks") == [
            ("ES", tick[1].key),
            ("SPY", tick[2].key),
            ("SPY", tick[4].key),
        ]
