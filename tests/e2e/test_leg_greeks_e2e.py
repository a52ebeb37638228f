"""Issue 14.3/14.4 end to end: how current every option leg's Greeks are, through the real
path (ib_async, the IB Gateway simulator, the Bridge, a real PostgreSQL, a FakeClock).

The rule (docs/greeks.md, "Staleness and missing legs"): an option leg's Greeks count only
while current (received, no older than BRIDGE_STALE_AFTER, no market-data farm reported
broken); a leg without current Greeks past BRIDGE_LEG_GRACE is named in one event per
episode, /healthz says degraded, and BRIDGE_MISSING_LEGS decides the row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.service.health import HealthServer
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase, expected_net_greeks, wait_until

NY = ZoneInfo("America/New_York")
ACCOUNT = "DU1234567"
START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
CALL_FAR = 800000103  # one long call of single_underlying_portfolio
STATIC = 10_000_000.0  # a simulator tick interval that never comes: Greeks sent once


@attrs.define
class World:
    clock: FakeClock
    sim: TwsSimulator
    db: TestDatabase
    bridge: Bridge
    health: HealthServer

    async def rows(self) -> list[Any]:
        await self.bridge.sink.flush()
        return await self.db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")

    async def events(self, name: str) -> list[dict[str, Any]]:
        await self.bridge.sink.flush()
        found = await self.db.fetch("SELECT * FROM api_logs WHERE event = $1 ORDER BY id", name)
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in found]

    async def ticks(self, n: int) -> None:
        for _ in range(n):
            await self.clock.advance(5.0)

    async def settle(self) -> None:
        """Everything the simulator sent so far has been read (one in-order round trip)."""
        await asyncio.wait_for(self.bridge._feed.probe(), 10.0)

    async def live(self) -> None:
        await wait_until(lambda: self.bridge.connection_state is ConnectionState.LIVE)
        await self.settle()


@asynccontextmanager
async def world(
    db: TestDatabase,
    tmp_path: Path,
    *,
    tick_interval: float = STATIC,
    before: Callable[[TwsSimulator], Any] | None = None,
    **env: str,
) -> AsyncIterator[World]:
    clock = FakeClock(start=START.astimezone(UTC))
    portfolio = single_underlying_portfolio(as_of=clock.now())
    async with (
        TcpProxy(*db.server_address()) as pg,
        TwsSimulator(portfolio, clock=clock, tick_interval=tick_interval) as sim,
    ):
        if before is not None:
            await before(sim)
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
        health = HealthServer(bridge, clock=clock)
        async with bridge:
            yield World(clock, sim, db, bridge, health)


async def withhold_call(sim: TwsSimulator) -> None:
    await sim.withhold_greeks(CALL_FAR)


# -- 14.3: Greeks that stop arriving, without IB's 1100 ----------------------------------


async def test_greeks_that_stop_arriving_stop_rows_after_stale_after(
    db: TestDatabase, tmp_path: Path
) -> None:
    # The repro: the Gateway sends the Greeks once and then nothing, no 1100.
    async with world(db, tmp_path, BRIDGE_STALE_AFTER="12") as w:
        await w.live()
        await w.ticks(6)  # 30 s
        rows = await w.rows()
        # Greeks 5 and 10 s old are current; 15 s and older are not (limit 12 s).
        assert len(rows) == 2
        report = w.health.health()
        assert report.stale is True
        assert report.degraded is not None
        assert "without current Greeks" in report.degraded
        assert all("old (BRIDGE_STALE_AFTER 12 s)" in leg for leg in report.legs_missing)
        (missing,) = await w.events("legs_missing")
        assert {leg["conid"] for leg in missing["detail"]["legs"]} == {
            800000101,
            800000102,
            CALL_FAR,
        }
        assert "old (BRIDGE_STALE_AFTER 12 s)" in missing["message"]


async def test_one_legs_greeks_stopping_is_named_once_and_rows_resume(
    db: TestDatabase, tmp_path: Path
) -> None:
    # A moving market (a tick a second) where one option's model stream goes silent.
    async with world(db, tmp_path, tick_interval=1.0, BRIDGE_STALE_AFTER="12") as w:
        await w.live()
        await w.ticks(3)
        assert len(await w.rows()) == 3
        assert not w.health.health().stale
        await w.sim.withhold_greeks(CALL_FAR)
        await w.ticks(4)  # 20 s: past the 12 s limit
        written = len(await w.rows())
        await w.ticks(6)  # 30 s more, Greeks still withheld
        assert len(await w.rows()) == written  # nothing written from an old delta
        report = w.health.health()
        assert report.stale is True
        assert [str(CALL_FAR) in leg for leg in report.legs_missing] == [True]
        (missing,) = await w.events("legs_missing")  # one event for the whole episode
        assert [leg["conid"] for leg in missing["detail"]["legs"]] == [CALL_FAR]

        w.sim.resume_greeks(CALL_FAR)
        await w.settle()
        await w.ticks(2)
        rows = await w.rows()
        assert len(rows) == written + 2
        assert rows[-1]["legs_missing"] == 0
        (recovered,) = await w.events("legs_recovered")
        assert [leg["conid"] for leg in recovered["detail"]["recovered"]] == [CALL_FAR]
        assert w.health.health().stale is False
        assert len(await w.events("legs_missing")) == 1


async def test_a_broken_market_data_farm_stops_rows_until_it_is_ok(
    db: TestDatabase, tmp_path: Path
) -> None:
    async with world(db, tmp_path, BRIDGE_STALE_AFTER="86400") as w:
        await w.live()
        await w.ticks(2)
        assert len(await w.rows()) == 2
        # Historical and security-definition farms carry no Greeks: rows go on.
        await w.sim.farm_notice(2105)
        await w.sim.farm_notice(2157)
        await w.settle()
        await w.ticks(1)
        assert len(await w.rows()) == 3
        assert w.health.health().stale is False

        await w.sim.farm_notice(2103)  # market data farm broken, no 1100
        await w.settle()
        await w.ticks(3)
        assert len(await w.rows()) == 3
        assert w.health.health().stale is True
        (missing,) = await w.events("legs_missing")
        assert "market data farm reported broken (usfarm)" in missing["message"]

        await w.sim.farm_notice(2104)  # OK again
        await w.settle()
        await w.ticks(1)
        assert len(await w.rows()) == 4
        assert len(await w.events("legs_recovered")) == 1
        assert w.health.health().stale is False


# -- 14.4: one option leg that never gets Greeks ------------------------------------------


async def test_a_leg_that_never_gets_greeks_is_named_after_the_grace_skip_policy(
    db: TestDatabase, tmp_path: Path
) -> None:
    async with world(
        db, tmp_path, before=withhold_call, BRIDGE_STALE_AFTER="86400", BRIDGE_LEG_GRACE="20"
    ) as w:
        await w.live()
        await w.ticks(3)  # 15 s: inside the grace, an ordinary wait
        assert await w.events("legs_missing") == []
        assert w.health.health().to_json()["status"] == "ok"
        await w.ticks(3)  # 30 s: past the grace
        assert await w.rows() == []  # default skip: never a net that omits a leg
        (missing,) = await w.events("legs_missing")
        assert missing["status"] == "warning"
        assert [leg["conid"] for leg in missing["detail"]["legs"]] == [CALL_FAR]
        assert missing["detail"]["policy"] == "skip"
        assert "no Greeks" in missing["message"]
        body = w.health.health().to_json()
        assert body["status"] == "degraded"
        assert str(CALL_FAR) in body["degraded"]
        assert "BRIDGE_MISSING_LEGS=skip" in body["degraded"]
        await w.ticks(10)  # well past the first-row grace: unhealthy, and says why
        body = w.health.health().to_json()
        assert body["status"] == "unhealthy"
        assert str(CALL_FAR) in body["reason"]
        assert len(await w.events("legs_missing")) == 1  # one event per episode
        assert len(await w.events("skipped")) == 1  # the first wait only, not per tick

        w.sim.resume_greeks(CALL_FAR)
        await w.settle()
        await w.ticks(1)
        rows = await w.rows()
        assert len(rows) == 1
        assert (rows[0]["legs"], rows[0]["legs_missing"]) == (4, 0)
        assert len(await w.events("legs_recovered")) == 1


async def test_partial_policy_writes_the_other_legs_with_legs_missing(
    db: TestDatabase, tmp_path: Path
) -> None:
    async with world(
        db,
        tmp_path,
        before=withhold_call,
        BRIDGE_STALE_AFTER="86400",
        BRIDGE_LEG_GRACE="20",
        BRIDGE_MISSING_LEGS="partial",
    ) as w:
        await w.live()
        await w.ticks(4)  # ticks at 5..20 s wait; the one at 20 s is still inside
        assert await w.rows() == []
        await w.ticks(2)
        rows = await w.rows()
        assert len(rows) == 2
        without = single_underlying_portfolio(as_of=START.astimezone(UTC))
        without.remove_position(ACCOUNT, CALL_FAR)
        want = expected_net_greeks(without, ACCOUNT, START.astimezone(UTC))
        for r in rows:
            assert (r["legs"], r["legs_missing"]) == (4, 1)
            for name, value in want.items():
                assert r[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
        (missing,) = await w.events("legs_missing")
        assert missing["detail"]["policy"] == "partial"
        body = w.health.health().to_json()
        assert body["status"] == "degraded"
        assert "BRIDGE_MISSING_LEGS=partial" in body["degraded"]
