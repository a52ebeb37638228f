"""The Bridge driver with a scripted feed (a small seam), a fake clock and a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

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


@pytest.fixture
def clock() -> FakeClock:
    # A Tuesday afternoon in New York, far from the reset window.
    return FakeClock(start=datetime(2026, 3, 10, 15, 0, tzinfo=NY).astimezone(UTC))


@pytest.fixture
async def bridge(
    db: TestDatabase, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[Bridge, ScriptedFeed]]:
    feed = ScriptedFeed()
    b = Bridge(settings_for(db, tmp_path), feed=feed, clock=clock)
    await b.start()
    yield b, feed
    await b.stop()


async def _events(db: TestDatabase, where: str = "true") -> list[Any]:
    return await db.fetch(f"SELECT * FROM api_logs WHERE {where} ORDER BY id")


async def test_rows_every_interval_only_while_live(
    bridge: tuple[Bridge, ScriptedFeed], clock: FakeClock, db: TestDatabase
) -> None:
    b, feed = bridge
    await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
    for _ in range(4):
        await clock.advance(5.0)
    await b.sink.flush()
    rows = await db.fetch("SELECT timestamp, delta FROM portfolio_greeks ORDER BY id")
    assert [r["delta"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    gaps = {(b2["timestamp"] - a["timestamp"]).total_seconds() for a, b2 in pairwise(rows)}
    assert gaps == {5.0}

    feed.drop()
    await wait_until(lambda: b.connection_state is ConnectionState.BACKOFF)
    await clock.advance(4.9)  # inside the first back-off: no rows, no attempt
    assert feed.connects == 1
    await b.sink.flush()
    assert len(await db.fetch("SELECT 1 FROM portfolio_greeks")) == 4


async def test_backoff_5_10_20_then_steady_and_every_attempt_logged(
    db: TestDatabase, tmp_path: Path, clock: FakeClock
) -> None:
    feed = ScriptedFeed(fail_next=[f"refused {i}" for i in range(5)])
    async with Bridge(settings_for(db, tmp_path), feed=feed, clock=clock) as b:
        await wait_until(lambda: b.connection_state is ConnectionState.BACKOFF)
        waits = []
        for _ in range(5):
            start = clock.monotonic()
            await wait_until(lambda: clock.next_deadline() is not None)
            deadline = clock.next_deadline()
            assert deadline is not None
            waits.append(deadline - start)
            n = feed.connects
            await clock.advance(deadline - start)

            def reconnected(n: int = n) -> bool:
                return feed.connects == n + 1

            await wait_until(reconnected)
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        await b.sink.flush()
    assert waits == [5.0, 10.0, 20.0, 60.0, 60.0]
    attempts = await _events(db, "event = 'connect' AND detail ? 'attempt'")
    assert len(attempts) >= 6
    errors = await _events(db, "event = 'error'")
    assert [e["status"] for e in errors] == ["error"] * 5
    backoffs = await _events(db, "machine = 'connection' AND dest_state = 'BACKOFF'")
    assert len(backoffs) == 5


async def test_disconnect_in_reset_window_waits_until_0005_new_york(
    db: TestDatabase, tmp_path: Path
) -> None:
    clock = FakeClock(start=datetime(2026, 3, 7, 23, 44, 50, tzinfo=NY).astimezone(UTC))
    feed = ScriptedFeed()
    async with Bridge(settings_for(db, tmp_path), feed=feed, clock=clock) as b:
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        await clock.advance(15.0)  # now 23:45:05 ET
        feed.drop("Gateway closed the socket")
        await wait_until(lambda: b.connection_state is ConnectionState.RESET_WAIT)
        deadline = clock.next_deadline()
        assert deadline is not None
        await clock.advance(deadline - clock.monotonic() - 1.0)
        assert b.connection_state is ConnectionState.RESET_WAIT
        assert feed.connects == 1
        await clock.advance(1.0)
        await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
        assert clock.now().astimezone(NY).strftime("%Y-%m-%d %H:%M") == "2026-03-08 00:05"
        await b.sink.flush()
    waits = await _events(db, "dest_state = 'RESET_WAIT'")
    assert len(waits) == 1
    assert waits[0]["status"] == "warning"


async def test_stale_data_pauses_writing(
    bridge: tuple[Bridge, ScriptedFeed], clock: FakeClock, db: TestDatabase
) -> None:
    b, feed = bridge
    await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
    await clock.advance(5.0)
    assert feed.listener is not None
    feed.listener.feed_data_lost(1100, "Connectivity between IB and TWS has been lost.")
    await clock.advance(15.0)
    feed.listener.feed_data_restored(1102, "restored, data maintained", resubscribe=False)
    await clock.advance(5.0)
    await b.sink.flush()
    assert [r["delta"] for r in await db.fetch("SELECT delta FROM portfolio_greeks")] == [1.0, 2.0]
    skipped = await _events(db, "event = 'skipped'")
    assert len(skipped) == 1  # once per episode, not once per tick


async def test_missed_ticks_are_logged_not_bunched(
    bridge: tuple[Bridge, ScriptedFeed], clock: FakeClock, db: TestDatabase
) -> None:
    b, _ = bridge
    await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
    await clock.advance(5.0)
    # The process was not scheduled for 17 s: the clock jumps without waking anyone.
    clock._mono += 17.0
    await clock.advance(0.0)
    await b.sink.flush()
    # Ticks were due at 10, 15 and 20; at 22 the one due at 20 runs (late, not
    # bunched with the others) and the two before it are logged as missed.
    assert len(await db.fetch("SELECT 1 FROM portfolio_greeks")) == 2
    missed = await _events(db, "event = 'missed_ticks'")
    assert [m["detail"] for m in missed] == ['{"missed": 2}']
    await clock.advance(3.0)  # the schedule is unchanged: the next tick is due at 25
    await b.sink.flush()
    assert len(await db.fetch("SELECT 1 FROM portfolio_greeks")) == 3


async def test_stop_leaves_no_task_and_logs_shutdown(
    db: TestDatabase, tmp_path: Path, clock: FakeClock
) -> None:
    import asyncio

    before = asyncio.all_tasks()
    b = Bridge(settings_for(db, tmp_path), feed=ScriptedFeed(), clock=clock)
    await b.start()
    await wait_until(lambda: b.connection_state is ConnectionState.LIVE)
    await b.stop()
    assert b.connection_state is ConnectionState.STOPPED
    assert asyncio.all_tasks() - before == set()
    assert [e["event"] for e in await _events(db)][-1] == "shutdown"


async def test_a_failed_start_leaves_nothing_open_and_stop_is_safe(
    db: TestDatabase, tmp_path: Path, clock: FakeClock
) -> None:
    import asyncio

    from ibkr_bridge.storage.buffer import JsonlBufferError

    (tmp_path / "buffer.jsonl").mkdir()  # the buffer path is a directory: cannot open
    before = asyncio.all_tasks()
    b = Bridge(settings_for(db, tmp_path), feed=ScriptedFeed(), clock=clock)
    with pytest.raises(JsonlBufferError, match="not a regular file"):
        await b.start()
    await b.stop()  # must not raise
    assert asyncio.all_tasks() - before == set()
    assert (tmp_path / "buffer.jsonl").stat().st_mode & 0o777 != 0o600  # left as it was
