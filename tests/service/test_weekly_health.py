"""/healthz during IBKR's weekly maintenance window (issue 14.7): an expected wait."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.machines.connection import ConnectionState
from ibkr_bridge.testing import TestDatabase, wait_until

from .test_health import NY, make_world, scripted


async def test_stale_and_waiting_in_the_weekly_window_are_expected(
    db: TestDatabase, tmp_path: Path
) -> None:
    # Friday 23:10 New York: inside the weekly window (Fri 23:00 to Sat 03:00) only.
    clock = FakeClock(start=datetime(2026, 3, 6, 23, 9, 50, tzinfo=NY).astimezone(UTC))
    async with make_world(db, tmp_path, clock, scripted()) as w:
        await w.live()
        await w.ticks(3)
        assert w.feed.listener is not None
        w.feed.listener.feed_data_lost(1100, "Connectivity between IB and TWS has been lost.")
        await w.clock.advance(w.server.policy.stale_grace + 5.0)
        code, body = await w.healthz()
        assert code == 200  # 1100 through the maintenance is expected, not a failure
        assert "during the weekly maintenance window" in body["note"]
        w.feed.drop("Gateway closed the socket")
        await wait_until(lambda: w.state is ConnectionState.RESET_WAIT)
        await w.clock.advance(w.server.policy.outage_grace + 600.0)
        code, body = await w.healthz()
        assert code == 200
        assert "weekly maintenance" in body["note"]
        assert body["connection"] == "RESET_WAIT"
