"""BRIDGE_GREEKS_FALLBACK=model end to end for futures options (FOP), SOCKET and PORTAL.

A FOP leg whose Greeks IB has not computed is priced by the bridge's model (Black-76 on
the future's price); each ``position_greeks`` row of it and the PORTFOLIO row equal the
simulator's own :func:`~ibkr_bridge.sim.portfolio.black76` (not the bridge's
``core.pricing``) to 1e-9 relative, scaled by the contract's multiplier (50 for ES). Prices
stand still (no random walk), so the future's price and volatility are the book's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.sim import default_portfolio
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
    OptionGreeks,
    Portfolio,
    Position,
    black76,
    black_scholes,
    years_between,
)
from ibkr_bridge.testing import TestDatabase
from tests.sim.portal.test_portal_sim import START as PORTAL_START

from .test_portal_e2e import World as PortalWorld
from .test_portal_model_fallback_e2e import model_fallback_world
from .test_socket_e2e import NY, World, assert_clean, make_world

GREEKS = ("delta", "gamma", "vega", "theta")
SOCKET_START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
ES_CALL, ES_PUT = 800000201, 800000202
FOPS = (ES_CALL, ES_PUT)
REL = 1e-9


def unit_greeks(portfolio: Portfolio, pos: Position, at: datetime) -> OptionGreeks:
    """The simulator's own model for one option leg at ``at``: Black-76 for FOP."""
    inst = pos.instrument
    expires = inst.expires_at()
    assert inst.strike is not None
    assert inst.right is not None
    assert expires is not None
    assert inst.underlying_conid is not None
    model = black76 if inst.sec_type == "FOP" else black_scholes
    return model(
        portfolio.spot(inst.underlying_conid),
        inst.strike,
        years_between(at, expires),
        portfolio.volatility(inst.conid),
        portfolio.rate,
        inst.right,
    )


def expected_net(portfolio: Portfolio, model_at: datetime, ib_at: datetime) -> dict[str, float]:
    """The PORTFOLIO row: FOP legs (the model's) at ``model_at``, the others at ``ib_at``."""
    net = dict.fromkeys(GREEKS, 0.0)
    for pos in portfolio.positions(DEFAULT_ACCOUNT):
        inst = pos.instrument
        if not inst.is_option:
            net["delta"] += pos.quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
            continue
        g = unit_greeks(portfolio, pos, model_at if inst.conid in FOPS else ib_at)
        for name in GREEKS:
            net[name] += pos.quantity * inst.multiplier * getattr(g, name)
    return net


def matches(row: Any, want: dict[str, float]) -> bool:
    return all(row[n] == pytest.approx(v, rel=REL, abs=1e-12) for n, v in want.items())


def assert_fop_legs_are_black76(portfolio: Portfolio, tick: dict[int, Any], at: datetime) -> None:
    positions = {p.instrument.conid: p for p in portfolio.positions(DEFAULT_ACCOUNT)}
    for conid in FOPS:
        leg, pos = tick[conid], positions[conid]
        assert (leg["sec_type"], leg["greeks_source"]) == ("FOP", "model")
        assert leg["multiplier"] == 50.0
        assert leg["underlying_price"] == pytest.approx(6000.0, rel=1e-12)  # the future's
        assert leg["implied_vol"] == pytest.approx(0.16, rel=1e-12)  # IB's, kept
        want = unit_greeks(portfolio, pos, at)
        size = pos.quantity * 50.0
        for name in GREEKS:
            assert leg[f"unit_{name}"] == pytest.approx(getattr(want, name), rel=REL), name
            assert leg[name] == pytest.approx(size * getattr(want, name), rel=REL), name


async def legs_by_tick(db: TestDatabase) -> dict[datetime, dict[int, Any]]:
    by_tick: dict[datetime, dict[int, Any]] = defaultdict(dict)
    for leg in await db.fetch("SELECT * FROM position_greeks ORDER BY timestamp, conid"):
        by_tick[leg["timestamp"]][leg["conid"]] = leg
    return by_tick


# -- SOCKET ----------------------------------------------------------------------------------


@pytest.fixture
async def socket_world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    env = {
        "BRIDGE_GREEKS_FALLBACK": "model",
        "BRIDGE_RISK_FREE_RATE": "0.04",
        "BRIDGE_POSITION_ROWS": "true",
    }
    async for w in make_world(db, tmp_path, SOCKET_START, default_portfolio, **env):
        assert w.sim.portfolio.rate == 0.04
        yield w


async def test_socket_fop_leg_without_greeks_gets_black76(socket_world: World) -> None:
    w = socket_world
    await w.live_with_data()
    await w.ticks(1)
    # vega and theta -2 on every option (implied vol and prices real): IB "not computed"
    await w.sim.sentinel_greeks("vega_theta")
    await w.bridge._feed.resubscribe()
    await w.ticks(2)
    rows = [r for r in await w.rows() if r["contract"] == "PORTFOLIO"]
    assert_clean(rows)
    last = rows[-1]
    portfolio = w.sim.portfolio
    # Every option leg is modelled at the tick's own instant once IB stops computing.
    want = expected_net(portfolio, last["timestamp"], last["timestamp"])
    for name in GREEKS:
        assert last[name] == pytest.approx(want[name], rel=REL, abs=1e-12), name
    assert (last["legs_missing"], last["legs_model"]) == (0, 5)
    tick = (await legs_by_tick(w.db))[last["timestamp"]]
    assert_fop_legs_are_black76(portfolio, tick, last["timestamp"])
    for name in GREEKS:
        assert sum(leg[name] for leg in tick.values()) == pytest.approx(
            last[name], rel=REL, abs=1e-9
        )


# -- PORTAL ----------------------------------------------------------------------------------


@pytest.fixture(params=["missing", "empty"])
async def portal_world(
    request: pytest.FixtureRequest, db: TestDatabase, tmp_path: Path
) -> AsyncIterator[PortalWorld]:
    book = default_portfolio(as_of=PORTAL_START)
    # Only the ES options lack Greeks (fields 7308-7311), from the first snapshot on.
    async for w in model_fallback_world(db, tmp_path, book, request.param, FOPS):
        yield w


async def test_portal_fop_legs_without_greeks_get_black76(portal_world: PortalWorld) -> None:
    w = portal_world
    await w.run(45.0)
    rows = [r for r in await w.rows() if r["contract"] == "PORTFOLIO"]
    assert len(rows) >= 5
    portfolio = w.sim.portfolio
    assert portfolio.spot(ES_CONID) == 6000.0
    await w.bridge.sink.flush()
    by_tick = await legs_by_tick(w.db)
    for r in rows:
        assert (r["legs"], r["legs_missing"], r["legs_model"]) == (6, 0, len(FOPS))
        # IB's SPY Greeks are from a snapshot up to stale_after (6 s) old on the 2 s grid;
        # the model's at the row's instant. One instant fits them all.
        at = r["timestamp"]
        candidates = [expected_net(portfolio, at, at - timedelta(seconds=j)) for j in range(7)]
        assert any(matches(r, want) for want in candidates), (dict(r), candidates[0])
        tick = by_tick[at]
        assert {c: leg["greeks_source"] for c, leg in tick.items() if c in FOPS} == {
            ES_CALL: "model",
            ES_PUT: "model",
        }
        assert_fop_legs_are_black76(portfolio, tick, at)
        for name in GREEKS:
            total = sum(leg[name] for leg in tick.values())
            assert total == pytest.approx(r[name], rel=REL, abs=1e-9), name
