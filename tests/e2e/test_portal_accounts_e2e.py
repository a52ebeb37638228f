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

from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT, SPY_CONID, Portfolio
from ibkr_bridge.testing import TestDatabase, expected_net_greeks
from tests.sim.portal.test_portal_sim import START

from .test_portal_e2e import World, make_portal_world

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
    book = two_accounts()
    async for w in make_portal_world(
        db, tmp_path, book, drive_until_live=True, BRIDGE_POSITION_ROWS="true"
    ):
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
