"""The bounded in-memory queue: FIFO, bounded by records, futures kept with what it holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.memqueue import MemoryQueue

T0 = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)


def rows(n: int, start: int = 0) -> list[GreeksRow]:
    return [
        GreeksRow(timestamp=T0 + timedelta(seconds=i), account="DU1", api_mode="SOCKET")
        for i in range(start, start + n)
    ]


async def test_takes_what_fits_in_order_and_hands_back_the_rest() -> None:
    queue = MemoryQueue(3)
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    first, second = rows(2), rows(2, start=2)
    assert queue.put(first, [fut]) == []
    assert queue.put(second, []) == second[1:]  # one place left
    assert len(queue) == queue.capacity == 3
    assert queue.records() == [*first, second[0]]
    extra = rows(1)
    assert queue.put(extra, []) == extra  # full: nothing more is taken
    chunk = queue.peek()
    assert chunk is not None
    assert chunk.records == first
    assert chunk.futures == [fut]
    assert queue.queued_total == 3


async def test_nothing_fits_in_a_zero_sized_queue() -> None:
    queue = MemoryQueue(0)
    batch = rows(2)
    assert queue.put(batch, []) == batch
    assert not queue
    assert queue.peek() is None


def test_only_the_oldest_chunk_leaves_and_depth_follows() -> None:
    queue = MemoryQueue(10)
    queue.put(rows(2), [])
    queue.put(rows(3), [])
    oldest = queue.peek()
    assert oldest is not None
    newest = queue.take_all()[-1]
    queue.put(rows(2), [])
    with pytest.raises(ValueError, match="oldest"):
        queue.pop(newest)
    front = queue.peek()
    assert front is not None
    front.records.clear()  # written one by one: the depth counts it until it leaves
    assert len(queue) == 2
    queue.pop(front)
    assert len(queue) == 0
    with pytest.raises(ValueError, match="capacity"):
        MemoryQueue(-1)
