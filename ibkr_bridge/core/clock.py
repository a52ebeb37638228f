"""Injectable clocks.

Waiting logic asks a :class:`Clock` for monotonic time and sleeps through it, so tests
can advance a :class:`FakeClock` instead of sleeping (as resilience4j's MockClock and
.NET's FakeTimeProvider do). Wall-clock time (for the nightly-reset window) comes from
the same object so one fake drives both.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import attrs


class Clock(Protocol):
    """What the bridge needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep on this clock's timeline."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic() >= deadline``."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic`` and ``datetime.now(UTC)``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class FakeClock:
    """A clock that moves only when told to.

    ``advance(seconds)`` moves both the monotonic and the wall clock and wakes every
    sleeper whose deadline has passed, in deadline order. Sleepers are plain futures on
    the running loop, so code under test runs unmodified.
    """

    def __init__(self, start: datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._mono = monotonic_start
        self._wall = start if start is not None else datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
        if self._wall.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware")
        # The wall clock is derived from one anchor, never summed step by step: timedelta
        # rounds to microseconds, and hours of 1/3 s steps would drift it from monotonic.
        self._anchor = (self._mono, self._wall)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._mono + max(0.0, seconds))

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._mono:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order and letting them run."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._mono + seconds
        while True:
            await _settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._move_to(deadline)
            fut.set_result(None)
        self._move_to(target)
        await _settle()

    def _move_to(self, mono: float) -> None:
        if mono > self._mono:
            mono0, wall0 = self._anchor
            self._wall = wall0 + timedelta(seconds=mono - mono0)
            self._mono = mono

    def set_wall(self, when: datetime) -> None:
        """Jump the wall clock (not the monotonic one), e.g. to just before 23:45 ET."""
        if when.tzinfo is None:
            raise ValueError("wall time must be timezone-aware")
        self._wall = when
        self._anchor = (self._mono, when)


ROW_TIME_STEP: Final = timedelta(microseconds=1)  # PostgreSQL timestamptz resolution


@attrs.frozen
class RowTime:
    """The timestamp one tick's rows carry, and whether it opened a step-back episode."""

    timestamp: datetime
    # Set on the first tick of an episode only: how far the wall clock was behind the
    # last timestamp written (seconds, >= 0), so the caller logs one event per episode.
    stepped_back: float | None = None


class RowTimes:
    """Strictly increasing row timestamps from a wall clock that may step back.

    The rule: a tick's timestamp is the wall clock, unless the wall clock is at or before
    the last timestamp handed out; then it is that last timestamp plus one microsecond.
    Readers can then use (contract, timestamp) as a key and ``ORDER BY timestamp`` as the
    order rows were written, even across an NTP step. An episode runs from the first tick
    that needed the rule until the wall clock is past the last timestamp again. Pure: the
    wall time is passed in.
    """

    def __init__(self) -> None:
        self._last: datetime | None = None
        self._behind = False

    @property
    def last(self) -> datetime | None:
        return self._last

    @property
    def behind(self) -> bool:
        """True while the wall clock has not caught up with the timestamps written."""
        return self._behind

    def next(self, wall: datetime) -> RowTime:
        if wall.tzinfo is None:
            raise ValueError(f"wall time must be timezone-aware, got {wall!r}")
        last = self._last
        if last is None or wall > last:
            self._last = wall
            self._behind = False
            return RowTime(wall)
        stamp = last + ROW_TIME_STEP
        self._last = stamp
        if self._behind:
            return RowTime(stamp)
        self._behind = True
        return RowTime(stamp, stepped_back=(last - wall).total_seconds())


async def _settle(rounds: int = 20) -> None:
    # Let woken tasks run until they block again on something else.
    for _ in range(rounds):
        await asyncio.sleep(0)


async def cancel_and_wait(tasks: list[asyncio.Task[None]] | list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    Cancels again while any is still running: on Python 3.11 ``asyncio.wait_for`` (in our
    code or a library's) can swallow a cancel that lands as its inner call completes.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller is stopping them, not awaiting results
