"""The drain's cursor is saved off the event loop, overlapped with the next COPY, and still
never passes a batch the database does not hold, whatever instant a kill -9 picks."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.buffer import CopyBatch, JsonlBuffer
from ibkr_bridge.storage.drain import DrainProgress, _loop, drain_buffer
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

CHILD = Path(__file__).with_name("drain_child.py")
ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def rows(first: int, count: int) -> list[GreeksRow]:
    return [
        GreeksRow(
            timestamp=T0 + timedelta(seconds=5 * i),
            account="DU1",
            api_mode="SOCKET",
            delta=float(i),
            key=f"row-{i}",
        )
        for i in range(first, first + count)
    ]


def fill(path: Path, count: int) -> None:
    with JsonlBuffer(path) as buffer:
        for first in range(0, count, 500):
            buffer.append(rows(first, min(500, count - first)))


def saved_cursor(buffer: JsonlBuffer) -> int:
    try:
        return int(json.loads(buffer.cursor_path.read_bytes())["offset"])
    except FileNotFoundError:
        return 0


async def test_the_cursor_is_saved_while_the_next_batch_is_written_and_never_ahead(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = tmp_path / "buffer.jsonl"
    fill(path, 1200)
    store = await Store.open(db.dsn)
    await store.ensure_schema()
    written: list[int] = []  # batch ends whose COPY has returned (committed), in order
    saved: list[int] = []  # batch ends whose cursor save has started, in order
    saves: list[tuple[float, float]] = []  # when each cursor save ran
    copies: list[tuple[float, float]] = []  # when each COPY ran
    loop_threads: set[int] = set()
    thresholds: set[int] = set()  # the collector's first threshold during the COPYs
    before = gc.get_threshold()
    save_threads: set[int] = set()
    with JsonlBuffer(path) as buffer:
        commit, write_tuples = buffer.commit, store.write_tuples
        ends: dict[int, int] = {}  # id(greeks) -> end of the batch they came in

        def watched_commit(batch: Any) -> None:
            assert isinstance(batch, CopyBatch)
            save_threads.add(threading.get_ident())
            if batch.records:
                # The database holds the batch before its cursor moves, and the save is
                # at most one COPY behind (the next batch's may have finished first).
                assert batch.end in written[-2:], (written, batch.end)
            saved.append(batch.end)
            began = time.perf_counter()
            time.sleep(0.02)  # a slow disk: the next COPY must not wait for it
            commit(batch)
            saves.append((began, time.perf_counter()))

        async def watched_write(greeks: Any, events: Any, positions: Any = ()) -> None:
            loop_threads.add(threading.get_ident())
            thresholds.add(gc.get_threshold()[0])
            # No saved cursor is past what the database holds.
            assert saved_cursor(buffer) <= (written[-1] if written else 0)
            began = time.perf_counter()
            await write_tuples(greeks, events, positions)
            copies.append((began, time.perf_counter()))
            written.append(ends[id(greeks)])

        # Learn each batch's end when the drain reads it (the batch object carries it).
        real_read = _loop._read

        async def read(buf: JsonlBuffer, size: int, after: CopyBatch | None) -> CopyBatch:
            batch = await real_read(buf, size, after)
            ends[id(batch.greeks)] = batch.end
            return batch

        progress: list[DrainProgress] = []
        mp = pytest.MonkeyPatch()
        try:
            mp.setattr(buffer, "commit", watched_commit)
            mp.setattr(store, "write_tuples", watched_write)
            mp.setattr(_loop, "_read", read)
            result = await drain_buffer(
                buffer, store, batch_size=100, on_batch=lambda p, q: progress.append(p)
            )
        finally:
            mp.undo()
            await store.close()
    assert result.drained == 1200
    assert saved == sorted(saved)
    assert len(written) == 12
    overlapped = sum(any(a < d and c < b for c, d in saves) for a, b in copies)
    assert overlapped >= 5, "the COPYs waited for the cursor saves"
    assert not loop_threads & save_threads, "a cursor save ran on the event loop"
    # Young collections deferred while draining (8 batches of rows), then as they were.
    assert thresholds == {800}
    assert gc.get_threshold() == before
    # Reported once a batch's cursor is saved, in order, with the totals so far.
    assert [p.drained for p in progress] == [100 * n for n in range(1, 13)] + [1200]
    assert not path.exists()
    keys = [
        r["bridge_key"]
        for r in await db.fetch("SELECT bridge_key FROM portfolio_greeks ORDER BY id")
    ]
    assert keys == [f"row-{i}" for i in range(1200)]


async def _spawn(dsn: str, buffer: Path, batch: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        dsn,
        str(buffer),
        str(batch),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
async def test_kill_9_during_a_drain_loses_and_doubles_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    count = 20_000
    path = tmp_path / "buffer.jsonl"
    fill(path, count)
    store = await Store.open(db.dsn)
    await store.ensure_schema()
    await store.close()
    rng = random.Random(20261207)
    kills = batches_seen = 0
    for _ in range(25):
        proc = await _spawn(db.dsn, path, 40)
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        # Killed after a random number of saved batches plus a random instant, so the kill
        # lands mid-COPY or mid-save on any machine: a wall-clock delay alone let a fast
        # machine drain all 20,000 rows before ten kills. 25 kills x <= 8 batches x 40
        # rows never reach the end.
        for _ in range(rng.randint(1, 8)):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            batches_seen += line == b"batch\n"
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        if proc.returncode is None:
            proc.kill()
        out = await proc.stdout.read()
        await proc.wait()
        batches_seen += out.count(b"batch\n")
        if b"drained" in out:
            break
        kills += 1
    final = await _spawn(db.dsn, path, 5000)
    out, _ = await asyncio.wait_for(final.communicate(), timeout=120)
    assert b"drained" in out
    rows_in = await db.fetch("SELECT bridge_key, delta FROM portfolio_greeks ORDER BY id")
    deltas = [int(r["delta"]) for r in rows_in]
    assert kills == 25, "the drain ended before the kills did"
    assert batches_seen >= 25, "too little drained between the kills to prove anything"
    assert deltas == list(range(count)), "rows lost, doubled or out of order"
    assert all(r["bridge_key"] == f"row-{int(r['delta'])}" for r in rows_in)
    assert not path.exists()
