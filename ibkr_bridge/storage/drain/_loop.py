"""The drain loop: buffer batches to PostgreSQL in order, the cursor moved after each commit.

Reading runs one batch ahead of writing, overlapped on the event loop itself: the lines
are taken from the file in a worker thread (a few ``pread`` calls, no GIL held), then
decoded into COPY tuples in slices of :data:`_SLICE` lines with a yield to the loop between
slices, while the previous batch's COPY is in flight. The decoding is Python work and
would hold the GIL in a thread just the same; on the loop it never makes the COPY's
callbacks wait for a GIL hand-over (up to the 5 ms switch interval each time), and the
server, a process of its own, ingests one batch while the next is being decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import attrs

from ibkr_bridge.config import default_of
from ibkr_bridge.core.errors import PermanentStoreError
from ibkr_bridge.storage.buffer import CopyBatch, JsonlBuffer
from ibkr_bridge.storage.buffer._copy import CopyDecoder, reject_text
from ibkr_bridge.storage.store import EventTuple, GreeksTuple, PositionTuple, Store

# Lines decoded between two yields to the event loop: about a millisecond of work, so the
# COPY's callbacks (and the rest of the bridge) never wait longer than that.
_SLICE: Final = 500
BATCH_SIZE: Final[int] = default_of("batch_size")  # BRIDGE_BATCH_SIZE


@attrs.frozen
class DrainProgress:
    """Running totals of one drain, reported after every batch."""

    drained: int  # lines committed to the database (replays included)
    rejected: int  # lines PostgreSQL refused as data
    quarantined: int  # unreadable lines moved to the quarantine file
    batches: int
    pending_bytes: int  # what is left in the buffer


Reject = Callable[[str, str], None]  # (the JSON line, the database's error)


async def drain_buffer(
    buffer: JsonlBuffer,
    store: Store,
    *,
    batch_size: int = BATCH_SIZE,
    reject: Reject | None = None,
    on_batch: Callable[[DrainProgress, int], None] | None = None,
) -> DrainProgress:
    """Drain until the buffer is empty; ``on_batch(progress, quarantined_in_batch)``."""
    drained = rejected = quarantined = batches = 0
    reading = asyncio.create_task(_read(buffer, batch_size, None))
    try:
        while True:
            batch = await reading
            if batch.end > batch.start:
                # Read ahead: the next batch is decoded while this one is written.
                reading = asyncio.create_task(_read(buffer, batch_size, batch))
            quarantined += batch.quarantined
            if batch.records:
                rejected += await _write(store, batch, reject)
                drained += batch.records
            buffer.commit(batch)
            batches += 1
            progress = DrainProgress(drained, rejected, quarantined, batches, buffer.pending_bytes)
            if on_batch is not None:
                on_batch(progress, batch.quarantined)
            if batch.end == batch.start:
                # Nothing was left when that read ran. Appends happen on this thread, so
                # checking now and returning are one step: nothing can slip in between.
                if buffer.is_empty:
                    return progress
                reading = asyncio.create_task(_read(buffer, batch_size, None))
    finally:
        if not reading.done():
            # A read cancelled between its steps changed nothing; one in its worker thread
            # finishes there (threads cannot be cancelled). asyncio.wait never raises, so
            # no cancel of ours is swallowed.
            reading.cancel()
            await asyncio.wait([reading])


async def _read(buffer: JsonlBuffer, batch_size: int, after: CopyBatch | None) -> CopyBatch:
    """The batch after ``after`` (or at the cursor) as COPY tuples, bad lines quarantined."""
    span = await asyncio.to_thread(buffer.take_lines, batch_size, after=after)
    decoder = CopyDecoder(span.checksummed)
    bad = []
    for lo in range(0, len(span.lines), _SLICE):
        if lo:
            await asyncio.sleep(0)
        bad += decoder.decode(span.lines, lo, min(lo + _SLICE, len(span.lines)))
    if bad:  # the quarantine is fsync'd: off the loop
        return await asyncio.to_thread(buffer.settle, span, decoder, bad)
    return buffer.settle(span, decoder, bad)


async def _write(store: Store, batch: CopyBatch, reject: Reject | None) -> int:
    """Write the batch in one transaction; if PostgreSQL refuses it as data, line by line."""
    try:
        await store.write_tuples(batch.greeks, batch.events, batch.positions)
        return 0
    except PermanentStoreError:
        pass
    refused = 0
    # In the lines' order (a tuple's first item is its seq): one refused line never blocks
    # the lines behind it.
    singles: list[tuple[int, list[GreeksTuple], list[EventTuple], list[PositionTuple]]] = sorted(
        [(g[0], [g], [], []) for g in batch.greeks]
        + [(e[0], [], [e], []) for e in batch.events]
        + [(p[0], [], [], [p]) for p in batch.positions],
        key=lambda one: one[0],
    )
    for seq, greeks, events, positions in singles:
        try:
            await store.write_tuples(greeks, events, positions)
        except PermanentStoreError as exc:
            refused += 1
            if reject is not None:
                reject(reject_text(batch.lines[seq], batch.checksummed), str(exc))
    return refused
