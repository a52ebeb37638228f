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
    stall: asyncio.TimerHandle | None = None  # spills the batch if the write stalls


class _LivePath(_Rejections):
    """The writer task: takes submitted batches in order and routes each one.

    A live write runs inside the writer task itself, not in a task of its own: that
    task's first step would be one more loop iteration between the tick's hand-off and
    the statement, each one a chance for a burst of stream decoding to run first. If the
    write stalls past ``spill_after``, its batch is made durable in the buffer and a new
    writer task takes over the queue; the stalled one finishes its write as a straggler
    and then ends.
    """

    def _start_writer(self) -> None:
        writer = asyncio.create_task(self._writer_loop(), name="ibkr-bridge-writer")
        self._tasks = [writer, *(t for t in self._tasks if t is not self._writer_task)]
        self._writer_task = writer

    async def _writer_loop(self) -> None:
        me = asyncio.current_task()
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
                    if me is not self._writer_task:
                        raise  # a straggler's: its batch is durable in the buffer
                    log.exception("unexpected error while writing a batch")
                    for fut in futures:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if me is not self._writer_task:
                    return  # superseded while stalled; the queue is the new writer's
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
        # One tick (or the few queued behind it): one round trip where it can be. The
        # commit settles the batch (its futures) in the step the database's answer arrives.
        live = _LiveWrite(batch, self._routing)
        live.stall = stall = asyncio.get_running_loop().call_later(
            self._spill_after, self._stalled, live
        )
        failure: TransientStoreError | PermanentStoreError
        try:
            await self._store.write_live(batch, on_commit=lambda: self._committed(live))
            return
        except (TransientStoreError, PermanentStoreError) as exc:
            failure = exc
        finally:
            stall.cancel()  # before isolating row by row: that is not a stall
        if isinstance(failure, TransientStoreError):
            if not live.spilled:
                self._append(batch)
            elif self._stopped:
                return  # its batch is already in the buffer; the next run drains it
            self._trip(failure)
        elif not live.spilled:  # else the drain isolates the buffered copy's bad rows
            await self._isolate(batch)

    def _stalled(self, live: _LiveWrite) -> None:
        """A stalled database: make the batch durable now, hand the queue to a new writer.

        The write goes on in this task; a late commit makes the drained copy a no-op.
        """
        live.spilled = True
        straggler = self._writer_task
        assert straggler is not None  # the timer is armed by the writer task
        try:
            self._append(live.batch)
        except Exception as exc:  # a timer callback: nobody else would see it
            log.exception("unexpected error while spilling a stalled batch")
            for fut in live.futures or ():
                if not fut.done():
                    fut.set_exception(exc)
        else:
            if self._routing is not None:  # not left waiting in memory
                _resolve(live.futures or ())
        self._stragglers.add(straggler)
        straggler.add_done_callback(self._straggler_done)
        self._start_writer()

    def _committed(self, live: _LiveWrite) -> None:
        if live.stall is not None:
            live.stall.cancel()  # durable: the connection's release is no stall
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
        if exc is not None:  # the database's errors were handled in _route
            log.error("unexpected error in a stalled write", exc_info=exc)
