"""BRIDGE_GREEKS_FALLBACK=model end to end (SOCKET): a leg IB has not computed is priced by
the model, and the row equals an independent recomputation from the simulator's book.

The simulator prices with its own Black-Scholes (``ibkr_bridge.sim.portfolio``, not the
bridge's ``core.pricing``) at the same conventions the docs state for the model (16:00 New
York expiry, calendar years, the book's rate), so the two agree to rounding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from ibkr_bridge.testing import TestDatabase

from .test_socket_e2e import ACCOUNT, NY, World, assert_clean, expected_net, make_world

START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)


@pytest.fixture
async def modelled(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    env = {
        "BRIDGE_GREEKS_FALLBACK": "model",
        "BRIDGE_RISK_FREE_RATE": "0.04",
        "BRIDGE_POSITION_ROWS": "true",
    }
    async for w in make_world(db, tmp_path, START, **env):
        assert w.sim.portfolio.rate == 0.04  # the book the rows are checked against
        yield w


async def test_vega_and_theta_not_computed_are_modelled_not_missing(modelled: World) -> None:
    w = modelled
    await w.live_with_data()
    await w.ticks(1)
    await w.sim.sentinel_greeks("vega_theta")
    await w.bridge._feed.resubscribe()
    await w.ticks(2)
    rows = await w.rows()
    assert_clean(rows)
    last = rows[-1]
    # The model prices at the tick's own instant (IB's Greeks were the subscription's).
    want = expected_net(w.sim.portfolio, last["timestamp"])
    for name in ("delta", "gamma", "vega", "theta"):
        assert last[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
    assert last["legs_missing"] == 0
    # Not the skip policy's answer: there vega and theta would be NULL (see test_socket_e2e).
    assert last["vega"] is not None
    assert last["theta"] is not None
    # Every option leg got model Greeks, and the row counts them; before the fault, none.
    options = sum(p.instrument.is_option for p in w.sim.portfolio.positions(ACCOUNT))
    assert options == 3
    assert (rows[0]["legs_model"], last["legs_model"]) == (0, options)
    await w.bridge.sink.flush()
    legs = await w.db.fetch(
        "SELECT greeks_source, count(*) AS n FROM position_greeks WHERE timestamp = $1"
        " AND sec_type = 'OPT' GROUP BY 1",
        last["timestamp"],
    )
    assert {r["greeks_source"]: r["n"] for r in legs} == {"model": last["legs_model"]}
