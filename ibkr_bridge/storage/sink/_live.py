"""The live write path: batches go straight to PostgreSQL while the breaker allows it.

A direct write that has not finished after ``spill_after`` seconds is also spilled to the
buffer; a transient failure spills the batch and trips the breaker; a refusal as data
isolates the bad rows.
"""

from __future__ import annotations

import asyncio

import attrs

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.machines.breaker import Route
from ibkr_bridge.core.records import Record
from ibkr_bridge.storage.sink._base import _resolve, log
from ibkr_bridge.storage.sink._rejections import _Rejections


@attrs.define
class _LiveWrite:
    """A batch on its way to PostgreSQL, and whether it was spilled meanwhile."""

    batch: list[Record]
    futures: list[asyncio.Future[None]] | None
    spilled: bool = False


class _LivePath(_Rejections):
    """The writer task: takes submitted batches in order and routes each one."""

    async def _writer_loop(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._queue:
                batch: list[Record] = []
                futures: list[asyncio.Future[None]] = []
                while self._queue:
                    records, fut = self._queue.popleft()
                    batch.extend(records)
                    futures.append(fut)
                self._routing = futures
                try:
                    await self._route(batch)
                except Exception as exc:  # never let one batch kill the loop
                    log.exception("unexpected error while writing a batch")
                    for fut in futures:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if self._routing is not None:  # not left waiting in memory
                    _resolve(futures)

    async def _routed(self) -> None:
        """Wait until every batch submitted so far has been routed."""
        while self._queue or not self._idle.is_set():
            self._idle.clear()
            self._wake_writer.set()
            await self._idle.wait()

    async def _route(self, batch: list[Record]) -> None:
        if self._route_now() is Route.BUFFER:
            self._append(batch)
            return
        # One tick (or the few queued behind it): one round trip where it can be. A
        # commit settles the batch inside the write's own task, in the step the
        # database's answer arrives: its futures resolve without waiting for the task's
        # done callbacks and this task's wake-up (two more loop iterations, each one a
        # chance for a burst of stream decoding to run first).
        live = _LiveWrite(batch, self._routing)
        write = asyncio.create_task(self._write_live(live))
        done, _ = await asyncio.wait({write}, timeout=self._spill_after)
        if not done:
            # A stalled database: make the batch durable now; let the write finish
            # (or fail) in the background. A late commit makes the drained copy a no-op.
            live.spilled = True
            self._append(batch)
            self._stragglers.add(write)
            write.add_done_callback(self._straggler_done)
            return
        exc = write.exception()
        if exc is None:
            return  # settled by _write_live
        if isinstance(exc, TransientStoreError):
            self._append(batch)
            self._trip(exc)
        elif isinstance(exc, PermanentStoreError):
            await self._isolate(batch)
        else:
            raise exc

    async def _write_live(self, live: _LiveWrite) -> None:
        await self._store.write_live(live.batch)
        if live.spilled:
            return  # already durable in the buffer; the drained copy will be a no-op
        self._written += len(live.batch)
        self._accepted(live.batch)
        if live.futures is not None:
            _resolve(live.futures)

    def _straggler_done(self, task: asyncio.Task[None]) -> None:
        self._stragglers.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even when stopped: asyncio would log it
        if self._stopped:
            # Stopped: its batch is already in the buffer; the next run drains it.
            return
        if isinstance(exc, TransientStoreError):
            self._trip(exc)
