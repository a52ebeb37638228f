"""BRIDGE_GREEKS_FALLBACK=model end to end, when IB has neither Greeks nor an implied vol.

Outside market hours IB Gateway and Client Portal may leave an option's implied
volatility empty too: the bridge then implies one from the option's bid/ask mid and prices
from it. Each test here recomputes what is stored without the bridge's code:

* the mid is the one the simulator served (``served_quotes``: the tick-rounded prices on
  the wire, not the model's price, so the volatility differs from the book's);
* the volatility is solved here by bisection on the simulator's own Black-Scholes price
  (``ibkr_bridge.sim.portfolio.black_scholes``, not ``ibkr_bridge.core.pricing``), run
  until no double lies between the bracket's ends (the tightest tolerance there is);
* the Greeks are the simulator's Black-Scholes at that volatility, at the conventions the
  docs state for the model (16:00 New York expiry, calendar years, BRIDGE_RISK_FREE_RATE).

SOCKET serves ``sentinel_greeks("minus2")`` (all Greeks -2, implied vol -1, bid/ask/last
still streaming); PORTAL ``sentinel_greeks(implied_vol=True)`` (fields 7308-7311 and 7633
absent or empty, bid 84 / ask 86 / last 31 still served).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.core.greeks import UNPRICED
from ibkr_bridge.sim import PortalSimulator, Quote, TwsSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
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
from .test_portal_e2e import make_portal_world
from .test_socket_e2e import NY, World, assert_clean, make_world

GREEKS = ("delta", "gamma", "vega", "theta")
RATE = 0.04
SOCKET_START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
CALL_NEAR, PUT_NEAR, CALL_FAR = 800000101, 800000102, 800000103
REL = 1e-9


Model = Callable[[float, float, float, float, float, str], OptionGreeks]


def solve_vol(
    model: Model, price: float, spot: float, strike: float, t: float, right: str
) -> float:
    """The volatility at which ``model`` gives ``price``: bisection to adjacent doubles."""

    def error(vol: float) -> float:
        return model(spot, strike, t, vol, RATE, right).option_price - price

    lo, hi = 1e-6, 10.0
    assert error(lo) < 0 < error(hi), "no volatility gives this price"
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if error(mid) > 0:
            hi = mid
        else:
            lo = mid
    return min((lo, hi), key=lambda v: abs(error(v)))


def from_mid(pos: Position, mid: float, spot: float, at: datetime) -> OptionGreeks:
    """The simulator's model of ``pos`` at the volatility implied (here) from ``mid``."""
    inst = pos.instrument
    expires = inst.expires_at()
    assert inst.strike is not None
    assert inst.right is not None
    assert expires is not None
    model: Model = black76 if inst.sec_type == "FOP" else black_scholes
    t = years_between(at, expires)
    vol = solve_vol(model, mid, spot, inst.strike, t, inst.right)
    return model(spot, inst.strike, t, vol, RATE, inst.right)


def at_book_vol(portfolio: Portfolio, pos: Position, at: datetime) -> OptionGreeks:
    """The simulator's Greeks at the book's own volatility (what IB would have sent)."""
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


def close(got: float | None, want: float) -> bool:
    return got is not None and got == pytest.approx(want, rel=REL, abs=1e-12)


def only(quotes: Sequence[Quote]) -> Quote:
    """The one (bid, ask, last) served, however many times it was sent."""
    assert quotes, "nothing served"
    assert len({(q.bid, q.ask, q.last) for q in quotes}) == 1, quotes
    return quotes[-1]


def check_leg(leg: Any, pos: Position, unit: OptionGreeks) -> None:
    """One position_greeks row of a modelled leg against the recomputation."""
    assert leg["greeks_source"] == "model"
    assert close(leg["implied_vol"], unit.implied_vol), (leg["implied_vol"], unit.implied_vol)
    size = pos.quantity * pos.instrument.multiplier
    for name in GREEKS:
        assert close(leg[f"unit_{name}"], getattr(unit, name)), name
        assert close(leg[name], size * getattr(unit, name)), name


# -- SOCKET ---------------------------------------------------------------------------------


@pytest.fixture
async def socket_world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    env = {
        "BRIDGE_GREEKS_FALLBACK": "model",
        "BRIDGE_RISK_FREE_RATE": repr(RATE),
        "BRIDGE_POSITION_ROWS": "true",
    }
    async for w in make_world(db, tmp_path, SOCKET_START, **env):
        yield w


async def test_socket_no_greeks_no_implied_vol_priced_from_the_mid(socket_world: World) -> None:
    w = socket_world
    sim: TwsSimulator = w.sim
    await w.live_with_data()
    await w.ticks(1)
    await sim.sentinel_greeks("minus2")  # Greeks -2, implied vol -1; the quotes stream on
    since = w.clock.now()
    await w.bridge._feed.resubscribe()
    await w.ticks(2)
    rows = [r for r in await w.rows() if r["timestamp"] > since]
    assert len(rows) == 2
    assert_clean(rows)
    portfolio = sim.portfolio
    positions = portfolio.positions(DEFAULT_ACCOUNT)
    options = [p for p in positions if p.instrument.is_option]
    assert len(options) == 3
    (underlying,) = {p.instrument.underlying_conid for p in options}
    assert underlying is not None
    spot = only([q for q in sim.served_quotes(underlying) if q.at >= since]).last
    mids = {
        p.instrument.conid: only(
            [q for q in sim.served_quotes(p.instrument.conid) if q.at >= since]
        ).mid
        for p in options
    }
    await w.bridge.sink.flush()
    for r in rows:
        at = r["timestamp"]
        assert (r["legs"], r["legs_missing"], r["legs_model"]) == (4, 0, 3)
        assert r["underlying_price"] == spot
        units = {
            p.instrument.conid: from_mid(p, mids[p.instrument.conid], spot, at) for p in options
        }
        want = dict.fromkeys(GREEKS, 0.0)
        for pos in positions:
            if not pos.instrument.is_option:
                want["delta"] += pos.quantity
                continue
            unit = units[pos.instrument.conid]
            for name in GREEKS:
                want[name] += pos.quantity * pos.instrument.multiplier * getattr(unit, name)
        for name in GREEKS:
            assert close(r[name], want[name]), (name, r[name], want[name])
        legs = await w.db.fetch(
            "SELECT * FROM position_greeks WHERE timestamp = $1 AND sec_type = 'OPT'", at
        )
        by_conid = {leg["conid"]: leg for leg in legs}
        assert sorted(by_conid) == sorted(units)
        for pos in options:
            check_leg(by_conid[pos.instrument.conid], pos, units[pos.instrument.conid])
    # The test can tell: the served mids are tick-rounded, so their volatility is not the
    # book's, and the book's Greeks (IB's, had it computed them) miss the row beyond 1e-9.
    for pos in options:
        unit = units[pos.instrument.conid]
        assert abs(unit.implied_vol / portfolio.volatility(pos.instrument.conid) - 1) > 1e-6
    book = at_book_vol(portfolio, options[0], rows[-1]["timestamp"])
    assert not close(units[options[0].instrument.conid].vega, book.vega)


async def test_socket_leg_the_model_cannot_price_is_missing_once(socket_world: World) -> None:
    # No Greeks, no implied vol, and a crossed quote without a trade: no price to imply a
    # volatility from. A missing leg (BRIDGE_MISSING_LEGS=skip: no row), logged once.
    w = socket_world
    sim: TwsSimulator = w.sim
    await w.live_with_data()
    await w.ticks(1)
    before = len(await w.rows())
    await sim.sentinel_greeks("minus2")
    sim.fixed_quote(CALL_NEAR, bid=5.0, ask=4.0, last=0.0)
    await w.bridge._feed.resubscribe()
    await w.ticks(4)
    rows = await w.rows()
    assert len(rows) == before  # not one row with NULL or invented Greeks
    (missing,) = await w.events("event = 'legs_missing'")
    legs = json.loads(missing["detail"])["legs"]
    assert [(leg["conid"], leg["why"]) for leg in legs] == [(CALL_NEAR, UNPRICED)]
    assert missing["status"] == "warning"
    sim.clear_fixed_quote(CALL_NEAR)  # a usable quote again: the model prices the leg
    await w.bridge._feed.resubscribe()
    await w.ticks(2)
    rows = await w.rows()
    assert len(rows) > before
    assert (rows[-1]["legs_missing"], rows[-1]["legs_model"]) == (0, 3)
    assert_clean(rows)
    assert len(await w.events("event = 'legs_missing'")) == 1  # one event for the episode
    assert len(await w.events("event = 'legs_recovered'")) == 1


# -- PORTAL ---------------------------------------------------------------------------------

WITHOUT = (CALL_NEAR, CALL_FAR)  # no Greeks and no implied vol; the put keeps IB's


@pytest.fixture(params=["missing", "empty"])
async def portal_world(
    request: pytest.FixtureRequest, db: TestDatabase, tmp_path: Path
) -> AsyncIterator[PortalWorld]:
    book = single_underlying_portfolio(as_of=PORTAL_START)
    assert book.rate == RATE

    def blank(sim: PortalSimulator) -> None:
        # From the first snapshot on: Greek fields and field 7633 both absent or empty.
        sim.sentinel_greeks(mode=request.param, conids=WITHOUT, implied_vol=True)

    async for w in make_portal_world(
        db,
        tmp_path,
        book,
        prepare=blank,
        BRIDGE_GREEKS_FALLBACK="model",
        BRIDGE_RISK_FREE_RATE=repr(RATE),
        BRIDGE_LEG_GRACE="8",
        BRIDGE_POSITION_ROWS="true",
    ):
        yield w


def served_before(sim: PortalSimulator, conid: int, at: datetime) -> list[Quote]:
    """What the bridge can have read for a row at ``at``: the last snapshot served before
    it, and one served at that same instant (poll and row may share a fake-clock time)."""
    earlier = [q for q in sim.served_quotes(conid) if q.at < at]
    return earlier[-1:] + [q for q in sim.served_quotes(conid) if q.at == at]


async def test_portal_no_greeks_no_implied_vol_priced_from_the_mid(
    portal_world: PortalWorld,
) -> None:
    w = portal_world
    await w.run(45.0)
    rows = await w.rows()
    assert len(rows) >= 5  # the legs waited out their grace, then the model priced them
    portfolio = w.sim.portfolio
    positions = {p.instrument.conid: p for p in portfolio.positions(DEFAULT_ACCOUNT)}
    put = positions[PUT_NEAR]
    underlying = put.instrument.underlying_conid
    assert underlying is not None
    await w.bridge.sink.flush()
    for r in rows:
        at = r["timestamp"]
        assert (r["legs"], r["legs_missing"], r["legs_model"]) == (4, 0, len(WITHOUT))
        (spot,) = {q.last for q in served_before(w.sim, underlying, at)}
        assert r["underlying_price"] == spot
        legs = await w.db.fetch("SELECT * FROM position_greeks WHERE timestamp = $1", at)
        tick = {leg["conid"]: leg for leg in legs}
        assert sorted(tick) == sorted(positions)
        units: dict[int, OptionGreeks] = {}
        for conid in WITHOUT:
            # Each candidate quote's recomputation; the leg must equal one of them.
            pos = positions[conid]
            fits = [
                u
                for q in served_before(w.sim, conid, at)
                if close(
                    tick[conid]["implied_vol"], (u := from_mid(pos, q.mid, spot, at)).implied_vol
                )
            ]
            assert fits, (conid, dict(tick[conid]))
            units[conid] = fits[0]
            check_leg(tick[conid], pos, fits[0])
        # IB's put: the simulator's Greeks at the instant of the snapshot the bridge read.
        assert tick[PUT_NEAR]["greeks_source"] == "ib"
        ib_put = [at_book_vol(portfolio, put, q.at) for q in served_before(w.sim, PUT_NEAR, at)]
        fits = [g for g in ib_put if close(tick[PUT_NEAR]["unit_delta"], g.delta)]
        assert fits, dict(tick[PUT_NEAR])
        units[PUT_NEAR] = fits[0]
        want = dict.fromkeys(GREEKS, 0.0)
        for conid, pos in positions.items():
            if not pos.instrument.is_option:
                want["delta"] += pos.quantity
                continue
            for name in GREEKS:
                want[name] += pos.quantity * pos.instrument.multiplier * getattr(units[conid], name)
        for name in GREEKS:
            assert close(r[name], want[name]), (name, r[name], want[name])
    # The test can tell: the served mids are cent-rounded, so their volatility is not the
    # book's 18 %, and the model's figures are not the book's.
    for conid in WITHOUT:
        assert abs(units[conid].implied_vol / portfolio.volatility(conid) - 1) > 1e-6
