"""Several accounts end to end (PORTAL): no IB_ACCOUNT and two accounts give one PORTFOLIO row
per account per tick plus the all-accounts row, and position rows summing to each account's."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim import PortalSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT, SPY_CONID, Portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase, expected_net_greeks, wait_until
from tests.sim.portal.test_portal_sim import START

from .test_portal_e2e import World

OTHER = "DU7654321"
GREEKS = ("delta", "gamma", "vega", "theta")


def two_accounts() -> Portfolio:
    """The demo book in one account; half of every other leg, and a short, in a second."""
    book = single_underlying_portfolio(as_of=START)
    held = book.positions()
    extra = [attrs.evolve(p, account=OTHER, quantity=-p.quantity / 2) for p in held[::2]]
    return Portfolio(
        [DEFAULT_ACCOUNT, OTHER],
        positions=[*held, *extra],
        spots={SPY_CONID: 600.0},
        as_of=START,
    )


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(start=START)
    async with (
        TcpProxy(*db.server_address()) as pg,
        PortalSimulator(two_accounts(), clock=clock) as sim,
    ):
        assert sim.ca_path is not None
        settings = load_settings(
            {
                "IB_API_MODE": "PORTAL",
                "IBKR_GATEWAY_URL": sim.base_url,
                "IBKR_GATEWAY_CA": str(sim.ca_path),
                "DATABASE_URL": db.proxied_dsn(pg),
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_POSITION_ROWS": "true",
            },
            use_dotenv=False,
        )
        async with Bridge(settings, clock=clock) as bridge:
            w = World(clock, sim, db, pg, bridge)
            # Two positions reads spend the connect's request burst: the pre-flight waits for
            # the rate limiter on the (fake) clock, so the clock is moved until LIVE.
            for _ in range(40):
                if w.state is ConnectionState.LIVE:
                    break
                await w.run(0.5)
            await wait_until(lambda: w.state is ConnectionState.LIVE)
            yield w


def matches(portfolio: Portfolio, account: str, row: Any) -> bool:
    """The row is the account's net at one of the instants its snapshot may be from."""
    for j in range(0, 7):
        want = expected_net_greeks(portfolio, account, row["timestamp"] - timedelta(seconds=j))
        if all(row[n] == pytest.approx(v, rel=1e-9, abs=1e-12) for n, v in want.items()):
            return True
    return False


async def test_two_accounts_each_tick_has_each_account_and_all(world: World) -> None:
    w = world
    await w.run(30.0)
    rows = [r for r in await w.rows() if r["contract"] == "PORTFOLIO"]
    await w.bridge.sink.flush()
    legs = await w.db.fetch("SELECT * FROM position_greeks ORDER BY timestamp, conid")
    ticks: dict[datetime, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        assert r["account"] not in ticks[r["timestamp"]]
        ticks[r["timestamp"]][r["account"]] = r
    assert len(ticks) >= 5
    by_leg: dict[tuple[datetime, str], list[Any]] = defaultdict(list)
    for leg in legs:
        by_leg[(leg["timestamp"], leg["account"])].append(leg)
    portfolio = w.sim.portfolio
    for at, nets in ticks.items():
        assert set(nets) == {DEFAULT_ACCOUNT, OTHER, ""}
        for account in (DEFAULT_ACCOUNT, OTHER):
            assert matches(portfolio, account, nets[account]), (account, nets[account])
            mine = by_leg[(at, account)]
            assert len(mine) == len(portfolio.positions(account))
            for name in GREEKS:
                total = sum(leg[name] for leg in mine)
                assert total == pytest.approx(nets[account][name], rel=1e-9, abs=1e-9)
        for name in GREEKS:
            both = nets[DEFAULT_ACCOUNT][name] + nets[OTHER][name]
            assert nets[""][name] == pytest.approx(both, rel=1e-9, abs=1e-9), name
