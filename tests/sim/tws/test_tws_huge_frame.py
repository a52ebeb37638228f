"""The IB Gateway simulator's ``huge_frame`` fault, seen from a raw socket: one frame
announced far larger than anything IB sends, then filler bytes streamed until the client
hangs up."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.faults import (
    HUGE_FRAME_SIZE,
    MAX_DECLARED_FRAME,
    FaultScriptError,
    parse_fault_script,
)
from ibkr_bridge.sim.portfolio import default_portfolio
from ibkr_bridge.sim.tws import TwsSimulator

from .test_tws_sim import frame, raw_session, read_frames


@pytest.fixture
async def sim() -> AsyncIterator[TwsSimulator]:
    clock = FakeClock()
    async with TwsSimulator(default_portfolio(as_of=clock.now()), clock=clock, seed=3) as s:
        yield s


async def started(sim: TwsSimulator) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_session(sim.port, "v157..178")
    await read_frames(reader, 1)
    writer.write(frame("71\x002\x007\x00\x00"))
    await read_frames(reader, 5)  # accounts, next id, three notices
    return reader, writer


async def test_the_announced_length_then_exactly_the_filler_asked_for(sim: TwsSimulator) -> None:
    reader, writer = await started(sim)
    try:
        fault = asyncio.ensure_future(sim.huge_frame(nbytes=300_000, chunk=65_536))
        header = await asyncio.wait_for(reader.readexactly(4), 3)
        assert struct.unpack(">I", header)[0] == HUGE_FRAME_SIZE
        filler = await asyncio.wait_for(reader.readexactly(300_000), 3)
        assert await asyncio.wait_for(fault, 3) == 300_000
        assert set(filler) == {0x7F}
    finally:
        writer.close()


async def test_a_fault_script_step_runs_it(sim: TwsSimulator) -> None:
    reader, writer = await started(sim)
    try:
        run = sim.run_faults(
            parse_fault_script([{"at": 0, "fault": "huge_frame", "size": 70_000, "nbytes": 1000}])
        )
        data = await asyncio.wait_for(reader.readexactly(4 + 1000), 3)
        assert struct.unpack(">I", data[:4])[0] == 70_000
        await asyncio.wait_for(run, 3)
    finally:
        writer.close()


async def test_streaming_stops_when_the_client_hangs_up(sim: TwsSimulator) -> None:
    reader, writer = await started(sim)
    total = 1 << 30
    fault = asyncio.ensure_future(sim.huge_frame(size=MAX_DECLARED_FRAME, nbytes=total))
    header = await asyncio.wait_for(reader.readexactly(4), 3)
    assert struct.unpack(">I", header)[0] == MAX_DECLARED_FRAME
    await asyncio.wait_for(reader.readexactly(1 << 20), 3)
    writer.close()
    sent = await asyncio.wait_for(fault, 10)
    assert 1 << 20 <= sent < total


async def test_bad_arguments_are_refused(sim: TwsSimulator) -> None:
    for kwargs in ({"size": MAX_DECLARED_FRAME + 1}, {"size": -1}, {"nbytes": -1}, {"chunk": 0}):
        with pytest.raises(ValueError, match="must be"):
            await sim.huge_frame(**kwargs)


def test_fault_scripts_know_huge_frame() -> None:
    (step,) = parse_fault_script(
        [{"at": 3, "fault": "huge_frame", "size": 1 << 31, "nbytes": 300_000_000}]
    )
    assert (step.fault, dict(step.params)) == (
        "huge_frame",
        {"size": 1 << 31, "nbytes": 300_000_000},
    )
    assert parse_fault_script([{"at": 0, "fault": "huge_frame"}])[0].params == {}
    for bad in (
        {"size": MAX_DECLARED_FRAME + 1},
        {"size": -5},
        {"nbytes": -1},
        {"chunk": 0},
        {"size": "2GB"},
    ):
        with pytest.raises(FaultScriptError):
            parse_fault_script([{"at": 1, "fault": "huge_frame", **bad}])
