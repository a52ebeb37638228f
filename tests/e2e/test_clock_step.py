"""A wall clock that steps back (as NTP does) never gives two rows of one contract the same
timestamp, nor a row a timestamp earlier than its predecessor's.

SOCKET mode end to end: the real ib_async client, the IB Gateway simulator, the Bridge and a
real PostgreSQL, on a fake clock whose wall time is stepped back while the monotonic clock
(and so the writer's schedule) runs on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import ROW_TIME_STEP, FakeClock
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TestDatabase, wait_until

NY = ZoneInfo("America/New_York")
POLL = 5.0


@attrs.define
class World:
    clock: FakeClock
    db: TestDatabase
    bridge: Bridge
    submitted: list[GreeksRow]

    async def rows(self) -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch(
            "SELECT contract, timestamp, bridge_key FROM portfolio_greeks ORDER BY id"
        )

    async def steps(self) -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch(
            "SELECT status, detail FROM api_logs WHERE event = 'clock_step' ORDER BY id"
        )

    async def ticks(self, n: int) -> None:
        for _ in range(n):
            await self.clock.advance(POLL)

    def step_back(self, seconds: float) -> None:
        self.clock.set_wall(self.clock.now() - timedelta(seconds=seconds))


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(start=datetime(2026, 3, 10, 14, 0, tzinfo=NY).astimezone(UTC))
    portfolio = single_underlying_portfolio(as_of=clock.now())
    async with TwsSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as sim:
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_INTERVAL": "600",
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_POLL_INTERVAL": str(POLL),
                # The simulator's prices never move, so its Greeks arrive once: keep them current.
                "BRIDGE_STALE_AFTER": "86400",
            },
            use_dotenv=False,
        )
        submitted: list[GreeksRow] = []
        bridge = Bridge(settings, clock=clock, on_rows=submitted.extend)
        async with bridge:
            await wait_until(lambda: bridge.connection_state is ConnectionState.LIVE)
            feed = bridge._feed
            await wait_until(lambda: feed.snapshot(clock.now()) is not None)
            yield World(clock, db, bridge, submitted)


def assert_strictly_increasing_per_contract(rows: list[Any]) -> None:
    by_contract: dict[str, list[datetime]] = {}
    for r in rows:
        by_contract.setdefault(r["contract"], []).append(r["timestamp"])
    assert by_contract
    for contract, stamps in by_contract.items():
        for a, b in pairwise(stamps):
            assert b > a, (contract, a, b)


async def test_a_wall_clock_step_back_keeps_timestamps_strictly_increasing(world: World) -> None:
    await world.ticks(3)
    before = await world.rows()
    last = max(r["timestamp"] for r in before)

    # 12 s back with a 5 s cadence: the next two ticks find the wall clock at or behind
    # the last timestamp written, the third is past it again.
    world.step_back(12.0)
    await world.ticks(4)
    rows = await world.rows()

    # Every row handed over is in the table: none lost to an idempotency key that a
    # repeated (account, contract, timestamp) would have made collide with an earlier row.
    assert len(rows) == len(world.submitted)
    assert {r["bridge_key"] for r in rows} == {row.key for row in world.submitted}
    assert_strictly_increasing_per_contract(rows)
    portfolio = [r["timestamp"] for r in rows if r["contract"] == "PORTFOLIO"]
    assert portfolio[3:5] == [last + ROW_TIME_STEP, last + 2 * ROW_TIME_STEP]
    assert portfolio[5] == world.clock.now() - timedelta(seconds=POLL)  # the wall clock again
    steps = await world.steps()
    assert len(steps) == 1, "one event per episode, not one per row"
    assert steps[0]["status"] == "warning"

    # A second step is a second episode: a second event. Two whole intervals back, the
    # wall clock lands exactly on earlier rows' times (and so on their idempotency keys).
    world.step_back(2 * POLL)
    await world.ticks(3)
    rows = await world.rows()
    assert len(rows) == len(world.submitted)
    assert_strictly_increasing_per_contract(rows)
    assert len(await world.steps()) == 2
