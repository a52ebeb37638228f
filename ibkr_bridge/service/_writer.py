"""The tick writer: every poll interval while LIVE, one snapshot handed to the durable sink.

:class:`TickWriter` keeps the writer's counters and episodes across reconnects (the
driver runs :meth:`TickWriter.run` as a task while LIVE and cancels it on leaving LIVE).
The cadence is the pure :class:`~ibkr_bridge.core.cadence.Cadence`: tick *k* is due at
``start + k * interval``, and ticks that could not run on time are logged as missed,
never bunched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from ibkr_bridge.core.cadence import Cadence
from ibkr_bridge.core.clock import Clock, RowTimes
from ibkr_bridge.core.greeks import LegsVerdict
from ibkr_bridge.core.machines.connection import ConnectionMachine
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds.protocol import Feed, FeedListener
from ibkr_bridge.service._legs import LegEpisodes
from ibkr_bridge.service._probe import describe_error
from ibkr_bridge.service.status import RowCallback, TickInfo
from ibkr_bridge.storage.sink import DurableWriter

__all__ = ["TickWriter"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class TickWriter:
    """Writes the feed's rows on a drift-free cadence and says why when it cannot."""

    def __init__(
        self,
        *,
        feed: Feed,
        clock: Clock,
        machine: ConnectionMachine,
        sink: Callable[[], DurableWriter],
        events: FeedListener,
        interval: float,
        missing_legs: str,
        row_callbacks: Sequence[RowCallback],
        tick_callbacks: Sequence[Callable[[TickInfo], None]],
    ) -> None:
        self._feed = feed
        self._clock = clock
        self._machine = machine
        self._sink = sink
        self._events = events
        self._interval = interval
        self._row_callbacks = row_callbacks
        self._tick_callbacks = tick_callbacks
        self._legs = LegEpisodes(events, missing_legs)
        # Kept across reconnects: row timestamps only ever increase for this bridge.
        self._row_times = RowTimes()
        self.last_rows: tuple[GreeksRow, ...] = ()
        self.rows_submitted = 0
        self.positions_submitted = 0  # position_greeks rows (BRIDGE_POSITION_ROWS)
        self.ticks_missed = 0
        self.ticks_skipped = 0
        self.skip_reason: str | None = None
        # From the last tick; None when not LIVE (nothing is judged until the next one).
        self.verdict: LegsVerdict | None = None

    async def run(self) -> None:
        """Tick until cancelled."""
        cadence = Cadence(self._clock.monotonic(), self._interval)
        k = 1
        while True:
            await self._clock.sleep_until(cadence.due(k))
            wake = cadence.woke(k, self._clock.monotonic())
            if wake.missed:
                self.ticks_missed += wake.missed
                self._events.feed_event(
                    "missed_ticks",
                    f"{wake.missed} tick(s) missed: the process was not scheduled on time",
                    status="warning",
                    detail={"missed": wake.missed},
                )
            k = wake.next_k
            self.tick()

    def tick(self) -> None:
        """One tick: write the rows (or skip), then tell the tick callbacks."""
        started = time.perf_counter()
        rows = self._tick_rows()
        info = TickInfo(
            duration=time.perf_counter() - started,
            rows=len(rows) if rows else 0,
            skipped=None if rows else self.skip_reason,
        )
        _call_each(self._tick_callbacks, info, "tick")

    def _tick_rows(self) -> list[GreeksRow] | None:
        if self._machine.stale:
            self._skip("data is stale (IB reports lost connectivity)")
            return None
        try:
            rows = self._feed.snapshot(self._row_time())
        except Exception as exc:  # a feed bug must not end the writer
            log.exception("snapshot failed")
            self._skip(f"snapshot failed: {describe_error(exc)}")
            return None
        verdict = getattr(self._feed, "legs_verdict", None)
        self.verdict = verdict if isinstance(verdict, LegsVerdict) else None
        announced = self.verdict is not None and self._legs.track(self.verdict)
        if rows is None:
            if self.verdict is not None and self.verdict.reason is not None:
                # A legs_missing event just said no row is written: not a second event.
                self._skip(self.verdict.reason, announce=not announced)
            else:
                self._skip("no complete market state yet (positions or Greeks pending)")
            return None
        if self.skip_reason is not None:
            self._events.feed_event(
                "resumed", "writing rows again", detail={"after": self.skip_reason}
            )
            self.skip_reason = None
        positions = getattr(self._feed, "position_rows", None) or []
        # One submission, so one transaction: the net never lands without its legs.
        self._sink().submit([*rows, *positions] if positions else rows)
        self.rows_submitted += len(rows)
        self.positions_submitted += len(positions)
        self.last_rows = tuple(rows)
        _call_each(self._row_callbacks, rows, "row")
        return rows

    def _row_time(self) -> datetime:
        """This tick's timestamp: the wall clock, kept strictly increasing (RowTimes)."""
        wall = self._clock.now()
        last = self._row_times.last
        stamp = self._row_times.next(wall)
        if stamp.stepped_back is not None:
            self._events.feed_event(
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

    def _skip(self, reason: str, *, announce: bool = True) -> None:
        self.ticks_skipped += 1
        if reason != self.skip_reason:
            self.skip_reason = reason
            if announce:
                self._events.feed_event("skipped", f"not writing: {reason}", status="warning")


def _call_each(callbacks: Sequence[Callable[[T], None]], value: T, what: str) -> None:
    # An observer's bug must not end the writer.
    for callback in callbacks:
        try:
            callback(value)
        except Exception:
            log.exception("%s callback failed", what)
