"""Several accounts under one login, end to end: the real ib_async client, the IB Gateway
simulator serving two accounts, the Bridge and a real PostgreSQL, on a fake clock.

Without IB_ACCOUNT every tick writes one PORTFOLIO row per account plus the all-accounts
row (account ``''``); with IB_ACCOUNT only that account's. The simulator's prices do not
move, so each account's row is recomputed independently from the portfolio.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.config import default_of
from ibkr_bridge.sim import two_account_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT, SECOND_ACCOUNT
from ibkr_bridge.testing import TestDatabase, expected_net_greeks

from .test_socket_e2e import NY, World, make_world

START = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
ACCOUNTS = (DEFAULT_ACCOUNT, SECOND_ACCOUNT)
GREEKS = ("delta", "gamma", "vega", "theta")
# Legs of two_account_portfolio: SPY stock, three SPY options, an ES call; and SPY short
# stock, the near SPY call (held in both), an ES put, an ES future.
LEGS = {DEFAULT_ACCOUNT: 5, SECOND_ACCOUNT: 4, "": 9}


async def accounts_world(db: TestDatabase, tmp_path: Path, **env: str) -> AsyncIterator[World]:
    async for w in make_world(db, tmp_path, START, two_account_portfolio, **env):
        yield w


def by_tick(rows: list[Any]) -> list[dict[str, Any]]:
    """The rows grouped by timestamp, each tick's as ``{account: row}``."""
    ticks = itertools.groupby(sorted(rows, key=lambda r: r["timestamp"]), lambda r: r["timestamp"])
    out: list[dict[str, Any]] = []
    for _, group in ticks:
        tick = list(group)
        named = {r["account"]: r for r in tick}
        assert len(named) == len(tick), "one PORTFOLIO row per account a tick"
        out.append(named)
    return out


def assert_matches(row: Any, want: dict[str, float]) -> None:
    for name, value in want.items():
        assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (row["account"], name)


async def test_each_tick_writes_every_account_and_all_of_them(
    db: TestDatabase, tmp_path: Path
) -> None:
    async for world in accounts_world(db, tmp_path):
        await world.live_with_data()
        await world.ticks(3)
        rows = await world.rows()
        ticks = by_tick(rows)
        assert len(ticks) == 3
        portfolio = world.sim.portfolio
        want = {a: expected_net_greeks(portfolio, a, world.started_at) for a in ACCOUNTS}
        # The recomputation is not trivially zero, and the accounts differ.
        assert want[DEFAULT_ACCOUNT]["gamma"] != 0.0 != want[SECOND_ACCOUNT]["gamma"]
        assert want[DEFAULT_ACCOUNT]["delta"] != pytest.approx(want[SECOND_ACCOUNT]["delta"])
        for tick in ticks:
            assert set(tick) == {*ACCOUNTS, ""}
            for account in ACCOUNTS:
                assert_matches(tick[account], want[account])
            total = tick[""]
            for name in GREEKS:
                parts = sum(tick[a][name] for a in ACCOUNTS)
                assert total[name] == pytest.approx(parts, rel=1e-9, abs=1e-9), name
            for account, row in tick.items():
                assert row["contract"] == "PORTFOLIO"
                assert (row["legs"], row["legs_missing"]) == (LEGS[account], 0)
        # One market-data stream per contract, though the near call is in both accounts.
        streams = list(world.sim.subscriptions_of(default_of("client_id")).values())
        assert sorted(streams) == sorted({p.conid for p in portfolio.positions()})
        assert world.bridge.status.account == f"{DEFAULT_ACCOUNT},{SECOND_ACCOUNT}"
        connected = await world.events("event = 'connect' AND detail::text LIKE '%connected%'")
        assert [r["message"] for r in connected] == [
            f"connected to IBKR (SOCKET), account {DEFAULT_ACCOUNT},{SECOND_ACCOUNT}"
        ]


async def test_ib_account_picks_one_of_them(db: TestDatabase, tmp_path: Path) -> None:
    async for world in accounts_world(db, tmp_path, IB_ACCOUNT=SECOND_ACCOUNT):
        await world.live_with_data()
        await world.ticks(3)
        rows = await world.rows()
        assert [r["account"] for r in rows] == [SECOND_ACCOUNT] * 3
        want = expected_net_greeks(world.sim.portfolio, SECOND_ACCOUNT, world.started_at)
        for row in rows:
            assert_matches(row, want)
            assert (row["legs"], row["legs_missing"]) == (LEGS[SECOND_ACCOUNT], 0)
        assert world.bridge.status.account == SECOND_ACCOUNT


async def test_each_accounts_position_rows_sum_to_its_portfolio_row(
    db: TestDatabase, tmp_path: Path
) -> None:
    async for world in accounts_world(db, tmp_path, BRIDGE_POSITION_ROWS="true"):
        await world.live_with_data()
        await world.ticks(3)
        ticks = by_tick(await world.rows())
        legs = await world.db.fetch("SELECT * FROM position_greeks")
        assert len(ticks) == 3
        assert len(legs) == 3 * LEGS[""]
        for tick in ticks:
            stamp = tick[""]["timestamp"]
            for account in ACCOUNTS:
                own = [g for g in legs if g["timestamp"] == stamp and g["account"] == account]
                assert len(own) == LEGS[account]
                for name in GREEKS:
                    parts = sum(g[name] for g in own)
                    assert parts == pytest.approx(tick[account][name], rel=1e-9, abs=1e-9), name
        kinds = {(g["sec_type"], g["position"] < 0) for g in legs}
        # Stocks, equity options, futures options, a future, and shorts among them.
        assert {"STK", "OPT", "FOP", "FUT"} <= {kind for kind, _ in kinds}
        assert any(short for _, short in kinds)
