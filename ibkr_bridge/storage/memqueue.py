"""The bounded in-memory queue: where records wait when neither PostgreSQL nor the buffer
can take them (the database down while the buffer's disk is full or failing).

It is the last resort before refusing a record, and deliberately small and dumb:

- bounded by a number of records (``BRIDGE_MEMORY_QUEUE_SIZE``); what does not fit is
  handed back to the caller, which refuses it loudly (logged in full, counted);
- strictly first in, first out: everything in it is newer than everything in the buffer
  and older than anything submitted later, so the writer empties it, front first, into
  whichever recovers first (the buffer, or the database once the buffer is drained);
- not durable: a record here is not acknowledged. The futures of the batches it holds
  stay pending until the records are committed or fsync'd into the buffer.

It does no IO and knows nothing of asyncio beyond carrying the futures, so the writer
decides every move.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

import attrs

from ibkr_bridge.core.records import Record


@attrs.define(eq=False)
class Chunk:
    """Records routed together, and the futures that resolve once they are durable."""

    records: list[Record]  # shrinks from the front as the writer gets records written
    futures: list[asyncio.Future[None]]
    size: int  # records counted in the queue's depth until the chunk leaves it


class MemoryQueue:
    """A FIFO of :class:`Chunk`\\ s holding at most ``capacity`` records in all."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._chunks: deque[Chunk] = deque()
        self._depth = 0
        self.queued_total = 0  # records ever accepted (the metric)

    def __len__(self) -> int:
        """Records held now."""
        return self._depth

    def __bool__(self) -> bool:
        return self._depth > 0

    @property
    def room(self) -> int:
        return self.capacity - self._depth

    def put(
        self, records: Sequence[Record], futures: Sequence[asyncio.Future[None]]
    ) -> list[Record]:
        """Queue as many records as fit, in order; returns those that did not fit.

        The futures go with the accepted part (when nothing fits they are not kept: the
        caller settles them with the refusal).
        """
        taken = list(records[: max(self.room, 0)])
        if taken:
            self._chunks.append(Chunk(taken, list(futures), len(taken)))
            self._depth += len(taken)
            self.queued_total += len(taken)
        return list(records[len(taken) :])

    def peek(self) -> Chunk | None:
        """The oldest chunk, left in place (it leaves only once it is durable elsewhere)."""
        return self._chunks[0] if self._chunks else None

    def pop(self, chunk: Chunk) -> None:
        """Remove ``chunk``, which must be the oldest one."""
        if not self._chunks or self._chunks[0] is not chunk:
            raise ValueError("only the oldest chunk can leave the memory queue")
        self._chunks.popleft()
        self._depth -= chunk.size

    def take_all(self) -> list[Chunk]:
        """Empty the queue, oldest first (the caller makes every chunk durable or refuses it)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._depth = 0
        return chunks

    def records(self) -> list[Record]:
        """Every record held, oldest first."""
        return [record for chunk in self._chunks for record in chunk.records]
