"""The durable writer's shared state, its ``api_logs`` events and its use of the breaker.

Every part of :class:`~ibkr_bridge.storage.sink.DurableWriter` (the live path, the spill
path, rejection episodes, the drain) builds on :class:`_WriterCore`: the state they share,
:meth:`~_WriterCore.submit` and :meth:`~_WriterCore.log_event`, through which every part
reports, and :meth:`~_WriterCore._trip`, which hands a failure to the pure breaker and
publishes the transitions it records.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from ibkr_bridge.config import default_of
from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.machines.breaker import (
    BreakerState,
    CircuitBreaker,
    Route,
)
from ibkr_bridge.core.records import ApiEvent, GreeksRow, Record, Status
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import RejectedFile
from ibkr_bridge.storage.memqueue import MemoryQueue
from ibkr_bridge.storage.store import Store

# One logger for the whole package: operators' logging configuration knows this name.
log = logging.getLogger("ibkr_bridge.storage.sink")

SPILL_AFTER: Final = 1.0
# More refusals in a row than this and it is the database, not the data (see the package).
MAX_CONSECUTIVE_REJECTIONS: Final = 5
# Events about rejections: when one of these is itself refused, nothing more is said.
REJECTION_EVENTS: Final = frozenset({"rejected", "rejections_ended"})
# The settings' defaults, for a writer built without Settings (tests, tools, benchmarks).
MEMORY_QUEUE_SIZE: Final[int] = default_of("memory_queue_size")
RETRY_INTERVAL: Final[float] = default_of("retry_interval")
BATCH_SIZE: Final[int] = default_of("batch_size")


@attrs.define
class _Suspect:
    """A record rejected during the current run of refusals."""

    line: str
    in_buffer: bool  # still in the buffer behind the drain's cursor (it will be read again)


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


class _WriterCore:
    """The state every part of the writer shares, and what they all report through."""

    def __init__(
        self,
        store: Store,
        buffer: JsonlBuffer,
        *,
        api_mode: str,
        clock: Clock | None = None,
        retry_interval: float = RETRY_INTERVAL,
        batch_size: int = BATCH_SIZE,
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
        self._writer_task: asyncio.Task[None] | None = None
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
        # interval (the breaker's), not per batch: each try serializes the whole memory queue.
        self._buffer_retry_at = 0.0
        self._buffer_episode_queued = 0  # memory_queued when the buffer episode began
        self._drain_error: str | None = None  # a drain failure episode is under way
        self._drain_failures = 0
        self._written = self._buffered = self._drained = self._drained_base = 0
        self._rejected = self._refused_full = self._quarantined = 0
        # The current run of refusals (see the package docstring).
        self._max_rejections = max_consecutive_rejections
        self._streak = 0
        self._suspects: list[_Suspect] = []
        self._episode_open = False
        self._episode_rejected = self._episode_requeued = 0
        self._batch_seen = (0, 0)  # (drained, rejected) of the drain at its last batch
        self._requeued_keys: set[str] = set()  # already in .rejected: not written twice
        self._refusals_are_data = False  # a probe found the tables take good records
        self._last_row: GreeksRow | None = None  # a record the table took: the probe's model

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

    # -- the breaker: failures in, transitions out --------------------------------------

    def _route_now(self) -> Route:
        """The breaker's routing decision, given whether anything waits (buffer or memory)."""
        return self.breaker.route(buffer_empty=not self._memq and self._buffer.is_empty)

    def _trip(self, exc: BaseException) -> None:
        """A write or a drain failed: the breaker decides what that changes."""
        if self.breaker.trip(self._clock.monotonic(), error=str(exc)):
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


def _resolve(futures: Sequence[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
