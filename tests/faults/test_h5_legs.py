"""Fault-matrix rows for issue 14.3/14.4: option legs without current Greeks.

Each case injects the fault through the IB Gateway simulator (no 1100 anywhere), checks
what the staleness rule promises (docs/greeks.md) and then hands over to the common
invariants: nothing lost, duplicated or wrong, every row equal to a recomputation (a row
with ``legs_missing`` gets only the "clean values" checks), every event in ``api_logs``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ibkr_bridge import ConnectionState
from ibkr_bridge.testing import TestDatabase

from .harness import ACCOUNT, Case, World, assert_report, run_case

ES_CALL = 800000201  # a futures option of default_portfolio


def legs_events(w: World, event: str) -> list[str]:
    return [e.message for e in w.events if e.event == event]


async def withhold_es_call(w: World) -> None:
    await w.sim.withhold_greeks(ES_CALL)


async def live(w: World) -> None:
    await w.advance_until(lambda: w.state is ConnectionState.LIVE, limit=30.0)
    await w.settle()


async def close_the_leg(w: World) -> None:
    # Ends the episode without Greeks computed at a later instant than the other legs'
    # (the recomputation of the invariants assumes one instant); resume_greeks is covered
    # by tests/e2e/test_leg_greeks_e2e.py.
    w.sim.remove_position(ACCOUNT, ES_CALL)
    await w.data_ready()
    await w.ticks(1)
    (recovered,) = legs_events(w, "legs_recovered")
    assert "position closed" in recovered


async def leg_never_gets_greeks_skip(w: World) -> None:
    await live(w)
    await w.run(60.0)  # past BRIDGE_LEG_GRACE (30 s)
    assert w.submitted == [], "a net without the leg was written"
    (missing,) = legs_events(w, "legs_missing")
    assert str(ES_CALL) in missing
    assert "BRIDGE_MISSING_LEGS=skip" in missing
    assert str(ES_CALL) in (w.live_bridge.status.degraded or "")
    await close_the_leg(w)


async def leg_never_gets_greeks_partial(w: World) -> None:
    await live(w)
    await w.run(60.0)
    assert w.submitted, "partial wrote nothing"
    by_contract = {(row.contract, row.legs_missing) for row in w.submitted}
    assert by_contract == {("PORTFOLIO", 1), ("ES", 1), ("SPY", 0)}
    assert len(legs_events(w, "legs_missing")) == 1
    await close_the_leg(w)


async def market_farm_broken(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    before = len(w.submitted)
    await w.sim.farm_notice(2103)
    await w.ticks(4)
    # At most the tick already due when the notice crossed the socket.
    assert len(w.submitted) <= before + 1, "rows written while the data farm was broken"
    assert w.live_bridge.status.greeks_stale
    (missing,) = legs_events(w, "legs_missing")
    assert "market data farm reported broken (usfarm)" in missing
    await w.sim.farm_notice(2104)


async def recovered_once(w: World) -> None:
    assert len(legs_events(w, "legs_recovered")) == 1
    assert len(legs_events(w, "legs_missing")) == 1


LEG_CASES = [
    Case(
        "gw-leg-never-gets-greeks-skip",
        leg_never_gets_greeks_skip,
        setup=withhold_es_call,
        verify=recovered_once,
        note="no row while a leg lacks Greeks; one event names it, one when it recovers",
    ),
    Case(
        "gw-leg-never-gets-greeks-partial",
        leg_never_gets_greeks_partial,
        env={"BRIDGE_MISSING_LEGS": "partial"},
        setup=withhold_es_call,
        verify=recovered_once,
        note="rows from the other legs, legs_missing = 1",
    ),
    Case(
        "gw-market-data-farm-broken",
        market_farm_broken,
        verify=recovered_once,
        note="IB 2103 without 1100: rows stop until 2104",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in LEG_CASES])
async def test_leg_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))
