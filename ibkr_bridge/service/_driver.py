"""The connection lifecycle loop: the async driver of the pure connection machine.

:class:`ConnectionDriver` runs one connect attempt at a time, sleeps until the machine's
deadlines, starts the writer and probe tasks on entering LIVE and stops them on leaving
it, and turns every transition into an ``api_logs`` event. What an event means in the
current state (which trigger, whether any) is the machine's decision, never the driver's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from ibkr_bridge.config import Settings
from ibkr_bridge.core.clock import Clock, cancel_and_wait
from ibkr_bridge.core.machines.connection import (
    ConnectionMachine,
    ConnectionState,
    transition_status,
)
from ibkr_bridge.feeds.protocol import Feed, FeedListener
from ibkr_bridge.service._probe import describe_error, probe_until_frozen
from ibkr_bridge.service._setup import describe_target
from ibkr_bridge.service._writer import TickWriter
from ibkr_bridge.storage.sink import DurableWriter

__all__ = ["ConnectionDriver"]


class ConnectionDriver:
    """Drives ``machine`` for ``feed``; events go to ``listener.feed_event``."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        feed: Feed,
        machine: ConnectionMachine,
        writer: TickWriter,
        listener: FeedListener,
        sink: Callable[[], DurableWriter | None],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._feed = feed
        self._machine = machine
        self._writer = writer
        self._listener = listener
        self._sink = sink
        self._mode = settings.api_mode.value
        self._live_tasks: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._ever_live = False
        self.stopping = asyncio.Event()

    def now(self) -> tuple[float, datetime]:
        return self._clock.monotonic(), self._clock.now()

    def publish(self) -> None:
        """Log every transition the machine recorded since the last call."""
        sink = self._sink()
        for t in self._machine.pop_transitions():
            if sink is not None:
                sink.log_event(
                    "transition",
                    f"connection {t.source} -> {t.dest} ({t.trigger})",
                    status=transition_status(t),
                    machine="connection",
                    source_state=t.source,
                    dest_state=t.dest,
                    detail={"trigger": t.trigger, **t.detail},
                )

    def lose(self, reason: str) -> None:
        """The connection is gone (or frozen): end LIVE; the first reason given is kept."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def run(self) -> None:
        """The lifecycle, until :attr:`stopping` is set or the machine stops."""
        self._feed.set_listener(self._listener)
        self._machine.start(*self.now())
        self.publish()
        while not self.stopping.is_set():
            state = self._machine.state
            if state is ConnectionState.CONNECTING:
                await self._connect_once()
            elif state is ConnectionState.LIVE:
                await self._live()
            elif self._machine.waiting:
                if self._machine.wake_at is not None:
                    await self._clock.sleep_until(self._machine.wake_at)
                self._machine.wake(*self.now())
                self.publish()
            else:
                return

    async def stop_live_tasks(self) -> None:
        tasks, self._live_tasks = self._live_tasks, []
        await cancel_and_wait(tasks)

    async def _connect_once(self) -> None:
        attempt = self._machine.attempt
        detail = {"attempt": attempt, "host": describe_target(self._settings)}
        event = self._listener.feed_event
        event("connect", f"connecting to IBKR ({self._mode}), attempt {attempt}", detail=detail)
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await self._feed.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._feed.disconnect()
            reason = describe_error(exc)
            event(
                "error",
                f"connect attempt {attempt} failed: {reason}",
                status="error",
                detail={**detail, "outcome": "failed", "error": reason},
            )
            self._machine.connect_failed(*self.now(), error=reason)
            self.publish()
            return
        self._lost.clear()
        event(
            "reconnect" if self._ever_live else "connect",
            f"connected to IBKR ({self._mode}), account {self._feed.account}",
            detail={**detail, "outcome": "connected", "account": self._feed.account},
        )
        self._ever_live = True
        self._machine.connected(*self.now())
        self.publish()

    async def _live(self) -> None:
        s = self._settings
        probe = probe_until_frozen(
            self._feed,
            self._clock,
            self._listener,
            interval=s.probe_interval,
            timeout=s.probe_timeout,
        )
        self._live_tasks = [
            asyncio.create_task(self._writer.run(), name="ibkr-bridge-ticks"),
            asyncio.create_task(probe, name="ibkr-bridge-probe"),
        ]
        try:
            await self._lost.wait()
        finally:
            await self.stop_live_tasks()
            # Not LIVE: nothing is judged until the next snapshot (open episodes stay open).
            self._writer.verdict = None
        reason = self._lost_reason or "connection lost"
        self._listener.feed_event(
            "disconnect", f"disconnected from IBKR: {reason}", status="warning"
        )
        await self._feed.disconnect()
        self._machine.disconnected(*self.now(), reason=reason)
        self.publish()
