"""The IB Gateway simulator serving several accounts: two_account_portfolio and ``--book``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ib_async import IB

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.__main__ import BOOKS
from ibkr_bridge.sim.__main__ import main as sim_main
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    ES_CONID,
    SECOND_ACCOUNT,
    SPY_CONID,
    Portfolio,
    default_portfolio,
    single_underlying_portfolio,
    two_account_portfolio,
)
from ibkr_bridge.sim.tws import TwsSimulator

SPY_CALL_NEAR = 800000101
ROOT = Path(__file__).resolve().parents[2]


def held(portfolio: Portfolio, account: str) -> dict[int, float]:
    return {p.conid: p.quantity for p in portfolio.positions(account)}


def test_the_two_account_book_holds_what_it_says() -> None:
    book = two_account_portfolio(seed=1)
    assert book.accounts == (DEFAULT_ACCOUNT, SECOND_ACCOUNT)
    first, second = held(book, DEFAULT_ACCOUNT), held(book, SECOND_ACCOUNT)
    assert set(first) & set(second) == {SPY_CONID, SPY_CALL_NEAR}
    kinds = {p.instrument.sec_type for p in book.positions()}
    assert kinds == {"STK", "OPT", "FOP", "FUT"}
    assert any(q < 0 for q in first.values())
    assert any(q < 0 for q in second.values())
    assert second[SPY_CONID] < 0 < first[SPY_CONID]
    assert second[ES_CONID] == 1.0


async def connect(port: int) -> IB:
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, clientId=10, readonly=True, timeout=5)
    return ib


@pytest.fixture
async def sim() -> AsyncIterator[TwsSimulator]:
    clock = FakeClock()
    book = two_account_portfolio(as_of=clock.now(), seed=1)
    async with TwsSimulator(book, clock=clock, seed=1) as simulator:
        yield simulator


async def test_managed_accounts_and_positions_per_account(sim: TwsSimulator) -> None:
    ib = await connect(sim.port)
    try:
        assert ib.managedAccounts() == [DEFAULT_ACCOUNT, SECOND_ACCOUNT]
        for account in (DEFAULT_ACCOUNT, SECOND_ACCOUNT):
            got = {p.contract.conId: p.position for p in ib.positions(account)}
            assert got == held(sim.portfolio, account)
        # A trade in one account reaches the client as that account's position only.
        sim.set_position(SECOND_ACCOUNT, SPY_CALL_NEAR, 5.0)
        await asyncio.wait_for(_until(ib, SECOND_ACCOUNT, SPY_CALL_NEAR, 5.0), 3)
        first = {p.contract.conId: p.position for p in ib.positions(DEFAULT_ACCOUNT)}
        assert first[SPY_CALL_NEAR] == 2.0
    finally:
        ib.disconnect()


async def _until(ib: IB, account: str, conid: int, quantity: float) -> None:
    # Polling: ib_async has no single event for "this account holds this much".
    while {p.contract.conId: p.position for p in ib.positions(account)}.get(conid) != quantity:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def test_books_by_name() -> None:
    assert BOOKS["demo"] is default_portfolio
    assert BOOKS["spy"] is single_underlying_portfolio
    assert BOOKS["two-accounts"](None, 0).accounts == (DEFAULT_ACCOUNT, SECOND_ACCOUNT)


def test_book_and_portfolio_are_alternatives(tmp_path: Path) -> None:
    book = tmp_path / "book.json"
    book.write_text("{}")
    assert sim_main(["socket", "--port", "0", "--book", "spy", "--portfolio", str(book)]) == 2
    with pytest.raises(SystemExit):
        sim_main(["socket", "--book", "nonesuch"])


async def test_the_command_line_serves_the_two_account_book() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ibkr_bridge.sim", "socket", "--port", "0", "--book", "two-accounts"),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode()
        assert line.startswith("listening 127.0.0.1:"), line
        ib = await connect(int(line.rsplit(":", 1)[1]))
        try:
            assert ib.managedAccounts() == [DEFAULT_ACCOUNT, SECOND_ACCOUNT]
            assert {p.account for p in ib.positions()} == {DEFAULT_ACCOUNT, SECOND_ACCOUNT}
        finally:
            ib.disconnect()
    finally:
        child.terminate()
        await child.wait()
