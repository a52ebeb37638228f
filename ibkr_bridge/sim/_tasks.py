"""Background-task and start/stop bookkeeping that every simulator shares.

Two pieces, meant to be used together by a simulator class:

* :class:`BackgroundTasks` owns the tasks a simulator spawns (price streams, fault
  scripts, the timed end of a fault): a failure is logged instead of lost, and
  :meth:`~BackgroundTasks.cancel_all` ends and awaits them all on ``stop()``.
* :class:`AsyncRunning` turns ``start()``/``stop()`` into ``async with sim:``.

Typical use::

    class MySimulator(AsyncRunning):
        def __init__(self) -> None:
            self._tasks = BackgroundTasks(log)

        async def start(self) -> None:
            self._tasks.spawn(self._stream_loop())

        async def stop(self) -> None:
            await self._tasks.cancel_all()
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from ibkr_bridge.core.clock import Clock


class BackgroundTasks:
    """Tasks spawned by a simulator: failures are logged, ``cancel_all`` ends them all."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many spawned tasks are still running."""
        return len(self._tasks)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task on the running loop, kept until it ends or is cancelled."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_after(
        self,
        clock: Clock,
        seconds: float,
        still_due: Callable[[], bool],
        action: Callable[[], Awaitable[None] | None],
    ) -> asyncio.Task[None]:
        """After ``seconds`` on ``clock``, run ``action`` (sync or async) if ``still_due()``.

        For the timed end of a fault: ``still_due`` says no newer fault of the same kind
        (or an explicit end) has taken over in the meantime.
        """

        async def later() -> None:
            await clock.sleep(seconds)
            if still_due():
                result = action()
                if inspect.isawaitable(result):
                    await result

        return self.spawn(later())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("simulator task failed", exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every running task and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AsyncRunning(ABC):
    """``async with`` for a class with async ``start()`` and ``stop()`` (both idempotent)."""

    @abstractmethod
    async def start(self) -> None:
        """Start serving; a second call while running does nothing."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop and release everything ``start()`` took; safe to call when stopped."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
