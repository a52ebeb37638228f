"""The spill path: a batch that cannot go to PostgreSQL waits in the buffer, else in memory.

When the buffer cannot take it either (size cap, disk full, I/O error) the batch waits in
the bounded memory queue; what does not fit there is refused, logged in full. Each of these
situations is an episode with one event when it begins and one when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from ibkr_bridge.core.records import Record, record_to_json
from ibkr_bridge.storage.buffer import JsonlBufferError
from ibkr_bridge.storage.sink._base import _resolve, _WriterCore, log


class _SpillPath(_WriterCore):
    """Makes batches wait, in order: in the buffer, else in memory, else refused."""

    def _append(self, batch: list[Record]) -> None:
        """Make a batch wait: in the buffer, else in memory, else refuse it (logged)."""
        retry_due = self._clock.monotonic() >= self._buffer_retry_at
        if not self._memq_busy and (self._buffer_error is None or not self._memq or retry_due):
            # What waits in memory is older than this batch: it goes into the buffer first.
            held = self._memq.records()
            try:
                self._buffer.append([*held, *batch])
            except (JsonlBufferError, OSError) as exc:
                self._buffer_failed(exc)
            else:
                for chunk in self._memq.take_all():
                    _resolve(chunk.futures)
                self._buffered += len(held) + len(batch)
                self._end_buffer_episode("the buffer accepts records again")
                self._end_refusal_episode()
                self._wake_drain.set()
                return
        left = self._memq.put(batch, self._routing or [])
        if len(left) < len(batch):
            self._routing = None  # their futures resolve once the records are durable
            self._wake_drain.set()
        if left:
            self._refuse(left)
        else:
            self._end_refusal_episode()

    def _buffer_failed(self, exc: BaseException) -> None:
        """An append failed: the first failure of an episode is one event, the rest silent."""
        first = self._buffer_error is None
        self._buffer_error = str(exc)
        self._buffer_retry_at = self._clock.monotonic() + self.breaker.retry_interval
        # Without a memory queue the refusal episode's event says it all.
        if first and self._memq.capacity:
            self._buffer_episode_queued = self._memq.queued_total
            self.log_event(
                "buffer_failing",
                f"cannot append to the buffer ({exc}); records wait in memory (at most "
                f"{self._memq.capacity}) and go to the database as soon as it is reachable",
                status="error",
                detail={
                    "error": str(exc),
                    "path": str(self._buffer.path),
                    "memory_queue_size": self._memq.capacity,
                },
            )

    def _end_buffer_episode(self, how: str) -> None:
        if self._buffer_error is not None:
            self._buffer_error = None
            if not self._memq.capacity:
                return
            waited = self._memq.queued_total - self._buffer_episode_queued
            self.log_event(
                "buffer_recovered",
                f"{how}; {waited} records waited in memory meanwhile",
                detail={"memory_queued": waited},
            )

    def _refuse(self, records: Sequence[Record], error: str | None = None) -> None:
        # Documented policy: what is buffered is kept; records that neither the buffer nor
        # the memory queue can hold are refused, counted, and written in full to the
        # service log, never silently dropped. The episode is reported at once; that event
        # reaches the database or, if it cannot, the service log.
        self._refused_full += len(records)
        for record in records:
            # This prefix is what docs/operations.md's recovery recipe looks for.
            log.error("buffer full, refused: %s", record_to_json(record))
        if not self._full_episode:
            self._full_episode = True
            why = error or self._buffer_error or "the buffer is busy"
            self.log_event(
                "buffer_refusing",
                f"cannot buffer records ({why}) and the memory queue is full "
                f"({self._memq.capacity} records); refusing them until there is room again "
                "(each refused record is in the service log)",
                status="error",
                detail={"error": why, "path": str(self._buffer.path)},
            )

    def _end_refusal_episode(self) -> None:
        """Report a refusal episode once records fit again or the buffer drained empty."""
        # While stopping, "fitting again" only means the episode's own event reached the
        # memory queue, to be refused once more: reporting it would loop.
        if self._full_episode and not self._settling:
            self._full_episode = False
            self.log_event(
                "buffer_full",
                f"the buffer accepts records again; {self._refused_full} records were refused "
                "in all (each is in the service log)",
                status="error",
                detail={"refused_total": self._refused_full},
            )
