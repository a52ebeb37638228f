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
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from ibkr_bridge.core.clock import Clock, SystemClock, cancel_and_wait
from ibkr_bridge.core.errors import LifecycleError, PermanentStoreError, TransientStoreError
from ibkr_bridge.core.machines.breaker import BreakerState, CircuitBreaker
from ibkr_bridge.core.records import (
    ApiEvent,
    GreeksRow,
    Record,
    RecordFormatError,
    Status,
    new_key,
    record_from_json,
    record_to_json,
)
from ibkr_bridge.storage.buffer import JsonlBuffer, JsonlBufferError
from ibkr_bridge.storage.drain import DrainProgress, RejectedFile, drain_buffer
from ibkr_bridge.storage.memqueue import Chunk, MemoryQueue
from ibkr_bridge.storage.store import Store

log = logging.getLogger(__name__)

SPILL_AFTER: Final = 1.0
# More refusals in a row than this and it is the database, not the data (see above).
MAX_CONSECUTIVE_REJECTIONS: Final = 5
# Events about rejections: when one of these is itself refused, nothing more is said.
REJECTION_EVENTS: Final = frozenset({"rejected", "rejections_ended"})


@attrs.define
class _Suspect:
    """A record rejected during the current run of refusals."""

    line: str
    in_buffer: bool  # still in the buffer behind the drain's cursor (it will be read again)


def _about_rejections(records: Sequence[Record]) -> bool:
    return all(isinstance(r, ApiEvent) and r.event in REJECTION_EVENTS for r in records)


MEMORY_QUEUE_SIZE: Final = 10_000


@attrs.frozen
class SinkStats:
    """Counters for health checks and metrics."""

    written: int
    buffered: int
    drained: int
    rejected: int
    refused_full: int  # neither the buffer nor the memory queue could hold them
    quarantined: int
    memory_queued: int = 0  # records that ever waited in the memory queue
    memory_queue_depth: int = 0  # records waiting there now
    memory_queue_size: int = MEMORY_QUEUE_SIZE
    buffer_error: str | None = None  # why the buffer cannot be appended to or committed


class DurableWriter:
    """Routes records to PostgreSQL or the crash-safe buffer, guarded by the breaker."""

    def __init__(
        self,
        store: Store,
        buffer: JsonlBuffer,
        *,
        api_mode: str,
        clock: Clock | None = None,
        retry_interval: float = 60.0,
        batch_size: int = 5000,
        spill_after: float = SPILL_AFTER,
        max_consecutive_rejections: int = MAX_CONSECUTIVE_REJECTIONS,
        memory_queue_size: int = MEMORY_QUEUE_SIZE,
    ) -> None:
        self._store = store
        self._buffer = buffer
        self._api_mode = api_mode
        self._clock: Clock = clock or SystemClock()
        self._batch_size = batch_size
        self._spill_after = spill_after
        self._listeners: list[Callable[[ApiEvent], None]] = []
        self.breaker = CircuitBreaker(retry_interval=retry_interval)
        self._queue: deque[tuple[list[Record], asyncio.Future[None]]] = deque()
        self._wake_writer = asyncio.Event()
        self._wake_drain = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stragglers: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Future[None]] = set()
        self._rejected_file = RejectedFile(buffer.path)
        self._running = False
        self._stopped = False
        self._full_episode = False
        self._settling = False  # stopping: what waits in memory is written or refused
        self._memq = MemoryQueue(memory_queue_size)
        # True while the drain writes the memory queue's front: nothing may overtake it.
        self._memq_busy = False
        # The futures of the batch being routed; None once the memory queue took them.
        self._routing: list[asyncio.Future[None]] | None = None
        self._idle = asyncio.Event()
        self._buffer_error: str | None = None  # an append failed; cleared when one works
        # While failing with records in memory, the buffer is tried again once per retry
        # interval, not per batch: each try serializes the whole memory queue.
        self._retry_interval = retry_interval
        self._buffer_retry_at = 0.0
        self._buffer_episode_queued = 0  # memory_queued when the buffer episode began
        self._drain_error: str | None = None  # a drain failure episode is under way
        self._drain_failures = 0
        self._written = self._buffered = self._drained = self._drained_base = 0
        self._rejected = self._refused_full = self._quarantined = 0
        # The current run of refusals (see the module docstring).
        self._max_rejections = max_consecutive_rejections
        self._streak = 0
        self._suspects: list[_Suspect] = []
        self._episode_open = False
        self._episode_rejected = self._episode_requeued = 0
        self._batch_seen = (0, 0)  # (drained, rejected) of the drain at its last batch
        self._requeued_keys: set[str] = set()  # already in .rejected: not written twice
        self._refusals_are_data = False  # a probe found the tables take good records
        self._last_row: GreeksRow | None = None  # a record the table took: the probe's model

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._running or self._stopped:
            raise LifecycleError("a DurableWriter can be started once")
        self._running = True
        self._writer_task = asyncio.create_task(self._writer_loop(), name="ibkr-bridge-writer")
        self._drain_task = asyncio.create_task(self._drain_loop(), name="ibkr-bridge-drain")
        self._tasks = [self._writer_task, self._drain_task]
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

    def submit(self, records: Sequence[Record]) -> asyncio.Future[None]:
        """Queue records; the future resolves once they are durable. Never blocks."""
        if self._stopped:
            raise LifecycleError("the writer is stopped")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not records:
            fut.set_result(None)
            return fut
        self._queue.append((list(records), fut))
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        self._idle.clear()
        self._wake_writer.set()
        return fut

    async def write(self, records: Sequence[Record]) -> None:
        """Submit and wait until durable."""
        await self.submit(records)

    def log_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        machine: str | None = None,
        source_state: str | None = None,
        dest_state: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> asyncio.Future[None]:
        """Record one ``api_logs`` event (buffered like rows while the database is down)."""
        record = ApiEvent(
            timestamp=self._clock.now(),
            api_mode=self._api_mode,
            event=event,
            message=message,
            status=status,
            machine=machine,
            source_state=source_state,
            dest_state=dest_state,
            detail=dict(detail or {}),
        )
        level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[status]
        log.log(level, "%s: %s", event, message)
        if self._stopped:
            # Nothing is written after stop(); the service log has it.
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # an observer must not break the writer
                log.exception("event listener failed")
        return self.submit([record])

    def add_listener(self, listener: Callable[[ApiEvent], None]) -> None:
        """Call ``listener`` with every ``api_logs`` event as it is recorded (metrics, UIs)."""
        self._listeners.append(listener)

    async def flush(self) -> None:
        """Wait until everything submitted so far is durable."""
        # Futures leave the queue when a batch is taken, not when it is durable: wait
        # for every unresolved one.
        pending = list(self._pending)
        if pending:
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

    # -- the writer: live path or buffer ---------------------------------------------

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
        if self.breaker.state is not BreakerState.CLOSED or not self._buffer.is_empty or self._memq:
            self._append(batch)
            return
        write = asyncio.create_task(self._store.write(batch))
        done, _ = await asyncio.wait({write}, timeout=self._spill_after)
        if not done:
            # A stalled database: make the batch durable now; let the write finish
            # (or fail) in the background. A late commit makes the drained copy a no-op.
            self._append(batch)
            self._stragglers.add(write)
            write.add_done_callback(self._straggler_done)
            return
        exc = write.exception()
        if exc is None:
            self._written += len(batch)
            self._accepted(batch)
            return
        if isinstance(exc, TransientStoreError):
            self._append(batch)
            self._trip(exc)
        elif isinstance(exc, PermanentStoreError):
            await self._isolate(batch)
        else:
            raise exc

    def _straggler_done(self, task: asyncio.Task[None]) -> None:
        self._stragglers.discard(task)
        if task.cancelled() or self._stopped:
            # Stopped: its batch is already in the buffer; the next run drains it.
            return
        exc = task.exception()
        if isinstance(exc, TransientStoreError):
            self._trip(exc)

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
        self._buffer_retry_at = self._clock.monotonic() + self._retry_interval
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

    async def _isolate(self, batch: Sequence[Record]) -> None:
        """A batch PostgreSQL refused as data: write it row by row, reject the bad ones."""
        for i, record in enumerate(batch):
            try:
                await self._store.write([record])
            except PermanentStoreError as exc:
                try:
                    self._reject(record_to_json(record), str(exc), in_buffer=False)
                except TransientStoreError as too_many:
                    # Too many refusals in a row: the rest waits, like in an outage.
                    self._append(list(batch[i:]))
                    self._trip(too_many)
                    return
            except TransientStoreError as exc:
                # The database went away meanwhile: the rest waits in the buffer, in order.
                self._append(list(batch[i:]))
                self._trip(exc)
                return
            else:
                self._written += 1
                self._accepted([record])

    def _reject(self, line: str, error: str, *, in_buffer: bool = True) -> None:
        """Keep a refused record in ``.rejected``; raise once refusals are the environment.

        Also the drain's ``reject`` callback (its lines stay in the buffer until the batch
        commits, hence ``in_buffer``): the TransientStoreError raised here ends that drain
        with the batch uncommitted, exactly like an outage.
        """
        if self._streak >= self._max_rejections and not self._refusals_are_data:
            self._streak += 1
            self._requeue_suspects()
            raise TransientStoreError(
                f"{self._streak} records in a row refused as data: the database refuses "
                f"everything, so the records wait (last error: {error})"
            )
        obj = json.loads(line)
        self._streak += 1
        if obj.get("key") not in self._requeued_keys:
            self._rejected += 1
            self._rejected_file(line, error)
            self._episode_rejected += 1
        self._suspects.append(_Suspect(line, in_buffer))
        log.debug("refused as data (run of %d): %s: %s", self._streak, obj.get("key"), error)
        about_rejections = (
            obj.get("type") == ApiEvent.type
            and obj.get("data", {}).get("event") in REJECTION_EVENTS
        )
        if self._episode_open or about_rejections:
            return  # counted; an event about a refused event about refusals would loop
        self._episode_open = True
        path = self._rejected_file.path
        self.log_event(
            "rejected",
            f"PostgreSQL refused a record as data; kept in {path.name}: {error} "
            "(further refusals in a row are counted, not reported one by one)",
            status="error",
            detail={"key": obj.get("key"), "error": error, "file": str(path)},
        )

    def _requeue_suspects(self) -> None:
        """The run's rejected records were the environment's victims: let them wait too."""
        records: list[Record] = []
        for suspect in self._suspects:
            if suspect.in_buffer:
                continue  # the uncommitted drain batch still holds it
            try:
                records.append(record_from_json(suspect.line))
            except (RecordFormatError, ValueError, TypeError):
                continue  # unreadable as a record: it stays in .rejected only
        self._suspects.clear()
        if records:
            self._episode_requeued += len(records)
            self._requeued_keys.update(r.key for r in records)
            self._append(records)

    async def _judge_refusals(self) -> None:
        """On a probe after too many refusals in a row: environment, or bad data after all?"""
        if self._streak <= self._max_rejections or self._refusals_are_data:
            return
        now = self._clock.now()
        model = self._last_row or GreeksRow(timestamp=now, account="", api_mode=self._api_mode)
        well_formed: list[Record] = [
            attrs.evolve(model, key=new_key(), timestamp=now),
            ApiEvent(
                timestamp=now,
                api_mode=self._api_mode,
                event="probe",
                message="does the table take a well-formed record? (rolled back)",
            ),
        ]
        if not await self._store.accepts(well_formed):
            raise TransientStoreError(
                "the tables refuse well-formed records too: the records keep waiting"
            )
        # They do: the run was bad data. Reject it as such rather than block the buffer.
        self._refusals_are_data = True
        log.warning("the tables take well-formed records: the refused ones are bad data")

    def _accepted(self, records: Sequence[Record]) -> None:
        """Records were written: a run of refusals, if any, is over."""
        for record in records:
            if isinstance(record, GreeksRow):
                self._last_row = record
        if records and not _about_rejections(records):
            self._end_rejection_episode()

    def _rejections_in_batch(self, progress: DrainProgress) -> None:
        """After each committed drain batch: its lines left the buffer; did any succeed?"""
        seen = (0, 0) if progress.batches == 1 else self._batch_seen
        self._batch_seen = (progress.drained, progress.rejected)
        rejected = progress.rejected - seen[1]
        accepted = progress.drained - seen[0] - rejected
        for suspect in self._suspects:
            suspect.in_buffer = False
        if not accepted:
            return
        if not rejected:
            self._end_rejection_episode()
            return
        # Some lines went in, some were refused, order unknown: count the refusals as the
        # current run (the cautious reading, sooner treated as the environment).
        self._streak = rejected
        del self._suspects[:-rejected]

    def _end_rejection_episode(self) -> None:
        self._streak = 0
        self._suspects.clear()
        self._requeued_keys.clear()
        self._refusals_are_data = False
        if not self._episode_open:
            self._episode_rejected = self._episode_requeued = 0
            return
        rejected, requeued = self._episode_rejected, self._episode_requeued
        self._episode_open = False
        self._episode_rejected = self._episode_requeued = 0
        path = self._rejected_file.path
        again = f", {requeued} of them queued again in the buffer" if requeued else ""
        self.log_event(
            "rejections_ended",
            f"PostgreSQL accepts records again; {rejected} record(s) were refused as data "
            f"in a row and kept in {path.name}{again}",
            status="warning",
            detail={"rejected": rejected, "requeued": requeued, "file": str(path)},
        )

    # -- the breaker ------------------------------------------------------------------

    def _trip(self, exc: BaseException) -> None:
        now = self._clock.monotonic()
        if self.breaker.state is not BreakerState.OPEN:
            self.breaker.failure(now, error=str(exc))
            self._publish_transitions()
        self._wake_drain.set()

    def _publish_transitions(self) -> None:
        for t in self.breaker.pop_transitions():
            status: Status = "warning" if t.dest == BreakerState.OPEN.value else "info"
            detail = {"trigger": t.trigger, **t.detail}
            self.log_event(
                "transition",
                f"database circuit breaker {t.source} -> {t.dest} ({t.trigger})",
                status=status,
                machine="breaker",
                source_state=t.source,
                dest_state=t.dest,
                detail=detail,
            )

    # -- the drain: the single probe --------------------------------------------------

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

    async def _drain_loop(self) -> None:
        while True:
            state = self.breaker.state
            if state is BreakerState.CLOSED and self._buffer.is_empty and not self._memq:
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
            await drain_buffer(
                self._buffer,
                self._store,
                batch_size=self._batch_size,
                reject=self._reject,
                on_batch=self._drained_batch,
            )
            # Behind the buffer: what could not be appended to it.
            await self._drain_memory()
        except TransientStoreError as exc:
            if self.breaker.state is BreakerState.HALF_OPEN:
                self.breaker.failure(self._clock.monotonic(), error=str(exc))
                self._publish_transitions()
            else:
                self._trip(exc)
            return
        except Exception as exc:
            # e.g. SchemaError: a table exists in a shape we cannot write. Keep the rows,
            # say so, and try again at the next retry.
            self._drain_failed(exc)
            if self.breaker.state is BreakerState.HALF_OPEN:
                self.breaker.failure(self._clock.monotonic(), error=str(exc))
                self._publish_transitions()
            else:
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
            await drain_buffer(
                self._buffer,
                self._store,
                batch_size=self._batch_size,
                reject=self._reject,
                on_batch=self._drained_batch,
            )
            for chunk in chunks:
                await self._write_chunk(chunk)
        except Exception as exc:  # the last chance is gone: whatever the reason
            log.warning("at stop, records waiting in memory could not be written: %s", exc)
            self._refuse([record for chunk in chunks for record in chunk.records], error)
        _resolve(futures)


def _resolve(futures: Sequence[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
