"""SOCKET mode end to end: the real ib_async client, the IB Gateway simulator, the Bridge
and a real PostgreSQL (behind a TCP proxy), on a fake clock.

The simulator's prices do not move here (its tick interval is far away), so every Greek it
sends is the Black-Scholes value at the moment of subscription, which these tests
recompute independently from the portfolio.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim import Portfolio, TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase, expected_net_greeks, wait_until

NY = ZoneInfo("America/New_York")
ACCOUNT = "DU1234567"


def expected_net(portfolio: Portfolio, at: datetime) -> dict[str, float]:
    return expected_net_greeks(portfolio, ACCOUNT, at)


@attrs.define
class World:
    clock: FakeClock
    sim: TwsSimulator
    db: TestDatabase
    pg: TcpProxy
    bridge: Bridge
    started_at: datetime

    async def rows(self) -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")

    async def events(self, where: str = "true") -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch(f"SELECT * FROM api_logs WHERE {where} ORDER BY id")

    @property
    def state(self) -> ConnectionState:
        return self.bridge.connection_state

    async def reaches(self, state: ConnectionState) -> None:
        await wait_until(lambda: self.state is state)

    async def live_with_data(self) -> None:
        await wait_until(lambda: self.state is ConnectionState.LIVE)
        feed = self.bridge._feed
        await wait_until(lambda: feed.snapshot(self.clock.now()) is not None)

    async def ticks(self, n: int, interval: float = 5.0) -> None:
        for _ in range(n):
            await self.clock.advance(interval)


async def make_world(
    db: TestDatabase,
    tmp_path: Path,
    start: datetime,
    book: Callable[[datetime], Portfolio] = single_underlying_portfolio,
    /,
    **env: str,
) -> AsyncIterator[World]:
    """The real Bridge over the simulator serving ``book`` (as of ``start``) and ``db``."""
    clock = FakeClock(start=start.astimezone(UTC))
    portfolio = book(clock.now())
    async with (
        TcpProxy(*db.server_address()) as pg,
        TwsSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as sim,
    ):
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_INTERVAL": "15",
                "IB_PROBE_TIMEOUT": "0.5",
                "DATABASE_URL": db.proxied_dsn(pg),
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_DB_CONNECT_TIMEOUT": "1",
                "BRIDGE_DB_COMMAND_TIMEOUT": "2",
                **env,
            },
            use_dotenv=False,
        )
        bridge = Bridge(settings, clock=clock)
        async with bridge:
            yield World(clock, sim, db, pg, bridge, clock.now())


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(db, tmp_path, datetime(2026, 3, 10, 14, 0, tzinfo=NY)):
        yield w


def assert_clean(rows: list[Any]) -> None:
    """No NaN, no sentinel, no infinity, no zero-from-empty row ever reaches the table."""
    for r in rows:
        for col in ("delta", "gamma", "vega", "theta", "underlying_price"):
            v = r[col]
            assert v is None or (math.isfinite(v) and v != -2.0 and abs(v) < 1e300), (col, v)
        assert r["legs"] > 0


async def test_rows_at_cadence_equal_an_independent_recomputation(world: World) -> None:
    await world.live_with_data()
    await world.ticks(3)
    rows = await world.rows()
    assert len(rows) == 3
    want = expected_net(world.sim.portfolio, world.started_at)
    for r in rows:
        assert r["contract"] == "PORTFOLIO"
        assert r["account"] == ACCOUNT
        for name, value in want.items():
            assert r[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
        assert r["underlying_price"] == pytest.approx(600.0)
        assert r["legs"] == 4
        assert r["legs_missing"] == 0
    stamps = [r["timestamp"] for r in rows]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)] == [5, 5]
    assert world.sim.count_requests(58) == 0  # never reqGlobalCancel
    assert world.sim.count_requests(15) == 0  # never reqAutoOpenOrders
    assert_clean(rows)


async def test_gateway_restart_in_reset_window_waits_until_0005_et(
    db: TestDatabase, tmp_path: Path
) -> None:
    # A Thursday: on a Friday night the weekly maintenance window holds the reconnect to 03:00.
    start = datetime(2026, 11, 5, 23, 44, 30, tzinfo=NY)
    async for w in make_world(db, tmp_path, start):
        await w.live_with_data()
        await w.ticks(6)  # 23:45:00 ET
        await w.sim.restart()
        await w.reaches(ConnectionState.RESET_WAIT)
        before = w.sim.connections_accepted
        await w.clock.advance(19 * 60)  # 00:04 ET: still waiting, no attempt
        assert w.state is ConnectionState.RESET_WAIT
        assert w.sim.connections_accepted == before
        await w.clock.advance(60)
        await w.reaches(ConnectionState.LIVE)
        assert w.clock.now().astimezone(NY).strftime("%H:%M") == "00:05"
        waits = await w.events("dest_state = 'RESET_WAIT'")
        assert len(waits) == 1
        assert (await w.events("event = 'reconnect'"))[-1]["status"] == "info"


async def test_gateway_restart_in_the_weekly_window_waits_until_saturday_0300_et(
    db: TestDatabase, tmp_path: Path
) -> None:
    # Friday 23:44:30 New York: inside the nightly window and the weekly one (Fri 23:00 to
    # Sat 03:00). The nightly 00:05 resume lies inside the weekly window, so 03:00 it is.
    start = datetime(2026, 11, 6, 23, 44, 30, tzinfo=NY)
    async for w in make_world(db, tmp_path, start):
        await w.live_with_data()
        await w.ticks(6)  # 23:45:00 ET
        await w.sim.restart()
        await w.reaches(ConnectionState.RESET_WAIT)
        before = w.sim.connections_accepted
        await w.clock.advance(20 * 60 + 60)  # 00:06 ET: past the nightly resume, still waiting
        assert w.state is ConnectionState.RESET_WAIT
        await w.clock.advance(3 * 3600 - 7 * 60)  # 02:59 ET
        assert w.state is ConnectionState.RESET_WAIT
        assert w.sim.connections_accepted == before  # not one attempt in the window
        await w.clock.advance(60)
        await w.reaches(ConnectionState.LIVE)
        assert w.clock.now().astimezone(NY).strftime("%a %H:%M") == "Sat 03:00"
        waits = await w.events("dest_state = 'RESET_WAIT'")
        assert len(waits) == 1
        assert json.loads(waits[0]["detail"])["window"] == "weekly"


async def test_refused_gateway_backs_off_5_10_20_then_steady(world: World) -> None:
    await world.live_with_data()
    await world.sim.refuse(None)
    await world.sim.restart()
    await wait_until(lambda: world.state is ConnectionState.BACKOFF)
    delays = []
    for _ in range(5):
        await wait_until(lambda: world.state is ConnectionState.BACKOFF)
        deadline = world.bridge._machine.wake_at
        assert deadline is not None
        delays.append(round(deadline - world.clock.monotonic(), 3))
        await world.clock.advance(deadline - world.clock.monotonic())
        await wait_until(lambda: world.state is not ConnectionState.CONNECTING)
    assert delays == [5.0, 10.0, 20.0, 60.0, 60.0]
    await world.sim.accept_connections()
    await world.clock.advance(60)
    await world.live_with_data()
    failed = await world.events("event = 'error' AND detail->>'outcome' = 'failed'")
    assert [json.loads(e["detail"])["attempt"] for e in failed][:5] == [1, 2, 3, 4, 5]


async def test_client_id_in_use_is_logged_and_retried(world: World) -> None:
    await world.live_with_data()
    await world.sim.restart(stale_ids=30.0)  # the old session lingers: 326 for 30 s
    await wait_until(lambda: world.state is ConnectionState.BACKOFF)
    for _ in range(4):
        if world.state is ConnectionState.LIVE:
            break
        deadline = world.bridge._machine.wake_at
        if deadline is not None:
            await world.clock.advance(max(0.0, deadline - world.clock.monotonic()))
        await wait_until(lambda: world.state is not ConnectionState.CONNECTING)
    await world.live_with_data()
    in_use = await world.events("detail->>'code' = '326'")
    assert in_use
    assert all(e["status"] == "error" for e in in_use)
    assert "already in use" in in_use[0]["message"]


async def test_frozen_gateway_is_detected_by_the_probe(world: World) -> None:
    await world.live_with_data()
    await world.sim.freeze(None)
    await world.clock.advance(15.0)  # the probe fires and times out (0.5 s, real time)
    await wait_until(lambda: world.state is ConnectionState.BACKOFF, timeout=10)
    await world.sim.unfreeze()
    await world.clock.advance(5.0)
    await world.live_with_data()
    lost = await world.events("event = 'disconnect'")
    assert "probe" in lost[0]["message"]


async def test_daily_reset_1101_pauses_then_resubscribes(world: World) -> None:
    await world.live_with_data()
    await world.ticks(1)
    await world.sim.daily_reset("1101", outage=30.0)
    await wait_until(lambda: world.bridge.status.stale)
    await world.ticks(5)  # 25 s into the 30 s outage: nothing written
    assert len(await world.rows()) == 1
    await world.ticks(1)
    await world.live_with_data()
    await world.ticks(2)
    rows = await world.rows()
    assert len(rows) >= 3
    assert world.sim.count_requests(1) >= 8  # the 4 legs subscribed twice
    assert_clean(rows)
    codes = [e["detail"] for e in await world.events("event IN ('error', 'reconnect')")]
    assert any('"code": 1100' in c for c in codes)
    assert any('"code": 1101' in c for c in codes)


async def test_sentinel_greeks_are_never_written_as_numbers(world: World) -> None:
    await world.live_with_data()
    await world.ticks(1)
    await world.sim.sentinel_greeks("vega_theta")
    await world.bridge._feed.resubscribe()
    await world.ticks(2)
    rows = await world.rows()
    assert_clean(rows)
    assert rows[0]["vega"] is not None
    assert rows[-1]["vega"] is None
    assert rows[-1]["theta"] is None
    assert rows[-1]["delta"] == pytest.approx(rows[0]["delta"])
    assert rows[-1]["legs_missing"] == 3


async def test_database_cut_during_gateway_faults_loses_nothing(world: World) -> None:
    await world.live_with_data()
    await world.ticks(2)
    world.pg.down()
    await world.ticks(3)
    await world.sim.daily_reset("1102", outage=10.0)
    await world.ticks(4)
    world.pg.up()
    await world.clock.advance(60.0)
    await wait_until(lambda: world.bridge.status.breaker == "CLOSED", timeout=15)
    rows = await world.rows()
    assert len(rows) == world.bridge.status.rows_submitted
    assert len({r["bridge_key"] for r in rows}) == len(rows)
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps)
    assert_clean(rows)
