"""The Bridge: one connection lifecycle, one 5-second writer, one durable sink.

:class:`Bridge` is the async driver of the pure connection machine
(:mod:`ibkr_bridge.core.machines.connection`). It turns what the
:class:`~ibkr_bridge.feeds.protocol.Feed` reports (connected, disconnected, IB
1100/1101/1102, a probe that timed out) into the machine's triggers, sleeps until the
machine's deadlines (back-off, nightly reset) on the injectable clock, and reacts to the
machine's transitions: every transition becomes an ``api_logs`` event, entering LIVE
starts the writer and probe tasks, leaving LIVE stops them. What a signal means in the
current state is the machine's decision; the driver only carries out the effects.

The lifecycle loop is :mod:`~ibkr_bridge.service._driver`; the writer
(:mod:`~ibkr_bridge.service._writer`) keeps the drift-free cadence of
:mod:`ibkr_bridge.core.cadence`; the probe is :mod:`~ibkr_bridge.service._probe`. The
Bridge is the feed's listener and the public face: status, hooks, start and stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ibkr_bridge.config import Settings, load_settings
from ibkr_bridge.core.clock import Clock, SystemClock, cancel_and_wait
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.machines.breaker import BreakerState
from ibkr_bridge.core.machines.connection import ConnectionMachine, ConnectionState
from ibkr_bridge.core.records import Status
from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.feeds.protocol import Feed
from ibkr_bridge.service._driver import ConnectionDriver
from ibkr_bridge.service._partitions import keep_partitions
from ibkr_bridge.service._probe import describe_error
from ibkr_bridge.service._setup import make_feed, open_storage, start_sink, watchdog_policy
from ibkr_bridge.service._writer import TickWriter
from ibkr_bridge.service.health import HealthServer
from ibkr_bridge.service.status import BridgeStatus, EventCallback, RowCallback, TickInfo
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store

log = logging.getLogger(__name__)

__all__ = ["Bridge", "BridgeStatus", "TickInfo", "make_feed", "watchdog_policy"]


class Bridge:
    """Connects to IBKR, writes net Greeks every poll interval while LIVE, logs everything.

    Use ``async with Bridge(settings):`` (runs in the background until the block ends) or
    ``await bridge.run()`` until another task calls ``await bridge.stop()``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        feed: Feed | None = None,
        clock: Clock | None = None,
        on_rows: RowCallback | None = None,
    ) -> None:
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self._feed: Feed = feed or make_feed(settings, self._clock)
        self._mode = settings.api_mode.value
        self._machine = ConnectionMachine(watchdog_policy(settings))
        self._row_callbacks: list[RowCallback] = [on_rows] if on_rows else []
        self._event_callbacks: list[EventCallback] = []
        self._tick_callbacks: list[Callable[[TickInfo], None]] = []
        self._sink: DurableWriter | None = None
        self._store: Store | None = None
        self._buffer: JsonlBuffer | None = None
        self._writer = TickWriter(
            feed=self._feed,
            clock=self._clock,
            machine=self._machine,
            sink=lambda: self.sink,
            events=self,
            interval=settings.poll_interval,
            missing_legs=str(settings.missing_legs),
            row_callbacks=self._row_callbacks,
            tick_callbacks=self._tick_callbacks,
        )
        self._driver = ConnectionDriver(
            settings=settings,
            clock=self._clock,
            feed=self._feed,
            machine=self._machine,
            writer=self._writer,
            listener=self,
            sink=lambda: self._sink,
        )
        self._run_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._finished = False
        self._final_pending = 0
        self._health: HealthServer | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Bridge:
        return cls(load_settings(environ), **kwargs)

    # -- public view -----------------------------------------------------------------

    @property
    def status(self) -> BridgeStatus:
        w = self._writer
        last, verdict = w.last_rows, w.verdict
        return BridgeStatus(
            mode=self._mode,
            connection=self._machine.state.value,
            breaker=self._sink.breaker.state.value if self._sink else BreakerState.CLOSED.value,
            stale=self._machine.stale,
            account=self._feed.account,
            last_row_at=last[0].timestamp if last else None,
            last_rows=last,
            rows_submitted=w.rows_submitted,
            positions_submitted=w.positions_submitted,
            ticks_missed=w.ticks_missed,
            ticks_skipped=w.ticks_skipped,
            buffer_pending_bytes=self._pending_bytes(),
            greeks_stale=verdict.stale if verdict is not None else False,
            legs_missing=tuple(p.describe() for p in verdict.missing) if verdict else (),
            degraded=verdict.reason if verdict is not None and verdict.missing else None,
        )

    def _pending_bytes(self) -> int:
        if self._buffer is None or self._finished:
            return 0 if self._buffer is None else self._final_pending
        return self._buffer.pending_bytes

    @property
    def connection_state(self) -> ConnectionState:
        return self._machine.state

    @property
    def sink(self) -> DurableWriter:
        if self._sink is None:
            raise LifecycleError("the bridge has not started")
        return self._sink

    def add_row_callback(self, callback: RowCallback) -> None:
        """Call ``callback`` with the rows of every tick (after they are handed over)."""
        self._row_callbacks.append(callback)

    def add_event_callback(self, callback: EventCallback) -> None:
        """Call ``callback`` with every ``api_logs`` event (transitions included)."""
        self._event_callbacks.append(callback)
        if self._sink is not None:
            self._sink.add_listener(callback)

    def add_tick_callback(self, callback: Callable[[TickInfo], None]) -> None:
        """Call ``callback`` after every tick of the writer."""
        self._tick_callbacks.append(callback)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the database and buffer, then run the lifecycle in a background task."""
        if self._started:
            raise LifecycleError("a Bridge can be started once; create a new one")
        self._started = True
        storage = await open_storage(
            self.settings, mode=self._mode, clock=self._clock, listeners=self._event_callbacks
        )
        self._store, self._buffer, self._sink = storage.store, storage.buffer, storage.sink
        await start_sink(self._sink, self.settings, self._mode)
        if self.settings.http_port is not None:
            # Constructed before the lifecycle starts so it counts the first transitions.
            self._health = HealthServer(
                self, host=self.settings.http_host, port=self.settings.http_port, clock=self._clock
            )
            try:
                await self._health.start()
            except OSError:
                await self.stop()
                raise
        if self._store.positions is not None:
            upkeep = asyncio.create_task(
                keep_partitions(self._store, self._sink, self._clock),
                name="ibkr-bridge-partitions",
            )
            self._side_tasks.add(upkeep)
            upkeep.add_done_callback(self._side_tasks.discard)
        self._run_task = asyncio.create_task(self._driver.run(), name="ibkr-bridge-lifecycle")

    async def run(self) -> None:
        """Run until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        assert self._run_task is not None
        try:
            await self._run_task
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop cleanly: no task left running, everything submitted made durable."""
        if self._finished:
            return
        self._finished = True
        self._driver.stopping.set()
        if self._run_task is not None:
            await cancel_and_wait([self._run_task])
        await self._driver.stop_live_tasks()
        await cancel_and_wait(list(self._side_tasks))
        await self._feed.disconnect()
        if self._machine.shutdown(*self._driver.now()):
            self._driver.publish()
        if self._sink is not None:
            self._sink.log_event("shutdown", "bridge stopped")
            await self._sink.stop()
        if self._buffer is not None:
            self._final_pending = self._buffer.pending_bytes
            self._buffer.close()
        if self._store is not None:
            await self._store.close()
        if self._health is not None:
            await self._health.stop()

    # -- FeedListener (the writer and the probe report through it too) -----------------

    def feed_disconnected(self, reason: str) -> None:
        self._driver.lose(reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        if self._machine.feed_data_lost(self._clock.monotonic()):
            self._driver.publish()
        self.feed_event("error", f"IB {code}: {message}", status="warning", detail={"code": code})

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        self.feed_event("reconnect", f"IB {code}: {message}", detail={"code": code})
        if self._machine.feed_data_restored(self._clock.monotonic(), resubscribe):
            self._driver.publish()
        if resubscribe:
            task = asyncio.create_task(self._resubscribe())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        if self._sink is not None:
            # A second guard: feeds quote gateway text redacted already (logs.gateway_text).
            message = redact_secrets(message)
            self._sink.log_event(event, message, status=status, detail=detail)

    async def _resubscribe(self) -> None:
        try:
            await self._feed.resubscribe()
        except Exception as exc:
            self.feed_disconnected(f"re-subscribing market data failed: {describe_error(exc)}")
