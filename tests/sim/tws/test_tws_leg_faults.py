"""The simulator's per-leg Greeks and data-farm faults, seen by the real ib_async client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ib_async import IB, Contract

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.faults import FaultScriptError, parse_fault_script
from ibkr_bridge.sim.portfolio import default_portfolio
from ibkr_bridge.sim.tws import TwsSimulator

CALL, PUT = 800000101, 800000102


@pytest.fixture
async def world() -> AsyncIterator[tuple[FakeClock, TwsSimulator, IB]]:
    clock = FakeClock()
    async with TwsSimulator(default_portfolio(as_of=clock.now()), clock=clock, seed=1) as sim:
        ib = IB()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=10, readonly=True, timeout=5)
        try:
            yield clock, sim, ib
        finally:
            ib.disconnect()


async def barrier(ib: IB) -> None:
    """Everything sent before this round trip has been read."""
    await asyncio.wait_for(ib.reqCurrentTimeAsync(), 5)


def option(ib: IB, conid: int) -> Any:
    return ib.reqMktData(Contract(conId=conid, secType="OPT", exchange="SMART"))


async def test_withheld_greeks_stop_for_that_leg_only_and_resume(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    _clock, sim, ib = world
    await sim.withhold_greeks(CALL)
    call, put = option(ib, CALL), option(ib, PUT)
    await barrier(ib)
    assert call.modelGreeks is None
    assert call.last is not None  # prices keep streaming
    assert put.modelGreeks is not None
    sim.resume_greeks(CALL)  # current Greeks go out at once
    await barrier(ib)
    assert call.modelGreeks is not None
    assert sim.withheld_greeks == frozenset()


async def test_withholding_for_seconds_ends_by_itself(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    clock, sim, _ib = world
    steps = parse_fault_script([{"at": 0, "fault": "withhold_greeks", "conid": CALL, "seconds": 3}])
    sim.run_faults(steps)
    await clock.advance(0)
    assert sim.withheld_greeks == {CALL}
    await clock.advance(3)
    assert sim.withheld_greeks == frozenset()


async def test_farm_notices_arrive_with_ibs_codes_and_wording(
    world: tuple[FakeClock, TwsSimulator, IB],
) -> None:
    _, sim, ib = world
    seen: list[tuple[int, str]] = []
    ib.errorEvent += lambda req_id, code, message, contract: seen.append((code, message))
    await sim.farm_notice(2103)
    await sim.farm_notice(2108, "usopt")
    await barrier(ib)
    assert seen == [
        (2103, "Market data farm connection is broken:usfarm"),
        (2108, "Market data farm connection is inactive but should be available upon demand.usopt"),
    ]
    with pytest.raises(ValueError, match="code must be one of"):
        await sim.farm_notice(1100)


@pytest.mark.parametrize(
    "script",
    [
        [{"at": 1, "fault": "withhold_greeks"}],
        [{"at": 1, "fault": "withhold_greeks", "conid": "800000101"}],
        [{"at": 1, "fault": "farm_notice", "code": 1100}],
        [{"at": 1, "fault": "farm_notice", "code": 2103, "farm": 7}],
    ],
)
def test_bad_leg_fault_scripts_are_rejected(script: object) -> None:
    with pytest.raises(FaultScriptError):
        parse_fault_script(script)
