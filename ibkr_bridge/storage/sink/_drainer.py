"""Drain supervision: the drain task is the breaker's single probe.

It waits while nothing waits, sleeps until the retry is due while the breaker is OPEN,
and otherwise copies the buffer, then the memory queue, into PostgreSQL; an empty buffer
closes the breaker, a failure re-opens it. Failing drains are one episode, one event.
"""

from __future__ import annotations

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.machines.breaker import BreakerState, Route
from ibkr_bridge.core.records import record_to_json
from ibkr_bridge.storage.buffer import JsonlBufferError
from ibkr_bridge.storage.drain import DrainProgress, drain_buffer
from ibkr_bridge.storage.memqueue import Chunk
from ibkr_bridge.storage.sink._base import _resolve, log
from ibkr_bridge.storage.sink._rejections import _Rejections


class _DrainSupervisor(_Rejections):
    """The drain task and what it does at stop with records still in memory."""

    def _drained_batch(self, progress: DrainProgress, quarantined: int) -> None:
        self._drained = self._drained_base + progress.drained - progress.rejected
        self._rejections_in_batch(progress)
        if quarantined:
            self._quarantined += quarantined
            self.log_event(
                "quarantine",
                f"{quarantined} unreadable buffer line(s) moved to {self._buffer.quarantine_path}",
                status="error",
                detail={"lines": quarantined, "file": str(self._buffer.quarantine_path)},
            )

    async def _drain_buffer(self) -> None:
        await drain_buffer(
            self._buffer,
            self._store,
            batch_size=self._batch_size,
            reject=self._reject,
            on_batch=self._drained_batch,
        )

    async def _drain_loop(self) -> None:
        while True:
            state = self.breaker.state
            if self._route_now() is Route.DIRECT:  # nothing waits: nothing to drain
                self._wake_drain.clear()
                await self._wake_drain.wait()
                continue
            if state is BreakerState.OPEN:
                deadline = self.breaker.next_retry_at
                if deadline is not None and self._clock.monotonic() < deadline:
                    await self._clock.sleep_until(deadline)
                self.breaker.retry_due(self._clock.monotonic())
                self._publish_transitions()
                continue
            if state is BreakerState.HALF_OPEN and not self.breaker.probe_held:
                # This task is the only prober, so acquiring cannot be refused here; the
                # machine still enforces "one probe at a time" for any other driver.
                self.breaker.try_acquire_probe(self._clock.monotonic())
                self._publish_transitions()
            await self._drain_once()

    async def _drain_once(self) -> None:
        probing = self.breaker.state is BreakerState.HALF_OPEN
        self._drained_base = self._drained
        try:
            if probing:
                # Someone may have dropped a table while we were down: recreate it.
                await self._store.ensure_schema()
                await self._judge_refusals()
            await self._drain_buffer()
            # Behind the buffer: what could not be appended to it.
            await self._drain_memory()
        except Exception as exc:
            if not isinstance(exc, TransientStoreError):
                # e.g. SchemaError: a table exists in a shape we cannot write. Keep the
                # rows, say so, and try again at the next retry.
                self._drain_failed(exc)
            self._trip(exc)
            return
        # Buffer and memory queue empty: nothing awaits between the checks that found them
        # so and this, so no new row can slip in ahead of the state change.
        if self.breaker.state is BreakerState.HALF_OPEN:
            self.breaker.drained(self._clock.monotonic())
            self._publish_transitions()
        self._end_drain_episode()
        # Live writes may go straight to the database from now on, so no append would
        # end a refusal episode: the empty buffer does.
        self._end_refusal_episode()
        self._end_buffer_episode("every record that waited in memory is in the database")

    def _drain_failed(self, exc: BaseException) -> None:
        """One traceback and one event per episode of failing drains, however many retries."""
        self._drain_failures += 1
        if self._drain_error is not None:
            log.debug("drain failed again (%d in a row): %s", self._drain_failures, exc)
            return
        self._drain_error = str(exc)
        log.error("drain failed", exc_info=exc)
        self.log_event(
            "error",
            f"draining the buffer failed: {exc} (retried every retry interval; reported "
            "again only once it works)",
            status="error",
            detail={"error": str(exc)},
        )

    def _end_drain_episode(self) -> None:
        if self._drain_error is not None:
            failures, error = self._drain_failures, self._drain_error
            self._drain_error, self._drain_failures = None, 0
            self.log_event(
                "drain_recovered",
                f"the buffer drains again after {failures} failed attempts (first: {error})",
                detail={"failures": failures, "error": error},
            )

    async def _drain_memory(self) -> None:
        """Write the memory queue into PostgreSQL, oldest first; the buffer is empty."""
        self._memq_busy = True  # new batches queue behind, not into the buffer ahead
        try:
            while (chunk := self._memq.peek()) is not None:
                await self._write_chunk(chunk)
                self._memq.pop(chunk)
                _resolve(chunk.futures)
        finally:
            self._memq_busy = False

    async def _write_chunk(self, chunk: Chunk) -> None:
        """Write a chunk; a record refused as data is rejected, never blocking the rest.

        A transient failure propagates with ``chunk.records`` cut to what is not written
        yet, so a retry neither rejects a record twice nor skips one.
        """
        try:
            await self._store.write(chunk.records)
        except PermanentStoreError:
            pass
        else:
            self._written += len(chunk.records)
            chunk.records.clear()
            return
        while chunk.records:
            record = chunk.records[0]
            try:
                await self._store.write([record])
            except PermanentStoreError as exc:
                self._reject(record_to_json(record), str(exc))
            else:
                self._written += 1
            del chunk.records[0]

    async def _release_memory(self) -> None:
        """At stop: what waits in memory goes to the buffer, else to the database (after
        what is buffered), else it is refused: logged in full, never dropped silently."""
        chunks = self._memq.take_all()
        records = [record for chunk in chunks for record in chunk.records]
        futures = [fut for chunk in chunks for fut in chunk.futures]
        try:
            self._buffer.append(records)
        except (JsonlBufferError, OSError) as exc:
            error = str(exc)
        else:
            self._buffered += len(records)
            _resolve(futures)
            return
        try:
            await self._drain_buffer()
            for chunk in chunks:
                await self._write_chunk(chunk)
        except Exception as exc:  # the last chance is gone: whatever the reason
            log.warning("at stop, records waiting in memory could not be written: %s", exc)
            self._refuse([record for chunk in chunks for record in chunk.records], error)
        _resolve(futures)
