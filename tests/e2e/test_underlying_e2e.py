"""What a reader of the tables gets after a real run (issue 14.2).

SOCKET mode through the IB Gateway simulator with its two-underlying demo book (SPY and ES)
into a real PostgreSQL, on a fake clock; then the queries a dashboard would write, run as
plain SQL. ``portfolio_greeks`` holds the PORTFOLIO row of each tick and nothing else, so
the obvious "latest row" query is the portfolio; the per-underlying rows are in
``underlying_greeks`` with the PORTFOLIO row's timestamp.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim import TwsSimulator, default_portfolio
from ibkr_bridge.testing import TestDatabase, expected_net_greeks, wait_until

NY = ZoneInfo("America/New_York")
ACCOUNT = "DU1234567"
TICKS = 4


class Run(NamedTuple):
    db: TestDatabase
    want: dict[str, dict[str, float]]  # net Greeks per underlying, recomputed by hand


@pytest.fixture
async def ran(db: TestDatabase, tmp_path: Path) -> Run:
    """Four ticks of the demo book written, the bridge stopped again."""
    clock = FakeClock(start=datetime(2026, 3, 10, 14, 0, tzinfo=NY).astimezone(UTC))
    portfolio = default_portfolio(as_of=clock.now())
    async with TwsSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as sim:
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_INTERVAL": "15",
                "IB_PROBE_TIMEOUT": "0.5",
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                # The simulator's prices never move, so its Greeks arrive once: keep them current.
                "BRIDGE_STALE_AFTER": "86400",
            },
            use_dotenv=False,
        )
        async with Bridge(settings, clock=clock) as bridge:
            await wait_until(lambda: bridge.connection_state is ConnectionState.LIVE)
            feed = bridge._feed
            await wait_until(lambda: feed.snapshot(clock.now()) is not None)
            started = clock.now()
            for _ in range(TICKS):
                await clock.advance(5.0)
            await bridge.sink.flush()
        # Recomputed by hand from the book, independently of the bridge's aggregation.
        want = {
            symbol: expected_net_greeks(portfolio, ACCOUNT, started, symbol)
            for symbol in ("ES", "SPY")
        }
    return Run(db, want)


async def test_the_latest_row_of_portfolio_greeks_is_the_portfolio(
    ran: Run,
) -> None:
    db = ran.db
    latest = await db.fetch("SELECT * FROM portfolio_greeks ORDER BY timestamp DESC LIMIT 1")
    assert latest[0]["contract"] == "PORTFOLIO"
    assert latest[0]["legs"] > 0
    every = await db.fetch("SELECT contract, count(*) AS n FROM portfolio_greeks GROUP BY 1")
    assert [(r["contract"], r["n"]) for r in every] == [("PORTFOLIO", TICKS)]
    # One row per timestamp: timestamp is a key an unfiltered reader can rely on.
    distinct = await db.fetch("SELECT count(DISTINCT timestamp) AS n FROM portfolio_greeks")
    assert distinct[0]["n"] == TICKS


async def test_underlying_rows_are_in_their_own_table_at_the_portfolio_timestamp(
    ran: Run,
) -> None:
    db = ran.db
    per_tick = await db.fetch(
        """
        SELECT p.timestamp, p.delta AS p_delta, p.dollar_delta AS p_dollar,
               array_agg(u.contract ORDER BY u.contract) AS contracts,
               sum(u.delta) AS u_delta, sum(u.dollar_delta) AS u_dollar
        FROM portfolio_greeks p JOIN underlying_greeks u USING (timestamp, account)
        GROUP BY p.timestamp, p.delta, p.dollar_delta ORDER BY p.timestamp
        """
    )
    assert len(per_tick) == TICKS  # every PORTFOLIO row has its underlyings, same timestamp
    for tick in per_tick:
        assert tick["contracts"] == ["ES", "SPY"]
        assert tick["u_delta"] == pytest.approx(tick["p_delta"], rel=1e-12)
        assert tick["u_dollar"] == pytest.approx(tick["p_dollar"], rel=1e-12)
    assert (await db.fetch("SELECT count(*) AS n FROM underlying_greeks"))[0]["n"] == 2 * TICKS
    assert (await db.fetch("SELECT 1 FROM underlying_greeks WHERE contract = 'PORTFOLIO'")) == []


async def test_the_latest_row_per_underlying_equals_a_recomputation(
    ran: Run,
) -> None:
    db = ran.db
    latest = await db.fetch(
        "SELECT DISTINCT ON (contract) * FROM underlying_greeks ORDER BY contract, timestamp DESC"
    )
    assert [r["contract"] for r in latest] == ["ES", "SPY"]
    newest = await db.fetch("SELECT max(timestamp) AS t FROM portfolio_greeks")
    for r in latest:
        assert r["timestamp"] == newest[0]["t"]
        for name, value in ran.want[r["contract"]].items():
            assert r[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (r["contract"], name)
