"""The Bridge: one connection lifecycle, one 5-second writer, one durable sink.

:class:`Bridge` is the async driver of the pure connection machine
(:mod:`ibkr_bridge.core.machines.connection`). It turns what the
:class:`~ibkr_bridge.feeds.protocol.Feed` reports (connected, disconnected, IB
1100/1101/1102, a probe that timed out) into the machine's triggers, sleeps until the
machine's deadlines (back-off, nightly reset) on the injectable clock, and reacts to the
machine's transitions: every transition becomes an ``api_logs`` event, entering LIVE
starts the writer task, leaving LIVE stops it. The writer is a task the driver owns, never
a loop inside a state callback.

The writer's cadence is drift-free: tick *k* is due at ``start + k * interval`` on the
monotonic clock, so a slow write never shifts later ticks; a tick that could not run on
time is logged as missed, never bunched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ibkr_bridge.config import ApiMode, Settings, load_settings
from ibkr_bridge.core.clock import Clock, RowTimes, SystemClock, cancel_and_wait
from ibkr_bridge.core.errors import LifecycleError, SchemaError, StoreError
from ibkr_bridge.core.greeks import LegProblem, LegsVerdict
from ibkr_bridge.core.machines.base import Transition
from ibkr_bridge.core.machines.breaker import BreakerState
from ibkr_bridge.core.machines.connection import ConnectionMachine, ConnectionState
from ibkr_bridge.core.records import GreeksRow, Status
from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.core.resetwindow import WatchdogPolicy
from ibkr_bridge.feeds.protocol import Feed
from ibkr_bridge.service.health import HealthServer
from ibkr_bridge.service.status import BridgeStatus, EventCallback, RowCallback, TickInfo
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store

log = logging.getLogger(__name__)

__all__ = ["Bridge", "BridgeStatus", "TickInfo", "make_feed", "watchdog_policy"]


def watchdog_policy(settings: Settings) -> WatchdogPolicy:
    return WatchdogPolicy(
        backoff=settings.backoff,
        steady_interval=settings.steady_retry,
        reset_window_start=settings.reset_window_start,
        reset_window_end=settings.reset_window_end,
        resume_at=settings.resume_at,
        tz=settings.reset_tz,
        weekly_window=settings.weekly_window,
    )


def make_feed(settings: Settings, clock: Clock) -> Feed:
    """The feed for ``settings.api_mode``."""
    if settings.api_mode is ApiMode.SOCKET:
        from ibkr_bridge.feeds.socket.feed import SocketFeed

        return SocketFeed.from_settings(settings, clock)
    from ibkr_bridge.feeds.portal.feed import PortalFeed

    return PortalFeed.from_settings(settings, clock)


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
        self._writer_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._stopping = asyncio.Event()
        self._started = False
        self._finished = False
        self._last_rows: tuple[GreeksRow, ...] = ()
        self._rows_submitted = 0
        self._ticks_missed = 0
        self._ticks_skipped = 0
        self._skip_reason: str | None = None
        self._verdict: LegsVerdict | None = None
        self._missing: dict[int, LegProblem] = {}  # open "legs_missing" episodes by conid
        self._ever_live = False
        # Kept across reconnects: row timestamps only ever increase for this bridge.
        self._row_times = RowTimes()
        self._final_pending = 0
        self._health: HealthServer | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Bridge:
        return cls(load_settings(environ), **kwargs)

    # -- public view -----------------------------------------------------------------

    @property
    def status(self) -> BridgeStatus:
        last = self._last_rows
        verdict = self._verdict
        return BridgeStatus(
            mode=self._mode,
            connection=self._machine.state.value,
            breaker=self._sink.breaker.state.value if self._sink else BreakerState.CLOSED.value,
            stale=self._machine.stale,
            account=self._feed.account,
            last_row_at=last[0].timestamp if last else None,
            last_rows=last,
            rows_submitted=self._rows_submitted,
            ticks_missed=self._ticks_missed,
            ticks_skipped=self._ticks_skipped,
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
        await self._open_storage()
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
        self._run_task = asyncio.create_task(self._lifecycle(), name="ibkr-bridge-lifecycle")

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
        self._stopping.set()
        if self._run_task is not None:
            await cancel_and_wait([self._run_task])
        await self._stop_live_tasks()
        await cancel_and_wait(list(self._side_tasks))
        await self._feed.disconnect()
        if self._machine.can("stop"):
            self._machine.stop(self._clock.monotonic(), self._clock.now())
            self._publish()
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

    async def _open_storage(self) -> None:
        s = self.settings
        self._store = await Store.open(
            **s.database.connect_kwargs(),
            connect_timeout=s.db_connect_timeout,
            command_timeout=s.db_command_timeout,
        )
        try:
            await self._store.ensure_schema()
        except SchemaError:
            await self._store.close()
            raise
        except StoreError as exc:
            # The database being down at start is an outage like any other: rows wait
            # in the buffer and the schema is ensured again before the first drain.
            log.warning("database not reachable at start (%s): buffering until it is", exc)
        buffer = JsonlBuffer(s.buffer_path, max_bytes=s.buffer_max_bytes)
        try:
            buffer.open()
        except BaseException:
            # Nothing started yet: leave nothing open behind (stop() sees no buffer).
            await self._store.close()
            raise
        self._buffer = buffer
        self._sink = DurableWriter(
            self._store,
            self._buffer,
            api_mode=self._mode,
            clock=self._clock,
            retry_interval=s.retry_interval,
            batch_size=s.batch_size,
            memory_queue_size=s.memory_queue_size,
        )
        for callback in self._event_callbacks:
            self._sink.add_listener(callback)
        await self._sink.start()
        self._sink.log_event(
            "startup",
            f"bridge starting in {self._mode} mode",
            detail={"database": s.database.redacted(), "buffer": str(s.buffer_path)},
        )

    # -- the connection lifecycle ------------------------------------------------------

    def _now(self) -> tuple[float, datetime]:
        return self._clock.monotonic(), self._clock.now()

    def _event(
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

    def _publish(self) -> None:
        for t in self._machine.pop_transitions():
            self._log_transition(t)

    def _log_transition(self, t: Transition) -> None:
        if self._sink is None:
            return
        status: Status = "info"
        if t.dest in (ConnectionState.BACKOFF.value, ConnectionState.RESET_WAIT.value):
            status = "warning"
        self._sink.log_event(
            "transition",
            f"connection {t.source} -> {t.dest} ({t.trigger})",
            status=status,
            machine="connection",
            source_state=t.source,
            dest_state=t.dest,
            detail={"trigger": t.trigger, **t.detail},
        )

    async def _lifecycle(self) -> None:
        self._feed.set_listener(self)
        self._machine.start(*self._now())
        self._publish()
        while not self._stopping.is_set():
            state = self._machine.state
            if state is ConnectionState.CONNECTING:
                await self._connect_once()
            elif state is ConnectionState.LIVE:
                await self._live()
            elif state is ConnectionState.BACKOFF:
                await self._wait_for(self._machine.wake_at)
                self._machine.retry_due(*self._now())
                self._publish()
            elif state is ConnectionState.RESET_WAIT:
                await self._wait_for(self._machine.wake_at)
                self._machine.reset_over(*self._now())
                self._publish()
            else:
                return

    async def _wait_for(self, deadline: float | None) -> None:
        if deadline is not None:
            await self._clock.sleep_until(deadline)

    async def _connect_once(self) -> None:
        attempt = self._machine.attempt
        detail = {"attempt": attempt, "host": self._describe_target()}
        self._event(
            "connect", f"connecting to IBKR ({self._mode}), attempt {attempt}", detail=detail
        )
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self._feed.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._feed.disconnect()
            reason = _describe_error(exc)
            self._event(
                "error",
                f"connect attempt {attempt} failed: {reason}",
                status="error",
                detail={**detail, "outcome": "failed", "error": reason},
            )
            self._machine.connect_failed(*self._now(), error=reason)
            self._publish()
            return
        self._lost.clear()
        self._event(
            "reconnect" if self._ever_live else "connect",
            f"connected to IBKR ({self._mode}), account {self._feed.account}",
            detail={**detail, "outcome": "connected", "account": self._feed.account},
        )
        self._ever_live = True
        self._machine.connected(*self._now())
        self._publish()

    def _describe_target(self) -> str:
        s = self.settings
        if s.api_mode is ApiMode.SOCKET:
            return f"{s.socket_host}:{s.socket_port} clientId {s.client_id}"
        return s.gateway_url

    async def _live(self) -> None:
        self._writer_task = asyncio.create_task(self._writer(), name="ibkr-bridge-ticks")
        self._probe_task = asyncio.create_task(self._prober(), name="ibkr-bridge-probe")
        try:
            await self._lost.wait()
        finally:
            await self._stop_live_tasks()
            # Not LIVE: nothing is judged until the next snapshot (open episodes stay open).
            self._verdict = None
        reason = self._lost_reason or "connection lost"
        self._event("disconnect", f"disconnected from IBKR: {reason}", status="warning")
        await self._feed.disconnect()
        self._machine.disconnected(*self._now(), reason=reason)
        self._publish()

    async def _stop_live_tasks(self) -> None:
        await cancel_and_wait([t for t in (self._writer_task, self._probe_task) if t is not None])
        self._writer_task = self._probe_task = None

    # -- FeedListener ------------------------------------------------------------------

    def feed_disconnected(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    def feed_data_lost(self, code: int, message: str) -> None:
        if self._machine.state is ConnectionState.LIVE and self._machine.can("data_lost"):
            self._machine.data_lost(self._clock.monotonic())
            self._publish()
        self._event("error", f"IB {code}: {message}", status="warning", detail={"code": code})

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        self._event("reconnect", f"IB {code}: {message}", detail={"code": code})
        if self._machine.state is ConnectionState.LIVE and self._machine.can("data_restored"):
            self._machine.data_restored(self._clock.monotonic(), resubscribe)
            self._publish()
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
        self._event(event, message, status=status, detail=detail)

    async def _resubscribe(self) -> None:
        try:
            await self._feed.resubscribe()
        except Exception as exc:
            self.feed_disconnected(f"re-subscribing market data failed: {_describe_error(exc)}")

    # -- LIVE tasks --------------------------------------------------------------------

    async def _prober(self) -> None:
        interval = self.settings.probe_interval
        timeout = self.settings.probe_timeout
        while True:
            await self._clock.sleep(interval)
            try:
                async with asyncio.timeout(timeout):
                    await self._feed.probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.feed_disconnected(
                    f"the gateway did not answer a probe within {timeout:g} s "
                    f"({_describe_error(exc)}): treating it as frozen"
                )
                return

    async def _writer(self) -> None:
        interval = self.settings.poll_interval
        start = self._clock.monotonic()
        k = 1
        while True:
            due = start + k * interval
            await self._clock.sleep_until(due)
            late = int((self._clock.monotonic() - due) // interval)
            if late > 0:
                # Ticks that could not run on time are skipped, not bunched.
                self._ticks_missed += late
                self._event(
                    "missed_ticks",
                    f"{late} tick(s) missed: the process was not scheduled on time",
                    status="warning",
                    detail={"missed": late},
                )
                k += late
            k += 1
            self._tick()

    def _tick(self) -> None:
        started = time.perf_counter()
        rows = self._tick_rows()
        info = TickInfo(
            duration=time.perf_counter() - started,
            rows=len(rows) if rows else 0,
            skipped=None if rows else self._skip_reason,
        )
        for callback in self._tick_callbacks:
            try:
                callback(info)
            except Exception:
                log.exception("tick callback failed")

    def _tick_rows(self) -> list[GreeksRow] | None:
        if self._machine.stale:
            self._skip("data is stale (IB reports lost connectivity)")
            return None
        try:
            rows = self._feed.snapshot(self._row_time())
        except Exception as exc:  # a feed bug must not end the writer
            log.exception("snapshot failed")
            self._skip(f"snapshot failed: {_describe_error(exc)}")
            return None
        verdict = getattr(self._feed, "legs_verdict", None)
        self._verdict = verdict if isinstance(verdict, LegsVerdict) else None
        announced = self._verdict is not None and self._track_legs(self._verdict)
        if rows is None:
            if self._verdict is not None and self._verdict.reason is not None:
                # A legs_missing event just said no row is written: not a second event.
                self._skip(self._verdict.reason, announce=not announced)
            else:
                self._skip("no complete market state yet (positions or Greeks pending)")
            return None
        if self._skip_reason is not None:
            self._event("resumed", "writing rows again", detail={"after": self._skip_reason})
            self._skip_reason = None
        assert self._sink is not None
        self._sink.submit(rows)
        self._rows_submitted += len(rows)
        self._last_rows = tuple(rows)
        for callback in self._row_callbacks:
            try:
                callback(rows)
            except Exception:
                log.exception("row callback failed")
        return rows

    def _row_time(self) -> datetime:
        """This tick's timestamp: the wall clock, kept strictly increasing (RowTimes)."""
        wall = self._clock.now()
        last = self._row_times.last
        stamp = self._row_times.next(wall)
        if stamp.stepped_back is not None:
            self._event(
                "clock_step",
                f"the wall clock stepped back {stamp.stepped_back:g} s; rows are stamped "
                "1 microsecond after the previous one until it catches up",
                status="warning",
                detail={
                    "behind_seconds": stamp.stepped_back,
                    "wall": wall.isoformat(),
                    "last_timestamp": last.isoformat() if last else None,
                },
            )
        return stamp.timestamp

    def _track_legs(self, verdict: LegsVerdict) -> bool:
        """One event when option legs start missing current Greeks, one when they stop.

        Returns whether a ``legs_missing`` event was logged now.
        """
        now_missing = {p.conid: p for p in verdict.missing}
        new = [p for conid, p in now_missing.items() if conid not in self._missing]
        # A leg back inside its grace (re-subscribed after a reconnect) is still missing.
        ended = [
            p
            for conid, p in self._missing.items()
            if conid not in now_missing and conid not in verdict.waiting
        ]
        policy = str(self.settings.missing_legs)
        if new:
            self._missing.update((p.conid, p) for p in new)
            consequence = (
                "rows are written without them, counted in legs_missing"
                if policy == "partial"
                else "no row is written until they have current Greeks"
            )
            self._event(
                "legs_missing",
                f"{len(new)} option leg(s) without current Greeks: "
                + "; ".join(p.describe() for p in new[:10])
                + ("; ..." if len(new) > 10 else "")
                + f"; {consequence} (BRIDGE_MISSING_LEGS={policy})",
                status="warning",
                detail={
                    "legs": [{"conid": p.conid, "name": p.name, "why": p.why} for p in new],
                    "policy": policy,
                },
            )
        if ended:
            for p in ended:
                del self._missing[p.conid]
            recovered = [p for p in ended if p.conid in verdict.legs]
            closed = [p for p in ended if p.conid not in verdict.legs]
            parts = []
            if recovered:
                parts.append("current Greeks again: " + ", ".join(p.name for p in recovered))
            if closed:
                parts.append("position closed: " + ", ".join(p.name for p in closed))
            self._event(
                "legs_recovered",
                f"{len(ended)} option leg(s) no longer missing ({'; '.join(parts)})",
                detail={
                    "recovered": [{"conid": p.conid, "name": p.name} for p in recovered],
                    "closed": [{"conid": p.conid, "name": p.name} for p in closed],
                },
            )
        return bool(new)

    def _skip(self, reason: str, *, announce: bool = True) -> None:
        self._ticks_skipped += 1
        if reason != self._skip_reason:
            self._skip_reason = reason
            if announce:
                self._event("skipped", f"not writing: {reason}", status="warning")


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
