"""Client Portal simulator: an option served with neither Greeks nor implied volatility
(``sentinel_greeks(implied_vol=True)``), and the quotes it served (``served_quotes``)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.portal import PortalSimulator, parse_portal_fault_script
from ibkr_bridge.sim.portfolio import SPY_CONID, default_portfolio

from .test_portal_sim import CALL, PUT, START, Client

FIELDS = "31,84,86,7308,7309,7310,7311,7633"
GREEKS = ("7308", "7309", "7310", "7311")


@pytest.fixture
async def sim() -> AsyncIterator[PortalSimulator]:
    clock = FakeClock(start=START)
    async with PortalSimulator(default_portfolio(as_of=START), clock=clock) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: PortalSimulator) -> AsyncIterator[Client]:
    context = ssl.create_default_context(cafile=sim.ca_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield Client(sim, session)


async def snapshot(client: Client) -> tuple[Any, Any]:
    params = {"conids": f"{CALL},{PUT}", "fields": FIELDS}
    _, (call, put) = await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    return call, put


@pytest.mark.parametrize(("mode", "expected"), [("missing", None), ("empty", ""), ("na", "N/A")])
async def test_implied_vol_goes_with_the_greeks_and_the_quote_stays(
    client: Client, sim: PortalSimulator, mode: str, expected: str | None
) -> None:
    await client.ready()
    await snapshot(client)  # the pre-flight
    sim.sentinel_greeks(mode=mode, conids=[CALL], implied_vol=True)
    call, put = await snapshot(client)
    for key in (*GREEKS, "7633"):
        assert call.get(key) == expected, key
        assert float(put[key]) != 0, key  # the other leg keeps IB's figures
    for key in ("31", "84", "86"):
        assert float(call[key].lstrip("C").replace(",", "")) > 0, key
    sim.clear_faults()
    call, _ = await snapshot(client)
    assert float(call["7633"]) > 0  # clear_faults ends the implied-vol part too


async def test_without_implied_vol_the_greeks_go_alone(
    client: Client, sim: PortalSimulator
) -> None:
    await client.ready()
    await snapshot(client)
    sim.sentinel_greeks(mode="missing", conids=[CALL])
    call, _ = await snapshot(client)
    assert not set(GREEKS) & set(call)
    assert float(call["7633"]) > 0


async def test_served_quotes_are_the_strings_the_client_got(
    client: Client, sim: PortalSimulator
) -> None:
    await client.ready()
    await snapshot(client)
    assert sim.served_quotes(CALL) == ()  # the pre-flight serves no prices
    call, put = await snapshot(client)
    for row in (call, put):
        (quote,) = sim.served_quotes(row["conid"])
        assert quote.conid == row["conid"]
        assert quote.at == sim._clock.now()
        assert quote.bid == float(row["84"].replace(",", ""))
        assert quote.ask == float(row["86"].replace(",", ""))
        assert quote.last == float(row["31"].lstrip("C").replace(",", ""))
        assert quote.bid < quote.mid < quote.ask
    await snapshot(client)
    assert len(sim.served_quotes(CALL)) == 2
    assert sim.served_quotes(SPY_CONID) == ()  # not asked for


def test_fault_script_takes_implied_vol() -> None:
    (step,) = parse_portal_fault_script(
        [{"at": 1, "fault": "sentinel_greeks", "mode": "empty", "implied_vol": True}]
    )
    assert step.params["implied_vol"] is True
