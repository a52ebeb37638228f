"""Draining the buffer into PostgreSQL: one function for the service, the CLI and benchmarks.

:func:`drain_buffer` copies the buffer into the database batch by batch, in order, and
advances the buffer's fsync'd cursor only after each batch's transaction committed: a
crash at any instant leads at worst to a replay of one batch, which the idempotency keys
turn into a no-op. A batch PostgreSQL refuses as data is retried line by line and each
refused line is handed to ``reject`` (it never blocks the lines behind it). A transient
failure propagates as :class:`~ibkr_bridge.errors.TransientStoreError` with everything
committed so far kept.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .buffer import JsonlBuffer
from .errors import PermanentStoreError
from .store import Store, split_raw


@attrs.frozen
class DrainProgress:
    """Running totals of one drain, reported after every batch."""

    drained: int  # lines committed to the database (replays included)
    rejected: int  # lines PostgreSQL refused as data
    quarantined: int  # unreadable lines moved to the quarantine file
    batches: int
    pending_bytes: int  # what is left in the buffer


Reject = Callable[[str, str], None]  # (the JSON line, the database's error)


class RejectedFile:
    """``<buffer>.rejected``: records PostgreSQL refused as data, kept for a human.

    One JSON object per line, ``{"error": ..., "record": <the buffer line>}``, appended
    and fsync'd, mode 0600 (the records hold account data). Usable as a :data:`Reject`.
    """

    def __init__(self, buffer_path: Path) -> None:
        self.path = Path(str(buffer_path) + ".rejected")

    def __call__(self, line: str, error: str) -> None:
        entry = json.dumps({"error": error, "record": line}, separators=(",", ":"))
        # O_NOFOLLOW: never append account data through a link planted at this name.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            os.write(fd, entry.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


async def drain_buffer(
    buffer: JsonlBuffer,
    store: Store,
    *,
    batch_size: int = 5000,
    reject: Reject | None = None,
    on_batch: Callable[[DrainProgress, int], None] | None = None,
) -> DrainProgress:
    """Drain until the buffer is empty; ``on_batch(progress, quarantined_in_batch)``."""
    drained = rejected = quarantined = batches = 0
    # Read ahead: decoding the next batch (in a thread) overlaps the database writing the
    # current one, which roughly halves the time a large drain takes.
    reading = asyncio.create_task(asyncio.to_thread(buffer.read_raw_batch, batch_size))
    try:
        while True:
            batch = await reading
            if batch.end > batch.start:
                reading = asyncio.create_task(
                    asyncio.to_thread(buffer.read_raw_batch, batch_size, after=batch)
                )
            quarantined += batch.quarantined
            if batch.lines:
                rejected += await _write(store, batch.lines, reject)
                drained += len(batch.lines)
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
                reading = asyncio.create_task(asyncio.to_thread(buffer.read_raw_batch, batch_size))
    finally:
        if not reading.done():
            # The thread itself finishes its read in the background (threads cannot be
            # cancelled); asyncio.wait never raises, so no cancel of ours is swallowed.
            reading.cancel()
            await asyncio.wait([reading])


async def _write(store: Store, lines: list[dict[str, Any]], reject: Reject | None) -> int:
    try:
        await store.write_tuples(*split_raw(lines))
        return 0
    except PermanentStoreError:
        pass
    refused = 0
    for line in lines:
        try:
            await store.write_tuples(*split_raw([line]))
        except PermanentStoreError as exc:
            refused += 1
            if reject is not None:
                reject(json.dumps(line, separators=(",", ":")), str(exc))
    return refused
