"""The drain loop: buffer batches to PostgreSQL in order, the cursor moved after each commit.

Reading runs one batch ahead of writing, overlapped on the event loop itself: the lines
are taken from the file in a worker thread (a few ``pread`` calls, no GIL held), then
decoded into COPY tuples in slices of :data:`_SLICE` lines with a yield to the loop between
slices, while the previous batch's COPY is in flight. The decoding is Python work and
would hold the GIL in a thread just the same; on the loop it never makes the COPY's
callbacks wait for a GIL hand-over (up to the 5 ms switch interval each time), and the
server, a process of its own, ingests one batch while the next is being decoded.

A batch's cursor is saved (two fsyncs) in a worker thread once its COPY has committed,
while the loop goes on with the next batch's COPY: the server is not left idle for them.
Saves run one at a time and in batch order, so the cursor never passes a batch the
database does not hold; a kill -9 before a save is on disk replays that batch and the one
being written, and the idempotency keys make both replays no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Iterator
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
log = logging.getLogger(__name__)
# Batches of rows the cyclic collector lets be allocated between two young collections
# while draining (see _young_collections_deferred).
_GC_BATCHES: Final = 8
_GC_MOST: Final = 50_000  # whatever the batch size: garbage in cycles waits no longer
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
    """Drain until the buffer is empty; ``on_batch(progress, quarantined_in_batch)``.

    ``on_batch`` is called once a batch's cursor is saved, in batch order.
    """
    with _young_collections_deferred(batch_size):
        return await _drain(buffer, store, batch_size, reject, on_batch)


@contextlib.contextmanager
def _young_collections_deferred(batch_size: int) -> Iterator[None]:
    """Raise the collector's first threshold while draining; restore it afterwards.

    Each decoded row is a tuple the cyclic collector tracks, and two batches of them are
    alive at a time (one decoded, one being written), so with the default threshold (700)
    every 700 rows a young collection walks hundreds of live tuples, never garbage: about
    0.4 us of CPU per row, a tenth of the drain's own (measured). Rows die when their COPY
    is done, which gives the allocation count back, so a threshold above a few batches
    lets the drain run with next to no collections. Only the timing of collections
    changes; a threshold someone else set meanwhile is left as it is.
    """
    first, *rest = gc.get_threshold()
    if first == 0:  # automatic collection is off: leave it so
        yield
        return
    ours = max(first, min(_GC_BATCHES * batch_size, _GC_MOST))
    gc.set_threshold(ours, *rest)
    try:
        yield
    finally:
        now, *rest_now = gc.get_threshold()
        if now == ours:
            gc.set_threshold(first, *rest_now)


async def _drain(
    buffer: JsonlBuffer,
    store: Store,
    batch_size: int,
    reject: Reject | None,
    on_batch: Callable[[DrainProgress, int], None] | None,
) -> DrainProgress:
    totals = DrainProgress(0, 0, 0, 0, 0)
    reading = asyncio.create_task(_read(buffer, batch_size, None))
    # The cursor of the batch last written, saved in a worker thread while the next
    # batch's COPY runs. Each save starts only once its batch's COPY has committed and the
    # save before it has finished: the cursor moves in order and never past the database.
    saving: asyncio.Task[DrainProgress] | None = None
    try:
        while True:
            batch = await reading
            if batch.end > batch.start:
                # Read ahead: the next batch is decoded while this one is written.
                reading = asyncio.create_task(_read(buffer, batch_size, batch))
            rejected = await _write(store, batch, reject) if batch.records else 0
            if saving is not None:
                totals = await asyncio.shield(saving)
            saving = asyncio.create_task(_save(buffer, batch, rejected, totals, on_batch))
            if batch.end == batch.start:
                totals = await asyncio.shield(saving)
                saving = None
                # Nothing was left when that read ran. Appends happen on this thread, so
                # checking now and returning are one step: nothing can slip in between.
                if buffer.is_empty:
                    return totals
                reading = asyncio.create_task(_read(buffer, batch_size, None))
    finally:
        # A read cancelled between its steps changed nothing; one in its worker thread
        # finishes there (threads cannot be cancelled). A cursor save is never cancelled
        # (shielded): it is waited for, so the drain never returns with one still running.
        # asyncio.wait never raises, so no cancel of ours is swallowed.
        if not reading.done():
            reading.cancel()
        await asyncio.wait([t for t in (reading, saving) if t is not None])
        failed = None if saving is None or saving.cancelled() else saving.exception()
        if failed is not None and failed is not sys.exc_info()[1]:
            # Another exception is on its way out and stays the one raised; this one is
            # not dropped silently.
            log.error("saving the buffer cursor failed as well", exc_info=failed)


async def _save(
    buffer: JsonlBuffer,
    batch: CopyBatch,
    rejected: int,
    totals: DrainProgress,
    on_batch: Callable[[DrainProgress, int], None] | None,
) -> DrainProgress:
    """Advance the cursor past a batch PostgreSQL has committed, then report it.

    The fsyncs run in a worker thread: the event loop goes on feeding the next COPY. A
    kill -9 before the cursor is on disk replays this batch (and the one being written),
    which the idempotency keys make a no-op.
    """
    await asyncio.to_thread(buffer.commit, batch)
    progress = DrainProgress(
        totals.drained + batch.records,
        totals.rejected + rejected,
        totals.quarantined + batch.quarantined,
        totals.batches + 1,
        buffer.pending_bytes,
    )
    if on_batch is not None:
        on_batch(progress, batch.quarantined)
    return progress


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
