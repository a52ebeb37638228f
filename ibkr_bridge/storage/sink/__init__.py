"""The durable writer: every record reaches PostgreSQL exactly once, in order.

It is the async driver of the pure circuit breaker
(:mod:`ibkr_bridge.core.machines.breaker`): it owns the IO (the
:class:`~ibkr_bridge.storage.store.Store` and the
:class:`~ibkr_bridge.storage.buffer.JsonlBuffer`) and translates what happens into the
breaker's triggers, and the breaker's transitions into ``api_logs`` events.

Routing, for each batch handed to :meth:`DurableWriter.submit` (in submission order):

- breaker CLOSED and nothing buffered: written straight to PostgreSQL. If that write has
  not finished after ``spill_after`` seconds, the batch is also appended to the buffer
  (fsync'd), so a stalled database never holds un-persisted rows for long; should the slow
  write commit after all, draining the copy is a no-op thanks to the idempotency key.
- anything else (breaker OPEN or HALF_OPEN, or rows already waiting): appended to the
  buffer behind what is there, so order is kept.
- the buffer cannot be appended to (size cap, disk full, I/O error): the batch waits in the
  bounded in-memory queue (:mod:`ibkr_bridge.storage.memqueue`, ``memory_queue_size`` records),
  behind what is buffered. The drain writes the buffer, then the memory queue, into
  PostgreSQL as soon as it is reachable, so a failing buffer never keeps rows from a
  healthy database; should the buffer accept appends first, the memory queue moves into
  it. Only what does not fit in memory either is refused: counted, logged in full, one
  event per episode. Records in memory are not durable: their futures resolve once they
  are committed or buffered (at :meth:`stop` they go to the buffer, else the database,
  else they are refused).

A transient failure opens the breaker and the batch goes to the buffer. Every
``retry_interval`` the breaker lets exactly one probe through (HALF_OPEN): the drain,
which re-checks the schema, then copies the buffer into PostgreSQL batch by batch,
advancing the buffer's fsync'd cursor only after each commit. When the buffer is empty
the breaker closes; a failure re-opens it. A record PostgreSQL refuses as data (a
permanent error) never trips the breaker and never blocks the rows behind it: its batch is
retried row by row, the refused rows are written to ``<buffer>.rejected`` (mode 0600) and
reported in ``api_logs``.

Rejections come in *episodes*, never in loops: the first refusal of a run emits one
``rejected`` event, the next ones are only counted, and the first record accepted again
ends the run with one ``rejections_ended`` event carrying the count. A refused event about
rejections emits nothing at all. More than ``max_consecutive_rejections`` refusals in a
row (:data:`MAX_CONSECUTIVE_REJECTIONS`) is no longer believed to be bad data: a table
that refuses everything (a CHECK or trigger gone wrong) is the environment, so the breaker
opens and the records wait. The rows of that run that were already rejected are queued
again in the buffer, ahead of the rest, so they arrive too once the cause is removed (their
lines stay in ``.rejected``; replaying them is a no-op). Each probe then first asks whether
the tables take a well-formed record at all (:meth:`Store.accepts`, rolled back): if they
do, the run really was bad data (a burst of garbage from the gateway), and it is rejected
as such instead of blocking the buffer for ever.

A record is *durable* once committed or fsync'd into the buffer; the future returned by
:meth:`submit` resolves then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ibkr_bridge.core.clock import cancel_and_wait
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.records import ApiEvent, Record
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink._base import (
    MAX_CONSECUTIVE_REJECTIONS,
    MEMORY_QUEUE_SIZE,
    REJECTION_EVENTS,
    SPILL_AFTER,
    SinkStats,
)
from ibkr_bridge.storage.sink._drainer import _DrainSupervisor
from ibkr_bridge.storage.sink._live import _LivePath

__all__ = [
    "MAX_CONSECUTIVE_REJECTIONS",
    "MEMORY_QUEUE_SIZE",
    "REJECTION_EVENTS",
    "SPILL_AFTER",
    "DurableWriter",
    "SinkStats",
]


class DurableWriter(_LivePath, _DrainSupervisor):
    """Routes records to PostgreSQL or the crash-safe buffer, guarded by the breaker."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._running or self._stopped:
            raise LifecycleError("a DurableWriter can be started once")
        self._running = True
        self._drain_task = asyncio.create_task(self._drain_loop(), name="ibkr-bridge-drain")
        self._tasks = [self._drain_task]
        self._start_writer()
        if not self._buffer.is_empty:
            self.log_event("buffer", "rows left in the buffer by an earlier run: draining")

    async def stop(self) -> None:
        """Persist everything submitted so far (database or buffer), then stop."""
        if not self._running:
            self._stopped = True
            return
        # The drain stops first, so that what waits in memory stays put while it is settled.
        await self._routed()
        await cancel_and_wait([self._drain_task])
        self._settling = True
        while self._memq:
            await self._release_memory()
            await self._routed()  # the events that settling emitted
        await self.flush()
        self._running = False
        self._stopped = True
        await cancel_and_wait(self._tasks)
        if self._stragglers:
            await asyncio.gather(*self._stragglers, return_exceptions=True)

    async def __aenter__(self) -> DurableWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- public API -------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Submit and wait until durable."""
        await self.submit(records)

    def add_listener(self, listener: Callable[[ApiEvent], None]) -> None:
        """Call ``listener`` with every ``api_logs`` event as it is recorded (metrics, UIs)."""
        self._listeners.append(listener)

    async def flush(self) -> None:
        """Wait until everything submitted so far is durable."""
        # Futures leave the queue when a batch is taken, not when it is durable: wait
        # for every unresolved one.
        pending = list(self._pending)
        if len(pending) == 1:
            # One tick's batch (the usual case): awaited directly, a loop iteration
            # sooner than through gather's outer future.
            await _settled(pending[0])
        elif pending:
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def stats(self) -> SinkStats:
        return SinkStats(
            written=self._written,
            buffered=self._buffered,
            drained=self._drained,
            rejected=self._rejected,
            refused_full=self._refused_full,
            quarantined=self._quarantined,
            memory_queued=self._memq.queued_total,
            memory_queue_depth=len(self._memq),
            memory_queue_size=self._memq.capacity,
            buffer_error=self._buffer_error or self._buffer.cursor_error,
        )

    @property
    def buffer(self) -> JsonlBuffer:
        return self._buffer


async def _settled(fut: asyncio.Future[None]) -> None:
    """Wait for ``fut`` as ``gather(fut, return_exceptions=True)`` would, without its hop."""
    try:
        await fut
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller was cancelled, not (only) the future
    except Exception:  # its submitter sees it; flush only waits
        pass
