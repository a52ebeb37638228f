"""The durable writer against a real PostgreSQL behind a misbehaving TCP proxy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.machines.breaker import BreakerState
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink import MEMORY_QUEUE_SIZE, DurableWriter
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TcpProxy, TestDatabase, wait_until

T0 = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)


def row(i: int) -> GreeksRow:
    return GreeksRow(
        timestamp=T0 + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        delta=float(i),
        gamma=0.5,
        vega=-3.25,
        theta=None,
        underlying_price=500.0 + i,
        legs=2,
    )


@attrs.define
class Rig:
    db: TestDatabase
    proxy: TcpProxy
    store: Store
    buffer: JsonlBuffer
    clock: FakeClock
    sink: DurableWriter

    async def greeks_deltas(self) -> list[float]:
        rows = await self.db.fetch("SELECT delta FROM portfolio_greeks ORDER BY id")
        return [r["delta"] for r in rows]

    async def transitions(self) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT source_state, dest_state FROM api_logs"
            " WHERE machine = 'breaker' AND source_state <> dest_state ORDER BY id"
        )
        return [(r["source_state"], r["dest_state"]) for r in rows]


@pytest.fixture
def memory_queue_size() -> int:
    """Overridden with ``@pytest.mark.parametrize("memory_queue_size", [n])``."""
    return MEMORY_QUEUE_SIZE


@pytest.fixture
async def rig(db: TestDatabase, tmp_path: Path, memory_queue_size: int) -> AsyncIterator[Rig]:
    async with TcpProxy(*db.server_address()) as proxy:
        store = await Store.open(db.proxied_dsn(proxy), connect_timeout=0.5, command_timeout=1.0)
        await store.ensure_schema()
        buffer = JsonlBuffer(tmp_path / "buffer.jsonl")
        buffer.open()
        clock = FakeClock(start=T0)
        sink = DurableWriter(
            store,
            buffer,
            api_mode="SOCKET",
            clock=clock,
            retry_interval=60.0,
            spill_after=0.3,
            memory_queue_size=memory_queue_size,
        )
        await sink.start()
        yield Rig(db, proxy, store, buffer, clock, sink)
        proxy.up()
        await sink.stop()
        buffer.close()
        await store.close()


async def test_healthy_rows_go_straight_to_the_database(rig: Rig) -> None:
    for i in range(3):
        await rig.sink.write([row(i)])
    assert await rig.greeks_deltas() == [0.0, 1.0, 2.0]
    assert rig.buffer.is_empty
    assert rig.sink.breaker.state is BreakerState.CLOSED
    assert rig.sink.stats.written == 3


async def test_outage_buffers_then_drains_in_order_once(rig: Rig) -> None:
    await rig.sink.write([row(0)])
    rig.proxy.down()
    for i in range(1, 6):
        await rig.sink.write([row(i)])  # durable (in the buffer) although the DB is down
    assert rig.sink.breaker.state is BreakerState.OPEN
    assert not rig.buffer.is_empty
    assert rig.buffer.count_pending() >= 5

    # Before the retry interval nothing touches the database.
    rig.proxy.up()
    accepted = rig.proxy.connections_accepted
    await rig.clock.advance(59.0)
    assert rig.sink.breaker.state is BreakerState.OPEN
    assert rig.proxy.connections_accepted == accepted

    await rig.clock.advance(1.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    assert rig.buffer.is_empty
    await rig.sink.write([row(6)])
    assert await rig.greeks_deltas() == [float(i) for i in range(7)]
    assert await rig.transitions() == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]


async def test_failed_probe_reopens_and_waits_again(rig: Rig) -> None:
    seen: list[tuple[str | None, str | None]] = []
    rig.sink.add_listener(lambda e: seen.append((e.source_state, e.dest_state)))
    rig.proxy.down()
    await rig.sink.write([row(0)])
    await rig.clock.advance(60.0)  # probe while still down
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.OPEN and rig.clock.sleepers > 0)
    rig.proxy.up()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    # The breaker is CLOSED a step before its transition event is submitted: wait for the
    # event, then for it to be durable, before reading api_logs.
    await wait_until(lambda: ("HALF_OPEN", "CLOSED") in seen)
    await rig.sink.flush()
    assert await rig.greeks_deltas() == [0.0]
    assert await rig.transitions() == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]


async def test_black_hole_spills_to_the_buffer_and_nothing_is_doubled(rig: Rig) -> None:
    await rig.sink.write([row(0)])
    rig.proxy.blackhole()
    await rig.sink.write([row(1)])  # resolves after spill_after, not after the deadline
    assert not rig.buffer.is_empty
    await rig.sink.write([row(2)])
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.OPEN, timeout=10)
    rig.proxy.up()
    rig.proxy.cut()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED, timeout=10)
    assert await rig.greeks_deltas() == [0.0, 1.0, 2.0]


async def test_a_stalled_write_does_not_hold_up_the_batches_behind_it(rig: Rig) -> None:
    await rig.sink.write([row(0)])
    rig.proxy.blackhole()
    await rig.sink.write([row(1)])  # spilled after spill_after (0.3 s); its write goes on
    stalled = set(rig.sink._stragglers)
    assert len(stalled) == 1  # the stalled writer, still in its write (deadline 1.5 s)
    await rig.sink.write([row(2)])  # routed by the writer that took over the queue
    # Before the stalled write's deadline: no failure has tripped the breaker yet.
    assert rig.sink.breaker.state is BreakerState.CLOSED
    assert not any(task.done() for task in stalled)
    assert rig.buffer.count_pending() == 2
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.OPEN, timeout=10)
    await wait_until(lambda: not rig.sink._stragglers, timeout=10)
    rig.proxy.up()
    rig.proxy.cut()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED, timeout=10)
    assert await rig.greeks_deltas() == [0.0, 1.0, 2.0]


async def test_bad_data_is_rejected_not_blocking(rig: Rig, tmp_path: Path) -> None:
    bad = ApiEvent(timestamp=T0, api_mode="SOCKET", event="error", message="nul\x00byte")
    await rig.sink.write([row(0), bad, row(1)])
    assert await rig.greeks_deltas() == [0.0, 1.0]
    assert rig.sink.breaker.state is BreakerState.CLOSED
    rejected = (tmp_path / "buffer.jsonl.rejected").read_text().splitlines()
    assert len(rejected) == 1
    assert json.loads(json.loads(rejected[0])["record"])["key"] == bad.key
    assert (tmp_path / "buffer.jsonl.rejected").stat().st_mode & 0o777 == 0o600
    await rig.sink.flush()
    logged = await rig.db.fetch("SELECT detail FROM api_logs WHERE event = 'rejected'")
    assert json.loads(logged[0]["detail"])["key"] == bad.key


async def test_dropped_table_is_recreated_and_rows_drained(rig: Rig) -> None:
    await rig.sink.write([row(0)])
    conn = await rig.db.connect()
    try:
        await conn.execute("DROP TABLE portfolio_greeks")
    finally:
        await conn.close()
    await rig.sink.write([row(1)])
    assert rig.sink.breaker.state is BreakerState.OPEN
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    assert await rig.greeks_deltas() == [1.0]


async def test_rows_left_by_a_crash_are_drained_at_start(db: TestDatabase, tmp_path: Path) -> None:
    path = tmp_path / "buffer.jsonl"
    n = 20_000  # enough that a live write racing the drain would land in the middle
    with JsonlBuffer(path) as leftover:
        leftover.append([row(i) for i in range(n)])
    store = await Store.open(db.dsn)
    await store.ensure_schema()
    buffer = JsonlBuffer(path)
    buffer.open()
    sink = DurableWriter(store, buffer, api_mode="SOCKET", clock=FakeClock(start=T0))
    try:
        # Submitted before the drain could run: it must still go behind the leftovers.
        written = sink.submit([row(n)])
        await sink.start()
        await written
        await wait_until(lambda: buffer.is_empty)
        await sink.flush()
    finally:
        await sink.stop()
        buffer.close()
        await store.close()
    rows = await db.fetch("SELECT delta FROM portfolio_greeks ORDER BY id")
    assert [r["delta"] for r in rows] == [float(i) for i in range(n + 1)]


# Without the memory queue, what the buffer cannot take is refused at once.
@pytest.mark.parametrize("memory_queue_size", [0])
async def test_disk_full_refuses_loudly_and_keeps_what_is_buffered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    seen: list[ApiEvent] = []
    rig.sink.add_listener(seen.append)
    rig.proxy.down()
    await rig.sink.write([row(0)])  # buffered
    real_append = rig.buffer.append

    def disk_full(records: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rig.buffer, "append", disk_full)
    await rig.sink.write([row(1)])
    await rig.sink.write([row(2)])
    # Two rows, and the episode's own event, which could not be buffered either.
    assert rig.sink.stats.refused_full == 3
    refused = [r.getMessage() for r in caplog.records if "buffer full, refused:" in r.getMessage()]
    assert len(refused) == 3
    assert any('"delta":1.0' in text for text in refused)
    assert any('"delta":2.0' in text for text in refused)
    assert [e.event for e in seen].count("buffer_refusing") == 1  # once per episode
    monkeypatch.setattr(rig.buffer, "append", real_append)
    await rig.sink.write([row(3)])
    assert [e.event for e in seen].count("buffer_full") == 1
    rig.proxy.up()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    assert await rig.greeks_deltas() == [0.0, 3.0]  # what was buffered survives


def enospc(records: object) -> None:
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


async def test_failing_buffer_never_blocks_a_healthy_database(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ApiEvent] = []
    rig.sink.add_listener(seen.append)
    rig.proxy.down()
    await rig.sink.write([row(0)])  # buffered
    monkeypatch.setattr(rig.buffer, "append", enospc)
    # Not durable yet: these wait in memory, behind the buffer, instead of being refused.
    waiting = [rig.sink.submit([row(i)]) for i in (1, 2)]
    await wait_until(lambda: rig.sink.stats.memory_queue_depth >= 2)
    assert not any(f.done() for f in waiting)
    assert rig.sink.stats.refused_full == 0
    assert rig.sink.stats.buffer_error is not None
    assert "No space left" in rig.sink.stats.buffer_error

    rig.proxy.up()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    for fut in waiting:
        await fut
    # The buffer still refuses appends, yet live rows go straight to the database.
    await rig.sink.write([row(3)])
    await rig.sink.write([row(4)])
    assert await rig.greeks_deltas() == [0.0, 1.0, 2.0, 3.0, 4.0]
    stats = rig.sink.stats
    assert stats.refused_full == 0
    assert stats.memory_queue_depth == 0
    assert stats.memory_queued >= 2
    assert stats.buffer_error is None
    events = [e.event for e in seen]
    assert events.count("buffer_failing") == 1  # one episode, however many appends failed
    assert events.count("buffer_recovered") == 1
    await rig.sink.flush()
    logged = await rig.db.fetch("SELECT event FROM api_logs WHERE event LIKE 'buffer_%'")
    assert sorted(r["event"] for r in logged) == ["buffer_failing", "buffer_recovered"]


async def test_live_rows_wait_in_memory_while_a_full_buffer_drains(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reproduction of issue 10: breaker CLOSED, the buffer still holding rows and
    # refusing appends; the live rows used to be refused although PostgreSQL was healthy.
    rig.proxy.down()
    for i in range(3):
        await rig.sink.write([row(i)])
    monkeypatch.setattr(rig.buffer, "append", enospc)
    rig.proxy.up()
    await rig.clock.advance(60.0)
    live = [rig.sink.submit([row(i)]) for i in range(3, 6)]
    for fut in live:
        await fut
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    assert await rig.greeks_deltas() == [float(i) for i in range(6)]
    assert rig.sink.stats.refused_full == 0


@pytest.mark.parametrize("memory_queue_size", [2])
async def test_memory_queue_is_bounded_and_what_overflows_is_refused_loudly(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ApiEvent] = []
    rig.sink.add_listener(seen.append)
    rig.proxy.down()
    await rig.sink.write([row(0)])
    await rig.sink.flush()  # the breaker's transition event is buffered too
    monkeypatch.setattr(rig.buffer, "append", enospc)
    submitted = [row(i) for i in range(1, 6)]
    for record in submitted:
        rig.sink.submit([record])
    await wait_until(lambda: "buffer_refusing" in [e.event for e in seen])
    await wait_until(lambda: not rig.sink._queue)
    stats = rig.sink.stats
    assert stats.memory_queue_depth == 2  # the bound
    refused = [r.getMessage() for r in caplog.records if "buffer full, refused:" in r.getMessage()]
    assert len(refused) == stats.refused_full >= 3  # rows, the episode's events
    assert [e.event for e in seen].count("buffer_refusing") == 1
    refused_keys = {json.loads(text.split("refused: ", 1)[1])["key"] for text in refused}

    rig.proxy.up()
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    await rig.sink.write([row(6)])
    rows = await rig.db.fetch("SELECT bridge_key, delta FROM portfolio_greeks ORDER BY id")
    stored = {r["bridge_key"] for r in rows}
    deltas = [r["delta"] for r in rows]
    assert deltas == sorted(deltas)
    assert deltas[0] == 0.0
    assert deltas[-1] == 6.0
    # Each row either reached the database or was refused (logged in full), never both.
    assert all((r.key in stored) != (r.key in refused_keys) for r in submitted)
    assert sum(r.key in stored for r in submitted) >= 1


async def test_stop_settles_the_memory_queue(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.proxy.down()
    await rig.sink.write([row(0)])
    monkeypatch.setattr(rig.buffer, "append", enospc)
    waiting = rig.sink.submit([row(1)])
    await wait_until(lambda: rig.sink.stats.memory_queue_depth > 0)
    rig.proxy.up()  # back, but the breaker waits for its retry: stop is the last chance
    await rig.sink.stop()
    assert waiting.done()
    assert rig.sink.stats.refused_full == 0
    assert await rig.greeks_deltas() == [0.0, 1.0]  # the buffered row first


async def test_stop_refuses_loudly_what_nothing_can_take(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig.proxy.down()
    monkeypatch.setattr(rig.buffer, "append", enospc)
    waiting = rig.sink.submit([row(7)])
    await wait_until(lambda: rig.sink.stats.memory_queue_depth > 0)
    await rig.sink.stop()  # returns: nothing can be written, so it is logged in full
    assert waiting.done()
    refused = [r.getMessage() for r in caplog.records if "buffer full, refused:" in r.getMessage()]
    assert any('"delta":7.0' in text for text in refused)
    assert rig.sink.stats.refused_full == len(refused)


async def test_a_failing_drain_is_one_event_and_one_traceback_per_episode(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ApiEvent] = []
    rig.sink.add_listener(seen.append)
    rig.proxy.down()
    await rig.sink.write([row(0)])
    rig.proxy.up()
    real = rig.store.ensure_schema

    async def broken() -> None:
        raise RuntimeError("the table has a shape we cannot write")

    monkeypatch.setattr(rig.store, "ensure_schema", broken)
    for _ in range(4):
        await rig.clock.advance(60.0)
        await wait_until(lambda: rig.sink.breaker.state is BreakerState.OPEN)
        await wait_until(lambda: rig.clock.sleepers > 0)
    tracebacks = [r for r in caplog.records if r.exc_info and r.name == "ibkr_bridge.storage.sink"]
    assert len(tracebacks) == 1
    failures = [e for e in seen if e.event == "error" and "draining" in e.message]
    assert len(failures) == 1

    monkeypatch.setattr(rig.store, "ensure_schema", real)
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    recovered = [e for e in seen if e.event == "drain_recovered"]
    assert len(recovered) == 1
    assert recovered[0].detail["failures"] == 4
    assert await rig.greeks_deltas() == [0.0]


async def test_unsaved_cursor_replays_without_writing_twice(
    db: TestDatabase, tmp_path: Path
) -> None:
    from ibkr_bridge.storage.drain import drain_buffer

    path = tmp_path / "buffer.jsonl"
    store = await Store.open(db.dsn)
    await store.ensure_schema()
    try:
        buffer = JsonlBuffer(path)
        buffer.open()
        buffer.append([row(i) for i in range(6)])
        # The cursor cannot be saved (as on a full disk): the drain goes on from memory.
        (tmp_path / "buffer.jsonl.cursor.tmp").mkdir()

        class Crash(Exception):
            pass

        def crash_after_two(progress: object, quarantined: int) -> None:
            if buffer.pending_bytes and buffer.count_pending() <= 2:
                raise Crash  # the process dies with two batches committed, none saved

        with pytest.raises(Crash):
            await drain_buffer(buffer, store, batch_size=2, on_batch=crash_after_two)
        assert buffer.cursor_error is not None
        assert not (tmp_path / "buffer.jsonl.cursor").exists()
        buffer.close()
        (tmp_path / "buffer.jsonl.cursor.tmp").rmdir()
        # The restart replays from the last saved place; the keys make it a no-op.
        buffer = JsonlBuffer(path)
        buffer.open()
        assert buffer.count_pending() == 6
        await drain_buffer(buffer, store, batch_size=2)
        assert buffer.is_empty
        buffer.close()
    finally:
        await store.close()
    rows = await db.fetch("SELECT delta FROM portfolio_greeks ORDER BY id")
    assert [r["delta"] for r in rows] == [float(i) for i in range(6)]
    assert not path.exists()


async def test_failing_buffer_is_retried_once_per_retry_interval(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.proxy.down()
    await rig.sink.write([row(0)])
    attempts: list[int] = []

    def counting(records: list[GreeksRow]) -> None:
        attempts.append(len(records))
        enospc(records)

    monkeypatch.setattr(rig.buffer, "append", counting)
    for i in range(1, 6):
        rig.sink.submit([row(i)])
        await wait_until(lambda: not rig.sink._queue and rig.sink._idle.is_set())
    assert len(attempts) == 1  # each try serializes the whole memory queue: not per batch
    rig.proxy.down()
    await rig.clock.advance(60.0)  # the breaker's retry fails too (still down)
    rig.sink.submit([row(6)])
    await wait_until(lambda: len(attempts) == 2)
    assert attempts[1] >= 6  # what waited in memory, then the new row, in one append
