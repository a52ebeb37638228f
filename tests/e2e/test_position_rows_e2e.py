"""BRIDGE_POSITION_ROWS=true end to end (SOCKET): one ``position_greeks`` row per leg per
tick, stamped like the tick's PORTFOLIO row, summing to it; through an outage too."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT
from ibkr_bridge.testing import TestDatabase, wait_until
from tests.sim.portal.test_portal_sim import START as PORTAL_START

from .test_portal_e2e import World as PortalWorld
from .test_portal_e2e import make_portal_world
from .test_socket_e2e import NY, World, make_world

START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
GREEKS = ("delta", "gamma", "vega", "theta")


@pytest.fixture
async def legs_world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(db, tmp_path, START, BRIDGE_POSITION_ROWS="true"):
        yield w


async def positions(w: World) -> list[Any]:
    await w.bridge.sink.flush()
    return await w.db.fetch("SELECT * FROM position_greeks ORDER BY timestamp, conid")


def assert_legs_sum_to_nets(nets: list[Any], legs: list[Any], legs_per_tick: int) -> None:
    by_tick: dict[datetime, list[Any]] = defaultdict(list)
    for leg in legs:
        by_tick[leg["timestamp"]].append(leg)
    assert sorted(by_tick) == [r["timestamp"] for r in nets]
    for net in nets:
        tick = by_tick[net["timestamp"]]
        assert len(tick) == legs_per_tick
        assert len({leg["conid"] for leg in tick}) == legs_per_tick
        for name in GREEKS:
            total = sum(leg[name] for leg in tick)
            assert total == pytest.approx(net[name], rel=1e-9, abs=1e-9), name


async def test_each_tick_writes_its_legs_and_they_sum_to_the_portfolio_row(
    legs_world: World,
) -> None:
    w = legs_world
    await w.live_with_data()
    await w.ticks(3)
    nets = await w.rows()
    legs = await positions(w)
    held = len(w.sim.portfolio.positions("DU1234567"))
    assert len(nets) == 3
    assert_legs_sum_to_nets(nets, legs, held)
    assert {leg["account"] for leg in legs} == {"DU1234567"}
    options = [leg for leg in legs if leg["sec_type"] == "OPT"]
    assert options
    assert all(leg["greeks_source"] == "ib" for leg in options)
    assert all(leg["option_right"] in ("C", "P") and leg["strike"] > 0 for leg in options)
    assert w.bridge._driver._writer.positions_submitted == len(legs)


async def test_an_outage_loses_and_doubles_no_leg(legs_world: World) -> None:
    w = legs_world
    await w.live_with_data()
    await w.ticks(2)
    w.pg.down()
    await w.ticks(3)
    w.pg.up()
    await w.clock.advance(60.0)
    await wait_until(lambda: w.bridge.status.breaker == "CLOSED", timeout=15)
    nets = await w.rows()
    legs = await positions(w)
    # The simulator's Greeks do not refresh here, so rows stop once they are stale (15 s):
    # what was submitted, before and during the outage, is what is stored.
    assert len(nets) == w.bridge.status.rows_submitted >= 3
    assert len({leg["bridge_key"] for leg in legs}) == len(legs)
    assert_legs_sum_to_nets(nets, legs, len(w.sim.portfolio.positions("DU1234567")))


@pytest.fixture
async def portal_world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[PortalWorld]:
    book = single_underlying_portfolio(as_of=PORTAL_START)
    async for w in make_portal_world(db, tmp_path, book, BRIDGE_POSITION_ROWS="true"):
        yield w


async def test_portal_legs_carry_their_terms_and_sum_to_the_portfolio_row(
    portal_world: PortalWorld,
) -> None:
    w = portal_world
    await w.run(30.0)
    nets = await w.rows()
    await w.bridge.sink.flush()
    legs = await w.db.fetch("SELECT * FROM position_greeks ORDER BY timestamp, conid")
    assert len(nets) >= 5
    assert_legs_sum_to_nets(nets, legs, len(w.sim.portfolio.positions(DEFAULT_ACCOUNT)))
    options = [leg for leg in legs if leg["sec_type"] == "OPT"]
    assert options
    for leg in options:
        assert leg["option_right"] in ("C", "P")
        assert leg["strike"] > 0
        assert leg["expiry"] is not None
        assert len(leg["expiry"]) == 8
        assert leg["implied_vol"] == pytest.approx(0.18, abs=0.001)  # the book's, per one
