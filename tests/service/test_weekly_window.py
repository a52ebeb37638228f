"""The Bridge driver waits out IBKR's weekly maintenance window (issue 14.7), fake clock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ibkr_bridge.config import load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.machines.connection import ConnectionState
from ibkr_bridge.service.bridge import Bridge
from ibkr_bridge.testing import ScriptedFeed, TestDatabase, wait_until

NY = ZoneInfo("America/New_York")


def settings_for(db: TestDatabase, tmp_path: Path, **extra: str) -> Any:
    env: Mapping[str, str] = {
        "DATABASE_URL": db.dsn,
        "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
        **extra,
    }
    return load_settings(env, use_dotenv=False)


async def test_disconnect_in_the_weekly_window_waits_until_its_end(
    db: TestDatabase, tmp_path: Path
) -> None:
    # Friday 2026-03-06 23:10 New York: inside the default weekly window (Fri 23:00 to
    # Sat 03:00), outside the nightly one. Back-off would try every 60 s for ~4 hours.
    clock = FakeClock(start=datetime(2026, 3, 6, 23, 9, 50, tzinfo=NY).astimezone(UTC))
    feed = ScriptedFeed()
    async with Bridge(settings_for(db, tmp_path), feed=feed, clock=clock) as b:
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        await clock.advance(15.0)  # 23:10:05
        feed.drop("Gateway closed the socket")
        await wait_until(lambda: b.connection_state is ConnectionState.RESET_WAIT)
        deadline = clock.next_deadline()
        assert deadline is not None
        # One wait to 03:00, not back-off steps: nothing is tried across the nightly 00:05.
        assert deadline - clock.monotonic() == (3 * 3600 + 49 * 60 + 55)
        await clock.advance(deadline - clock.monotonic() - 1.0)
        assert b.connection_state is ConnectionState.RESET_WAIT
        assert feed.connects == 1
        await clock.advance(1.0)
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        assert feed.connects == 2
        assert clock.now().astimezone(NY).strftime("%a %Y-%m-%d %H:%M") == "Sat 2026-03-07 03:00"
        await b.sink.flush()
    waits = await db.fetch(
        "SELECT status, detail FROM api_logs WHERE dest_state = 'RESET_WAIT' ORDER BY id"
    )
    assert len(waits) == 1
    assert waits[0]["status"] == "warning"
    assert '"window": "weekly"' in waits[0]["detail"]
    assert '"resume_at": "2026-03-07T03:00:00-05:00"' in waits[0]["detail"]


async def test_weekly_window_off_backs_off_as_usual(db: TestDatabase, tmp_path: Path) -> None:
    clock = FakeClock(start=datetime(2026, 3, 6, 23, 9, 50, tzinfo=NY).astimezone(UTC))
    feed = ScriptedFeed()
    settings = settings_for(db, tmp_path, BRIDGE_WEEKLY_WINDOW="off")
    async with Bridge(settings, feed=feed, clock=clock) as b:
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        feed.drop("Gateway closed the socket")
        await wait_until(lambda: b.connection_state is ConnectionState.BACKOFF)
        await wait_until(lambda: clock.next_deadline() is not None)
        await clock.advance(5.0)
        await wait_until(lambda: feed.connects == 2)
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
