"""Fault-matrix rows: the buffer's disk is full (or its cursor cannot be saved) while
PostgreSQL is down, then PostgreSQL comes back (issue 10, situation 3).

The buffer lives on a 64 KiB tmpfs this test mounts (it needs root; without it the rows
are skipped). What every row asserts on top of the harness's invariants (nothing lost,
nothing duplicated, order kept, every event in ``api_logs``, the buffer drained):

- once PostgreSQL is back, rows reach it within a few poll intervals of fake time, even
  though the disk stays full;
- nothing is refused while the database is healthy (the memory queue holds what the
  buffer cannot take while both are down);
- no traceback, and a handful of WARNING/ERROR lines for the whole episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

from ibkr_bridge.testing import TestDatabase, wait_until

from .harness import POLL, RESULTS, Case, World, assert_report, run_case

TMPFS_SIZE: Final = "64k"
RETRY: Final = 10.0  # BRIDGE_RETRY_INTERVAL in the harness
MAX_LOG_LINES: Final = 8  # WARNING and above for the whole case, transitions aside


class LogTally(logging.Handler):
    """WARNING+ lines of the bridge's loggers, and how many carried a traceback.

    The breaker's transitions are counted apart: one per retry interval of the outage,
    they say how long it lasted, not how the disk fault is reported.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []
        self.transitions = 0
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("buffer full, refused: "):
            return  # one per refused record by design; the harness counts them
        if message.startswith("transition: database circuit breaker"):
            self.transitions += 1
            return
        self.lines.append(f"{record.levelname} {record.name}: {message[:160]}")
        if record.exc_info:
            self.tracebacks += 1


@contextlib.contextmanager
def log_tally() -> Iterator[LogTally]:
    handler = LogTally()
    logger = logging.getLogger("ibkr_bridge")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def mount_tmpfs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")


def umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False)


def exists(path: Path) -> bool:
    return path.exists()


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 512)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


@attrs.define
class Figures:
    """What a case measured, for the matrix note and docs/reliability.md."""

    buffered_bytes: int = 0
    memory_peak: int = 0
    refused_while_down: int = 0
    refused_while_healthy: int = 0
    recovery_seconds: float = 0.0
    log_lines: int = 0
    breaker_lines: int = 0
    tracebacks: int = 0

    def note(self) -> str:
        return (
            f"{self.buffered_bytes} B in the buffer when the fault began; up to "
            f"{self.memory_peak} records waited in memory; refused {self.refused_while_down} "
            f"while down, {self.refused_while_healthy} while healthy; everything submitted "
            f"in PostgreSQL {self.recovery_seconds:g} s (fake) after it returned; "
            f"{self.log_lines} WARNING+ log lines besides {self.breaker_lines} breaker "
            f"transitions, {self.tracebacks} tracebacks"
        )


FIGURES: dict[str, Figures] = {}


async def on_tmpfs(w: World) -> None:
    directory = w.buffer_path.parent
    mount_tmpfs(directory)

    async def unmount() -> None:
        await asyncio.to_thread(umount, directory)

    w.cleanups.append(unmount)


def caught_up(w: World) -> bool:
    """Everything submitted so far is in PostgreSQL (or was refused)."""
    stats = w.live_bridge.sink.stats
    return (
        w.live_bridge.status.breaker == "CLOSED"
        and stats.memory_queue_depth == 0
        and w.live_bridge.status.buffer_pending_bytes == 0
        and not w.live_bridge.sink._pending
    )


async def wait_in_memory(w: World, figures: Figures, *, ticks: int) -> None:
    """Run ``ticks`` polls with the database down and the buffer refusing appends."""
    for _ in range(ticks):
        await w.ticks(1)
        figures.memory_peak = max(figures.memory_peak, w.live_bridge.sink.stats.memory_queue_depth)
    stats = w.live_bridge.sink.stats
    assert stats.memory_queue_depth > 0, "nothing waited in memory: the fault never happened"
    assert stats.buffer_error is not None
    figures.refused_while_down = stats.refused_full


async def database_returns(w: World, figures: Figures) -> None:
    """PostgreSQL comes back: within a few poll intervals everything is written."""
    refused_before = w.live_bridge.sink.stats.refused_full
    up_at = w.clock.monotonic()
    w.pg.up()
    # The breaker's next retry, then the drain (buffer, memory queue): a few polls at most.
    await w.advance_until(lambda: caught_up(w), limit=RETRY + 3 * POLL)
    figures.recovery_seconds = round(w.clock.monotonic() - up_at, 3)
    # Live rows keep flowing straight to the database.
    before = len(w.submitted)
    await w.ticks(3)
    await w.live_bridge.sink.flush()
    assert len(w.submitted) > before
    keys = {
        r["bridge_key"]
        for r in await w.db.fetch(
            "SELECT bridge_key FROM portfolio_greeks"
            " UNION ALL SELECT bridge_key FROM underlying_greeks"
        )
    }
    assert all(r.key in keys for r in w.submitted[before:]), "live rows did not reach the table"
    figures.refused_while_healthy = w.live_bridge.sink.stats.refused_full - refused_before
    assert figures.refused_while_healthy == 0, "rows were refused while the database was healthy"


async def buffer_fills_the_disk(w: World) -> None:
    """The reproduction: the buffer itself fills its 64 KiB disk while the database is down."""
    figures = FIGURES.setdefault("db-down-buffer-fills-disk", Figures())
    with log_tally() as tally:
        await w.data_ready()
        await w.ticks(1)
        w.pg.down()
        # Until an append fails for want of space (about 180 rows of this portfolio).
        await w.advance_until(
            lambda: w.live_bridge.sink.stats.buffer_error is not None, limit=3600.0
        )
        figures.buffered_bytes = w.live_bridge.status.buffer_pending_bytes
        assert "No space left on device" in str(w.live_bridge.sink.stats.buffer_error)
        await wait_in_memory(w, figures, ticks=4)
        await database_returns(w, figures)
    assert any("cannot save the buffer cursor" in line for line in tally.lines), tally.lines
    figures.log_lines, figures.tracebacks = len(tally.lines), tally.tracebacks
    figures.breaker_lines = tally.transitions
    assert tally.tracebacks == 0, tally.lines
    assert len(tally.lines) <= MAX_LOG_LINES, tally.lines


async def disk_stays_full(w: World) -> None:
    """Another program filled the disk: the buffer cannot be written before, during and
    after the outage, yet every row reaches PostgreSQL once it is back."""
    figures = FIGURES.setdefault("db-down-disk-stays-full", Figures())
    with log_tally() as tally:
        await w.data_ready()
        await w.ticks(1)
        filler = fill(w.buffer_path.parent)
        w.pg.down()
        await wait_in_memory(w, figures, ticks=6)
        await database_returns(w, figures)
        # Still full: the next append would fail, and nothing needs one.
        assert filler.exists()
        assert os.statvfs(w.buffer_path.parent).f_bavail == 0
    figures.log_lines, figures.tracebacks = len(tally.lines), tally.tracebacks
    figures.breaker_lines = tally.transitions
    assert tally.tracebacks == 0, tally.lines
    assert len(tally.lines) <= MAX_LOG_LINES, tally.lines


async def cursor_unwritable(w: World) -> None:
    """The cursor cannot be saved (its temp file's name is taken by a directory, EISDIR):
    the drain goes on from memory and the buffer empties; nothing is written twice."""
    figures = FIGURES.setdefault("db-down-cursor-unsaveable", Figures())
    blocker = Path(f"{w.buffer_path}.cursor.tmp")
    with log_tally() as tally:
        await w.data_ready()
        await w.ticks(1)
        w.pg.down()
        await w.ticks(6)
        figures.buffered_bytes = w.live_bridge.status.buffer_pending_bytes
        assert figures.buffered_bytes > 0
        os.mkdir(blocker)
        try:
            await database_returns(w, figures)
            await wait_until(lambda: not exists(w.buffer_path))
            assert not exists(Path(f"{w.buffer_path}.cursor")), "a cursor was saved after all"
        finally:
            os.rmdir(blocker)
    assert any("cannot save the buffer cursor" in line for line in tally.lines), tally.lines
    figures.log_lines, figures.tracebacks = len(tally.lines), tally.tracebacks
    figures.breaker_lines = tally.transitions
    assert tally.tracebacks == 0, tally.lines
    assert len(tally.lines) <= MAX_LOG_LINES, tally.lines


DISK_CASES = [
    Case(
        "db-down-buffer-fills-disk",
        buffer_fills_the_disk,
        # Small enough for many cursor saves, large enough to drain in a few polls.
        env={"BRIDGE_BATCH_SIZE": "16"},
        setup=on_tmpfs,
        note="buffer on a 64 KiB tmpfs it fills itself; cursor saves fail (ENOSPC) while draining",
    ),
    Case(
        "db-down-disk-stays-full",
        disk_stays_full,
        env={"BRIDGE_BATCH_SIZE": "2"},
        setup=on_tmpfs,
        note="64 KiB tmpfs filled by another file before the outage and left full",
    ),
    Case(
        "db-down-cursor-unsaveable",
        cursor_unwritable,
        env={"BRIDGE_BATCH_SIZE": "2"},
        note="every cursor save fails (EISDIR) during the drain",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in DISK_CASES])
async def test_disk_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    report = await run_case(case, db, tmp_path)
    figures = FIGURES.get(case.id)
    if figures is not None and RESULTS and RESULTS[-1].case == case.id:
        # The matrix's note carries this run's figures (docs/reliability.md quotes them).
        RESULTS[-1] = attrs.evolve(RESULTS[-1], note=f"{case.note}; {figures.note()}")
        print(f"\n{case.id}: {figures.note()}")
    assert_report(report)
