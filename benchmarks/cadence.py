"""Cadence jitter: the bridge's writer in real time against a bare asyncio loop, same run.

    python benchmarks/cadence.py                 # 10 minutes at BRIDGE_POLL_INTERVAL 5 s
    python benchmarks/cadence.py --minutes 1     # a quick look

The real Bridge (SocketFeed over ib_async, the DurableWriter into PostgreSQL, the system
clock) runs in this process against the IB Gateway simulator in a subprocess
(``python -m ibkr_bridge.sim socket --port 0``, its built-in demo book) for ``--minutes``.
The writer's tick *k* is due at ``start + k * interval`` on the monotonic clock; ``start``
is read exactly from the deadlines the writer task sleeps until (the clock handed to the
Bridge notes them). For each tick the script measures:

- row timestamp jitter: the wall-clock timestamp of the tick's rows, as read back from
  ``portfolio_greeks``, minus the wall-clock equivalent of ``start + k * interval``;
- callback jitter: the monotonic time at which the tick callback ran (after the snapshot
  and the hand-over to the writer) minus ``start + k * interval``;

and prints p50/p99/max in ms, missed and skipped ticks, and rows in the table against
rows expected (ticks due x rows per tick).

Baseline, in the same run and the same event loop: a bare loop that does
``await asyncio.sleep(deadline - time.monotonic())`` to the very same deadlines (what
``SystemClock.sleep_until`` does) and notes how late it woke. That is the floor the
event loop and the machine give; the bridge's p99 is printed as a ratio of it. Both wake
in the same loop iteration, one after the other: the script counts the wake-ups where the
bridge's tick ran first (its work is then inside the baseline's figure);
``--baseline-offset 2.5`` runs the bare loop half an interval later so they never meet.
There is no numeric target for cadence jitter: the figures show whether ticks stay on
schedule.

Exit status 1 when a correctness check failed (rows in the table differ from rows
submitted, the writer restarted, no tick ran): the figures of that run must not be quoted.

Uses ``IBKR_BRIDGE_TEST_DSN``, ``DATABASE_URL`` or the test server (127.0.0.1:5432), else
an embedded PostgreSQL; works in a private schema that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import attrs

from ibkr_bridge.config import load_settings
from ibkr_bridge.core.clock import SystemClock
from ibkr_bridge.service.bridge import Bridge, TickInfo
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

# The name bridge.py gives its writer task: the only task whose sleep_until deadlines
# are the tick schedule (the lifecycle's back-off waits and the prober use other tasks).
WRITER_TASK: Final = "ibkr-bridge-ticks"
_LISTENING: Final = re.compile(r"^listening (\S+):(\d+)\s*$")


# -- shared helpers (recovery.py imports these) -------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (a value that occurred, never an interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class SimProcess:
    """A simulator in a subprocess that prints ``listening HOST:PORT`` on stdout when ready.

    Later stdout lines are queued in :attr:`lines` (a control protocol may use them);
    stderr (its log) is read continuously so a full pipe never blocks the child, and its
    tail is shown if the child dies before it is ready.
    """

    def __init__(self, proc: asyncio.subprocess.Process, host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.tail: deque[str] = deque(maxlen=30)
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, args: Sequence[str], timeout: float = 60.0) -> SimProcess:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        tail: deque[str] = deque(maxlen=30)
        err_reader = asyncio.create_task(_collect(proc.stderr, tail))
        try:
            host, port = await asyncio.wait_for(_read_listening(proc.stdout), timeout)
        except BaseException:
            proc.kill()
            await proc.wait()
            await err_reader
            raise RuntimeError("the simulator did not start:\n" + "".join(tail)) from None
        sim = cls(proc, host, port)
        sim.tail = tail
        sim._readers = [err_reader, asyncio.create_task(sim._queue_lines(proc.stdout))]
        return sim

    async def _queue_lines(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.put_nowait(line.decode(errors="replace").rstrip("\n"))

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    def cpu_seconds(self) -> float | None:
        """User+system CPU time of the simulator so far (Linux /proc), or None."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _read_listening(stream: asyncio.StreamReader) -> tuple[str, int]:
    while True:
        line = (await stream.readline()).decode(errors="replace")
        if not line:
            raise RuntimeError("the simulator exited before listening")
        found = _LISTENING.match(line)
        if found:
            return found.group(1), int(found.group(2))


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode(errors="replace"))


def socket_simulator_args(log_level: str = "WARNING", *extra: str) -> list[str]:
    """``python -m ibkr_bridge.sim socket --port 0`` (the built-in demo book unless
    ``extra`` names a ``--portfolio``), plus any other ``extra`` socket options."""
    return [
        sys.executable,
        "-m",
        "ibkr_bridge.sim",
        "--log-level",
        log_level,
        "socket",
        "--port",
        "0",
        "--seed",
        "1",
        *extra,
    ]


# -- the measurement -----------------------------------------------------------------------


class ScheduleClock(SystemClock):
    """The system clock, noting the deadlines the bridge's writer task sleeps until."""

    def __init__(self, on_writer_deadline: Callable[[float], None]) -> None:
        self._on_writer_deadline = on_writer_deadline

    async def sleep_until(self, deadline: float) -> None:
        task = asyncio.current_task()
        if task is not None and task.get_name() == WRITER_TASK:
            self._on_writer_deadline(deadline)
        await super().sleep_until(deadline)


class Cadence:
    """The writer's schedule and what happened on it, plus the bare-loop baseline."""

    def __init__(self, interval: float, ticks_due: int, baseline_offset: float = 0.0) -> None:
        self.interval = interval
        self.ticks_due = ticks_due
        self.baseline_offset = baseline_offset
        self.start: float | None = None  # monotonic start of the writer's schedule
        self.wall_offset_start = 0.0  # time.time() - time.monotonic() at start
        self.started = asyncio.Event()
        self.off_schedule = 0  # writer deadlines not on start + k * interval: a restart
        self.callbacks: dict[int, tuple[float, TickInfo]] = {}  # k -> (jitter s, info)
        self.ran_at: dict[int, float] = {}  # k -> monotonic time of the tick callback
        self.baseline: dict[int, float] = {}  # k -> jitter s
        self.baseline_missed = 0
        self.baseline_second = 0  # wake-ups where the bridge's tick k had already run
        self._baseline_task: asyncio.Task[None] | None = None

    def on_writer_deadline(self, deadline: float) -> None:
        if self.start is None:
            # The writer's first deadline is start + 1 * interval.
            self.start = deadline - self.interval
            self.wall_offset_start = time.time() - time.monotonic()
            self._baseline_task = asyncio.create_task(
                self._baseline(self.start + self.baseline_offset)
            )
            self.started.set()
            return
        k = (deadline - self.start) / self.interval
        if abs(k - round(k)) > 1e-6:
            self.off_schedule += 1

    def on_tick(self, info: TickInfo) -> None:
        now = time.monotonic()
        if self.start is None:
            return
        k = round((now - self.start) / self.interval)
        if 1 <= k <= self.ticks_due:
            self.callbacks[k] = (now - (self.start + k * self.interval), info)
            self.ran_at[k] = now

    async def _baseline(self, start: float) -> None:
        k = 1
        while k <= self.ticks_due:
            due = start + k * self.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            woke = time.monotonic()
            late = woke - due
            self.baseline[k] = late
            ran_at = self.ran_at.get(k)
            if ran_at is not None and due <= ran_at <= woke:
                # The bridge's tick ran between this deadline and this wake-up (both due in
                # one loop iteration, the tick first): its work is part of this figure.
                self.baseline_second += 1
            # Like the bridge: a deadline passed by a whole interval is skipped, not bunched.
            skip = int(late // self.interval)
            self.baseline_missed += skip
            k += 1 + skip

    async def finish(self) -> None:
        if self._baseline_task is not None:
            await self._baseline_task


@attrs.frozen
class CadenceResult:
    minutes: float
    interval: float
    ticks_due: int
    ticks_run: int
    ticks_missed: int  # the bridge's own counter over the run
    ticks_skipped: int
    rows_per_tick: int
    rows_in_table: int
    rows_submitted: int
    rows_buffered: int
    row_jitter_ms: tuple[float, ...]
    callback_jitter_ms: tuple[float, ...]
    tick_ms: tuple[float, ...]
    baseline_ms: tuple[float, ...]
    baseline_missed: int
    baseline_offset: float
    baseline_second: int
    wall_drift_ms: float
    load_before: str
    load_after: str
    problems: tuple[str, ...]


async def run(args: argparse.Namespace, workdir: Path) -> CadenceResult:
    load_before = load_average()
    ticks_due = int(args.minutes * 60.0 // args.interval)
    cadence = Cadence(args.interval, ticks_due, args.baseline_offset)
    sim = await SimProcess.start(socket_simulator_args(), args.startup_timeout)
    try:
        server = await find_postgres()
        async with TestDatabase.create(server) as db:
            settings = load_settings(
                {
                    "IB_API_MODE": "SOCKET",
                    "IB_SOCKET_HOST": sim.host,
                    "IB_SOCKET_PORT": str(sim.port),
                    "DATABASE_URL": db.dsn,
                    "BRIDGE_BUFFER_PATH": str(workdir / "buffer.jsonl"),
                    "BRIDGE_POLL_INTERVAL": str(args.interval),
                },
                use_dotenv=False,
            )
            bridge = Bridge(settings, clock=ScheduleClock(cadence.on_writer_deadline))
            bridge.add_tick_callback(cadence.on_tick)
            async with bridge:
                try:
                    await asyncio.wait_for(cadence.started.wait(), args.startup_timeout)
                except TimeoutError:
                    raise SystemExit(
                        f"the writer did not start within {args.startup_timeout:g} s "
                        f"(state {bridge.connection_state.value})"
                    ) from None
                assert cadence.start is not None
                # Half an interval past the last tick due: it has run, the next has not.
                end = cadence.start + (ticks_due + 0.5) * args.interval
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                await cadence.finish()
                wall_offset_end = time.time() - time.monotonic()
            status = bridge.status
            stats = bridge.sink.stats
            stamps = await db.fetch(
                "SELECT timestamp FROM portfolio_greeks"
                " UNION ALL SELECT timestamp FROM underlying_greeks"
            )
    finally:
        await sim.stop()
    load_after = load_average()

    start, interval = cadence.start, args.interval
    wall_start = start + cadence.wall_offset_start
    per_tick: dict[int, list[float]] = {}
    for (stamp,) in stamps:
        since = stamp.timestamp() - wall_start
        k = round(since / interval)
        if 1 <= k <= ticks_due:
            per_tick.setdefault(k, []).append(since - k * interval)
    written = [info.rows for _, info in cadence.callbacks.values() if info.rows]
    rows_per_tick = statistics.mode(written) if written else 0
    # All rows of a tick carry one timestamp: one jitter figure per tick.
    row_jitter = tuple(min(v) * 1000.0 for v in per_tick.values())
    problems = []
    if not cadence.callbacks:
        problems.append("no tick ran")
    if cadence.off_schedule:
        problems.append(f"the writer restarted ({cadence.off_schedule} deadlines off schedule)")
    if len(stamps) != status.rows_submitted:
        problems.append(f"{len(stamps)} rows in the table, {status.rows_submitted} submitted")
    return CadenceResult(
        minutes=args.minutes,
        interval=interval,
        ticks_due=ticks_due,
        ticks_run=len(cadence.callbacks),
        ticks_missed=status.ticks_missed,
        ticks_skipped=sum(1 for _, info in cadence.callbacks.values() if not info.rows),
        rows_per_tick=rows_per_tick,
        rows_in_table=sum(len(v) for v in per_tick.values()),
        rows_submitted=status.rows_submitted,
        rows_buffered=stats.buffered,
        row_jitter_ms=row_jitter,
        callback_jitter_ms=tuple(j * 1000.0 for j, _ in cadence.callbacks.values()),
        tick_ms=tuple(info.duration * 1000.0 for _, info in cadence.callbacks.values()),
        baseline_ms=tuple(j * 1000.0 for j in cadence.baseline.values()),
        baseline_missed=cadence.baseline_missed,
        baseline_offset=args.baseline_offset,
        baseline_second=cadence.baseline_second,
        wall_drift_ms=(wall_offset_end - cadence.wall_offset_start) * 1000.0,
        load_before=load_before,
        load_after=load_after,
        problems=tuple(problems),
    )


# -- reporting -----------------------------------------------------------------------------


def spread(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.3f} ms p99 {percentile(values, 99):.3f} ms "
        f"max {max(values, default=math.nan):.3f} ms"
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def report(r: CadenceResult) -> None:
    expected = r.ticks_due * r.rows_per_tick
    print(
        f"bridge: {r.ticks_run} of {r.ticks_due} ticks due ran, {r.ticks_missed} missed, "
        f"{r.ticks_skipped} skipped (no rows); rows {r.rows_in_table} in the table of "
        f"{expected} expected ({r.ticks_due} ticks x {r.rows_per_tick}/tick), "
        f"{r.rows_submitted} submitted, {r.rows_buffered} via the buffer",
        flush=True,
    )
    print(f"bridge: row timestamp jitter {spread(r.row_jitter_ms)}", flush=True)
    print(
        f"bridge: tick callback jitter {spread(r.callback_jitter_ms)} "
        f"(of which the tick itself p50 {percentile(r.tick_ms, 50):.3f} ms)",
        flush=True,
    )
    where = (
        "the same deadlines"
        if r.baseline_offset == 0
        else f"the same deadlines + {r.baseline_offset:g} s"
    )
    print(
        f"baseline (bare asyncio.sleep to {where}, same loop): "
        f"{len(r.baseline_ms)} wake-ups, {r.baseline_missed} missed, "
        f"jitter {spread(r.baseline_ms)}; the bridge's tick ran first (its work included) "
        f"in {r.baseline_second} of them",
        flush=True,
    )
    base99 = percentile(r.baseline_ms, 99)
    print(
        f"over {r.minutes:g} min at {r.interval:g} s ({r.ticks_due} ticks): "
        f"row timestamp jitter p50 {percentile(r.row_jitter_ms, 50):.3f} ms "
        f"p99 {percentile(r.row_jitter_ms, 99):.3f} ms "
        f"max {max(r.row_jitter_ms, default=math.nan):.3f} ms "
        f"({ratio(percentile(r.row_jitter_ms, 99), base99)} the baseline's p99); "
        f"callback jitter p99 {percentile(r.callback_jitter_ms, 99):.3f} ms "
        f"({ratio(percentile(r.callback_jitter_ms, 99), base99)}); "
        f"baseline p50 {percentile(r.baseline_ms, 50):.3f} ms p99 {base99:.3f} ms "
        f"max {max(r.baseline_ms, default=math.nan):.3f} ms; "
        f"missed {r.ticks_missed} (baseline {r.baseline_missed}); "
        f"rows {r.rows_in_table} of {r.ticks_due * r.rows_per_tick} expected; "
        f"wall-monotonic drift {r.wall_drift_ms:+.3f} ms; "
        f"load average {r.load_before} before, {r.load_after} after"
    )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured run (10)")
    parser.add_argument("--interval", type=float, default=5.0, help="BRIDGE_POLL_INTERVAL (5)")
    parser.add_argument(
        "--baseline-offset",
        type=float,
        default=0.0,
        help="run the bare loop this many seconds after each tick's deadline (0: the same "
        "deadlines, so the tick's work can land in the baseline's figure)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds for the writer to start"
    )
    args = parser.parse_args(argv)
    if args.minutes * 60.0 < args.interval:
        parser.error("--minutes must cover at least one --interval")
    if not 0 <= args.baseline_offset < args.interval:
        parser.error("--baseline-offset must be >= 0 and less than --interval")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        result = await run(args, Path(tmp))
    stop_embedded_postgres()
    report(result)
    for problem in result.problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
