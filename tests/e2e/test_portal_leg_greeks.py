"""Issue 14.3/14.4 in PORTAL mode: the same staleness rule as SOCKET (docs/greeks.md), end to
end through the Client Portal simulator over HTTPS, the Bridge and a real PostgreSQL.

The simulator answers a leg without Greeks the way Client Portal does: the snapshot row is
there (prices, ``_updated``), the Greek fields 7308-7311 are not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.service.health import HealthServer
from ibkr_bridge.sim import PortalSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase, wait_until
from tests.e2e.test_portal_e2e import World
from tests.sim.portal.test_portal_sim import START

CALL_FAR = 800000103


@asynccontextmanager
async def world(
    db: TestDatabase, tmp_path: Path, *, withhold_from_start: bool = False, **env: str
) -> AsyncIterator[tuple[World, HealthServer]]:
    clock = FakeClock(start=START)
    portfolio = single_underlying_portfolio(as_of=START)
    async with TcpProxy(*db.server_address()) as pg, PortalSimulator(portfolio, clock=clock) as sim:
        assert sim.ca_path is not None
        if withhold_from_start:
            sim.sentinel_greeks(mode="missing", conids=[CALL_FAR])
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
            health = HealthServer(bridge, clock=clock)
            await wait_until(lambda: w.state is ConnectionState.LIVE)
            yield w, health


async def events(w: World, name: str) -> list[dict[str, Any]]:
    return [
        {**dict(r), "detail": json.loads(r["detail"])} for r in await w.events(f"event = '{name}'")
    ]


async def test_greeks_that_stop_for_one_leg_stop_rows_after_stale_after(
    db: TestDatabase, tmp_path: Path
) -> None:
    async with world(db, tmp_path) as (w, health):
        await w.run(20.0)
        written = len(await w.rows())
        assert written >= 3
        # Prices and _updated keep coming for the leg; its Greek fields stop.
        w.sim.sentinel_greeks(mode="missing", conids=[CALL_FAR])
        await w.run(10.0)  # past the default limit (three 2 s polls)
        before = len(await w.rows())
        await w.run(30.0)
        assert len(await w.rows()) == before  # no row from Greeks that old, or without them
        assert health.health().stale is True
        (missing,) = await events(w, "legs_missing")
        assert [leg["conid"] for leg in missing["detail"]["legs"]] == [CALL_FAR]
        assert "old (BRIDGE_STALE_AFTER 6 s)" in missing["message"]

        w.sim.clear_faults()
        await w.run(10.0)
        rows = await w.rows()
        assert len(rows) > before
        assert rows[-1]["legs_missing"] == 0
        assert len(await events(w, "legs_recovered")) == 1


@pytest.mark.parametrize("policy", ["skip", "partial"])
async def test_a_leg_that_never_gets_greeks_is_named_after_the_grace(
    db: TestDatabase, tmp_path: Path, policy: str
) -> None:
    async with world(
        db, tmp_path, withhold_from_start=True, BRIDGE_LEG_GRACE="20", BRIDGE_MISSING_LEGS=policy
    ) as (w, health):
        await w.run(15.0)
        assert await w.rows() == []  # inside the grace: waiting, as for any new leg
        assert await events(w, "legs_missing") == []
        await w.run(30.0)
        (missing,) = await events(w, "legs_missing")
        assert [leg["conid"] for leg in missing["detail"]["legs"]] == [CALL_FAR]
        assert "no Greeks" in missing["message"]
        body = health.health().to_json()
        assert str(CALL_FAR) in (body["degraded"] or "")
        rows = await w.rows()
        if policy == "skip":
            assert rows == []
        else:
            assert rows
            assert all((r["legs"], r["legs_missing"]) == (4, 1) for r in rows)
            assert all(r["delta"] is not None for r in rows)
            assert body["status"] == "degraded"
