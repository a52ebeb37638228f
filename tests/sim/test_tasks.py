"""BackgroundTasks and AsyncRunning: the task bookkeeping the simulators share."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim._tasks import AsyncRunning, BackgroundTasks

log = logging.getLogger("test_tasks")


async def test_a_spawned_task_runs_and_is_forgotten_once_done() -> None:
    tasks = BackgroundTasks(log)
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    task = tasks.spawn(work())
    assert len(tasks) == 1
    await task
    assert ran == [1]
    assert len(tasks) == 0


async def test_a_failing_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks(log)

    async def fail() -> None:
        raise RuntimeError("boom")

    task = tasks.spawn(fail())
    with caplog.at_level(logging.ERROR, logger="test_tasks"):
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    (record,) = [r for r in caplog.records if r.name == "test_tasks"]
    assert record.getMessage() == "simulator task failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_cancel_all_cancels_and_awaits_every_task() -> None:
    tasks = BackgroundTasks(log)
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    first, second = tasks.spawn(forever("a")), tasks.spawn(forever("b"))
    await asyncio.sleep(0)
    await tasks.cancel_all()
    assert sorted(ended) == ["a", "b"]
    assert first.cancelled()
    assert second.cancelled()
    assert len(tasks) == 0


async def test_spawn_after_runs_the_action_on_the_clock_if_still_due() -> None:
    clock = FakeClock()
    tasks = BackgroundTasks(log)
    calls: list[str] = []

    async def later() -> None:
        calls.append("async")

    tasks.spawn_after(clock, 5.0, lambda: True, lambda: calls.append("sync"))
    tasks.spawn_after(clock, 5.0, lambda: True, later)
    tasks.spawn_after(clock, 5.0, lambda: False, lambda: calls.append("superseded"))
    await clock.advance(4.9)
    assert calls == []
    await clock.advance(0.1)
    await asyncio.sleep(0)
    assert sorted(calls) == ["async", "sync"]
    assert len(tasks) == 0


async def test_spawn_after_asks_still_due_when_the_time_comes_not_before() -> None:
    clock = FakeClock()
    tasks = BackgroundTasks(log)
    generation = [1]
    calls: list[int] = []
    tasks.spawn_after(clock, 1.0, lambda: generation[0] == 1, lambda: calls.append(1))
    generation[0] = 2  # a newer fault of the same kind took over
    await clock.advance(1.0)
    await asyncio.sleep(0)
    assert calls == []


class _Service(AsyncRunning):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_async_with_starts_and_stops_even_on_error() -> None:
    service = _Service()
    async with service as entered:
        assert entered is service
        assert service.calls == ["start"]
    assert service.calls == ["start", "stop"]
    with pytest.raises(ValueError, match="inside"):
        async with service:
            raise ValueError("inside")
    assert service.calls == ["start", "stop", "start", "stop"]
