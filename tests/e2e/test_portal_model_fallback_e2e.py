"""BRIDGE_GREEKS_FALLBACK=model end to end in PORTAL mode: option legs Client Portal serves
without Greeks are priced by the model, and what is stored equals an independent
recomputation.

The simulator serves two of the three option legs the way Client Portal does outside
market hours: the snapshot row is there (prices, ``_updated``, field 7633 "Implied Vol. %")
and the Greek fields 7308-7311 are absent or empty; Portal strings carry no -2 sentinel.
The expected figures come from the simulator's own Black-Scholes
(``ibkr_bridge.sim.portfolio.black_scholes``, not the bridge's ``core.pricing``) at the
conventions the docs state for the model (16:00 New York expiry, calendar years, the
book's rate). Prices stand still here (no random walk), so the underlying price the bridge
reads ("600.00") and the volatility it reads ("18.0") are the book's exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Collection
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.sim import PortalSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    OptionGreeks,
    Portfolio,
    Position,
    black_scholes,
    years_between,
)
from ibkr_bridge.testing import TestDatabase
from tests.sim.portal.test_portal_sim import START

from .test_portal_e2e import World, make_portal_world

GREEKS = ("delta", "gamma", "vega", "theta")
CALL_NEAR, PUT_NEAR, CALL_FAR = 800000101, 800000102, 800000103
WITHOUT_GREEKS = (CALL_NEAR, CALL_FAR)  # the put keeps IB's Greeks


def unit_greeks(portfolio: Portfolio, pos: Position, at: datetime) -> OptionGreeks:
    """The simulator's own Black-Scholes for one option position at ``at``."""
    inst = pos.instrument
    expires = inst.expires_at()
    assert inst.strike is not None
    assert inst.right is not None
    assert expires is not None
    assert inst.underlying_conid is not None
    return black_scholes(
        portfolio.spot(inst.underlying_conid),
        inst.strike,
        years_between(at, expires),
        portfolio.volatility(inst.conid),
        portfolio.rate,
        inst.right,
    )


def expected(portfolio: Portfolio, row_at: datetime, ib_at: datetime) -> dict[str, float]:
    """The net: model legs priced at the row's instant, IB's leg at its snapshot's."""
    net = dict.fromkeys(GREEKS, 0.0)
    for pos in portfolio.positions(DEFAULT_ACCOUNT):
        inst = pos.instrument
        if not inst.is_option:
            net["delta"] += pos.quantity
            continue
        g = unit_greeks(portfolio, pos, row_at if inst.conid in WITHOUT_GREEKS else ib_at)
        for name in GREEKS:
            net[name] += pos.quantity * inst.multiplier * getattr(g, name)
    return net


def matches(row: Any, want: dict[str, float]) -> bool:
    return all(row[n] == pytest.approx(v, rel=1e-9, abs=1e-12) for n, v in want.items())


@pytest.fixture(params=["missing", "empty"])
async def modelled(
    request: pytest.FixtureRequest, db: TestDatabase, tmp_path: Path
) -> AsyncIterator[World]:
    book = single_underlying_portfolio(as_of=START)
    async for w in model_fallback_world(db, tmp_path, book, request.param, WITHOUT_GREEKS):
        yield w


async def model_fallback_world(
    db: TestDatabase, tmp_path: Path, book: Portfolio, mode: str, conids: Collection[int]
) -> AsyncIterator[World]:
    """A PORTAL world whose ``conids`` are served without Greeks (``mode``: their fields
    missing or empty) from the first snapshot on, as a gateway outside market hours, and a
    bridge with the model fallback and per-position rows on."""

    def without_greeks(sim: PortalSimulator) -> None:
        sim.sentinel_greeks(mode=mode, conids=conids)

    async for w in make_portal_world(
        db,
        tmp_path,
        book,
        prepare=without_greeks,
        BRIDGE_GREEKS_FALLBACK="model",
        BRIDGE_RISK_FREE_RATE=repr(book.rate),
        BRIDGE_LEG_GRACE="8",
        BRIDGE_POSITION_ROWS="true",
    ):
        yield w


async def test_legs_without_greeks_are_modelled_and_counted(modelled: World) -> None:
    w = modelled
    await w.run(45.0)
    rows = await w.rows()
    assert len(rows) >= 5  # the legs waited out their grace, then the model priced them
    portfolio = w.sim.portfolio
    assert portfolio.spot(756733) == 600.0  # prices stood still: the bridge read "600.00"
    for r in rows:
        assert (r["legs"], r["legs_missing"], r["legs_model"]) == (4, 0, len(WITHOUT_GREEKS))
        assert r["underlying_price"] == 600.0
        # IB's put Greeks are from a snapshot at most stale_after (6 s) old, on the 2 s
        # poll grid; the model's are at the row's own instant. One instant fits them all.
        candidates = [
            expected(portfolio, r["timestamp"], r["timestamp"] - timedelta(seconds=j))
            for j in range(7)
        ]
        assert any(matches(r, want) for want in candidates), (dict(r), candidates[0])

    await w.bridge.sink.flush()
    legs = await w.db.fetch("SELECT * FROM position_greeks ORDER BY timestamp, conid")
    by_tick: dict[datetime, list[Any]] = defaultdict(list)
    for leg in legs:
        by_tick[leg["timestamp"]].append(leg)
    assert sorted(by_tick) == [r["timestamp"] for r in rows]
    positions = {p.instrument.conid: p for p in portfolio.positions(DEFAULT_ACCOUNT)}
    for r in rows:
        tick = {leg["conid"]: leg for leg in by_tick[r["timestamp"]]}
        sources = {conid: leg["greeks_source"] for conid, leg in tick.items()}
        assert {c: s for c, s in sources.items() if c in (CALL_NEAR, PUT_NEAR, CALL_FAR)} == {
            CALL_NEAR: "model",
            PUT_NEAR: "ib",
            CALL_FAR: "model",
        }
        assert sum(s == "model" for s in sources.values()) == r["legs_model"]
        for conid in WITHOUT_GREEKS:
            leg, pos = tick[conid], positions[conid]
            want = unit_greeks(portfolio, pos, r["timestamp"])
            assert leg["implied_vol"] == pytest.approx(0.18, rel=1e-12)  # field 7633's
            for name in GREEKS:
                assert leg[f"unit_{name}"] == pytest.approx(getattr(want, name), rel=1e-9)
                size = pos.quantity * pos.instrument.multiplier
                assert leg[name] == pytest.approx(size * getattr(want, name), rel=1e-9)
        for name in GREEKS:
            total = sum(leg[name] for leg in tick.values())
            assert total == pytest.approx(r[name], rel=1e-9, abs=1e-9), name
