"""PORTAL mode end to end: Bridge <-> PortalFeed <-> Client Portal simulator over real HTTPS
<-> real PostgreSQL (behind a TCP proxy), on a fake clock.

Every fault ends LIVE again (or in a logged needs-login wait), and nothing wrong is written:
no NaN, no sentinel, no row from an empty or stale state, every row's Greeks equal to an
independent recomputation at most one poll period before its timestamp.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.feeds.portal.feed import PortalFeed
from ibkr_bridge.sim import PortalSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT, Portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase, wait_until
from tests.feeds.portal.test_portal_feed import expected_net
from tests.sim.portal.test_portal_sim import START, run_for


@attrs.define
class World:
    clock: FakeClock
    sim: PortalSimulator
    db: TestDatabase
    pg: TcpProxy
    bridge: Bridge

    @property
    def feed(self) -> PortalFeed:
        feed = self.bridge._feed
        assert isinstance(feed, PortalFeed)
        return feed

    def busy(self) -> int:
        return self.sim.busy + max(0, self.feed.requests_in_flight - self.sim.parked)

    async def run(self, seconds: float) -> None:
        await run_for(self.clock, seconds, self.busy)

    @property
    def state(self) -> ConnectionState:
        return self.bridge.connection_state

    async def rows(self) -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")

    async def events(self, where: str = "true") -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch(f"SELECT * FROM api_logs WHERE {where} ORDER BY id")


async def make_portal_world(
    db: TestDatabase,
    tmp_path: Path,
    portfolio: Portfolio,
    /,
    *,
    drive_until_live: bool = False,
    prepare: Callable[[PortalSimulator], None] | None = None,
    **env: str,
) -> AsyncIterator[World]:
    """The real Bridge in PORTAL mode against the simulator and the database, LIVE.

    ``drive_until_live`` moves the fake clock until LIVE, for a connect that waits on the
    rate limiter (several accounts' positions spend the connect's request burst).
    ``prepare`` is called with the simulator before the bridge starts (faults in place
    from its first request).
    """
    clock = FakeClock(start=START)
    async with TcpProxy(*db.server_address()) as pg, PortalSimulator(portfolio, clock=clock) as sim:
        assert sim.ca_path is not None
        if prepare is not None:
            prepare(sim)
        settings = load_settings(
            {
                "IB_API_MODE": "PORTAL",
                "IBKR_GATEWAY_URL": sim.base_url,
                "IBKR_GATEWAY_CA": str(sim.ca_path),
                "IB_CONNECT_TIMEOUT": "5",
                "IB_PROBE_INTERVAL": "15",
                "IB_PROBE_TIMEOUT": "2",
                "DATABASE_URL": db.proxied_dsn(pg),
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_DB_CONNECT_TIMEOUT": "1",
                "BRIDGE_DB_COMMAND_TIMEOUT": "2",
                **env,
            },
            use_dotenv=False,
        )
        async with Bridge(settings, clock=clock) as bridge:
            w = World(clock, sim, db, pg, bridge)
            for _ in range(40 if drive_until_live else 0):
                if w.state is ConnectionState.LIVE:
                    break
                await w.run(0.5)
            await wait_until(lambda: w.state is ConnectionState.LIVE)
            yield w


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_portal_world(db, tmp_path, single_underlying_portfolio(as_of=START)):
        yield w


def assert_right(world: World, rows: list[Any]) -> None:
    portfolio = world.sim.portfolio if hasattr(world.sim, "portfolio") else None
    for r in rows:
        assert r["api_mode"] == "PORTAL"
        assert r["legs"] > 0
        for col in ("delta", "gamma", "vega", "theta", "underlying_price"):
            v = r[col]
            assert v is None or (math.isfinite(v) and v != -2.0 and abs(v) < 1e300), (col, v)
        if portfolio is not None:
            # The feed values a row with the latest snapshot, taken at most `stale_after`
            # (3 polls, 6 s) before the row; the simulator answered it at some instant
            # on its 2 s poll grid. One of those instants must reproduce every Greek.
            candidates = [
                expected_net(portfolio, DEFAULT_ACCOUNT, r["timestamp"] - timedelta(seconds=j))
                for j in range(0, 7)
            ]
            assert any(
                all(r[n] == pytest.approx(v, rel=1e-9, abs=1e-12) for n, v in want.items())
                for want in candidates
            ), (r, candidates[0])


async def test_rows_each_interval_equal_a_recomputation(world: World) -> None:
    await world.run(30.0)
    rows = await world.rows()
    assert len(rows) >= 5
    stamps = [r["timestamp"] for r in rows]
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(stamps)} == {5.0}
    assert_right(world, rows)


FAULTS: dict[str, Callable[[PortalSimulator], None]] = {
    "session expiry": lambda sim: sim.expire_session(),
    "nightly logout": lambda sim: sim.nightly_logout(needs_human=False, sso_expired=False),
    "competing session": lambda sim: sim.competing(120.0),
    "429 storm": lambda sim: sim.rate_limit_storm(90.0),
    "503 slow answers": lambda sim: sim.slow(60.0, delay=12.0),
    "gateway stops answering": lambda sim: sim.freeze(60.0),
    "garbage answers": lambda sim: sim.garbage(60.0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_ends_live_again_with_nothing_wrong_written(world: World, fault: str) -> None:
    await world.run(15.0)
    before = len(await world.rows())
    assert before >= 2
    FAULTS[fault](world.sim)
    await world.run(420.0)
    await wait_until(lambda: world.state is ConnectionState.LIVE)
    await world.run(20.0)
    rows = await world.rows()
    assert len(rows) > before + 2, "rows resumed after the fault"
    assert_right(world, rows)
    assert len({r["bridge_key"] for r in rows}) == len(rows)
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps)
    events = await world.events()
    assert events, "the episode is in api_logs"


async def test_database_cut_during_session_expiry_loses_nothing(world: World) -> None:
    await world.run(10.0)
    world.pg.down()
    world.sim.expire_session()
    await world.run(120.0)
    world.pg.up()
    await world.run(120.0)
    await wait_until(lambda: world.bridge.status.breaker == "CLOSED")
    rows = await world.rows()
    assert len(rows) == world.bridge.status.rows_submitted
    assert_right(world, rows)
