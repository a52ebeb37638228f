"""BRIDGE_GREEKS_FALLBACK=model end to end, SOCKET: futures options with no undPrice either.

Under ``sentinel_greeks("minus2")`` IB's tick for an ES option has every Greek -2 and
neither an implied volatility nor its underlying future's price (undPrice -1), as outside
market hours. The bridge then streams the future IB names in the option's contract details
and prices the option by Black-76 at that future's price, at the volatility implied from
the option's own mid. Everything here is recomputed without the bridge's code:

* the future's price is the one the simulator served on the future's stream (its last
  trade, inside the bid/ask, which is IB's market price);
* the volatility is solved by bisection on the simulator's own Black-76 (Black-Scholes for
  the SPY options) from the served mid, to adjacent doubles;
* the Greeks are the simulator's at that volatility (16:00 New York expiry, calendar
  years, BRIDGE_RISK_FREE_RATE), scaled by quantity and multiplier (50 for ES).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.sim import TwsSimulator, default_portfolio
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
)
from ibkr_bridge.testing import TestDatabase

from .test_model_mid_e2e import close, from_mid, only
from .test_socket_e2e import NY, World, assert_clean, make_world

GREEKS = ("delta", "gamma", "vega", "theta")
RATE = 0.04
SOCKET_START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
ES_CALL, ES_PUT = 800000201, 800000202


@pytest.fixture
async def socket_world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    env = {
        "BRIDGE_GREEKS_FALLBACK": "model",
        "BRIDGE_RISK_FREE_RATE": repr(RATE),
        "BRIDGE_POSITION_ROWS": "true",
    }
    async for w in make_world(db, tmp_path, SOCKET_START, default_portfolio, **env):
        assert w.sim.portfolio.rate == RATE
        yield w


async def test_socket_fop_without_und_price_is_priced_off_its_future(
    socket_world: World,
) -> None:
    w = socket_world
    sim: TwsSimulator = w.sim
    await w.live_with_data()
    await w.ticks(1)
    await sim.sentinel_greeks("minus2")  # Greeks -2, implied vol and undPrice -1
    since = w.clock.now()
    await w.bridge._feed.resubscribe()
    await w.ticks(2)
    rows = [r for r in await w.rows() if r["timestamp"] > since]
    assert len(rows) == 2
    assert_clean(rows)
    positions = sim.portfolio.positions(DEFAULT_ACCOUNT)
    options = {p.instrument.conid: p for p in positions if p.instrument.is_option}
    assert {c for c, p in options.items() if p.instrument.sec_type == "FOP"} == {ES_CALL, ES_PUT}
    spots: dict[int, float] = {}
    for under in {p.instrument.underlying_conid for p in options.values()}:
        assert under is not None
        quote = only([q for q in sim.served_quotes(under) if q.at >= since])
        assert quote.bid <= quote.last <= quote.ask  # so IB's market price is the last
        spots[under] = quote.last
    assert ES_CONID in spots  # the future is not held: streamed for its options alone
    mids = {c: only([q for q in sim.served_quotes(c) if q.at >= since]).mid for c in options}
    await w.bridge.sink.flush()
    for r in rows:
        assert r["contract"] == "PORTFOLIO"
        at = r["timestamp"]
        assert (r["legs"], r["legs_missing"], r["legs_model"]) == (6, 0, 5)
        units = {
            c: from_mid(p, mids[c], spots[p.instrument.underlying_conid or 0], at)
            for c, p in options.items()
        }
        want = dict.fromkeys(GREEKS, 0.0)
        for pos in positions:
            inst = pos.instrument
            if not inst.is_option:
                want["delta"] += pos.quantity
                continue
            for name in GREEKS:
                want[name] += pos.quantity * inst.multiplier * getattr(units[inst.conid], name)
        for name in GREEKS:
            assert close(r[name], want[name]), (name, r[name], want[name])
        legs = await w.db.fetch("SELECT * FROM position_greeks WHERE timestamp = $1", at)
        tick: dict[int, Any] = {leg["conid"]: leg for leg in legs}
        for conid in (ES_CALL, ES_PUT):
            leg, pos, unit = tick[conid], options[conid], units[conid]
            assert (leg["sec_type"], leg["greeks_source"], leg["multiplier"]) == (
                "FOP",
                "model",
                50.0,
            )
            assert leg["underlying_price"] == spots[ES_CONID]  # the future's, served
            assert close(leg["implied_vol"], unit.implied_vol)
            size = pos.quantity * 50.0
            for name in GREEKS:
                assert close(leg[f"unit_{name}"], getattr(unit, name)), name
                assert close(leg[name], size * getattr(unit, name)), name
    # The test can tell: the served mid is tick-rounded, so its volatility is not the
    # book's 16 %, and Black-76 at the book's volatility misses the leg beyond 1e-9.
    for conid in (ES_CALL, ES_PUT):
        assert abs(units[conid].implied_vol / sim.portfolio.volatility(conid) - 1) > 1e-6
