"""One bridge phase of tick.py and scaling.py: a book, a simulator subprocess, a Bridge, timings.

:func:`run_phase` starts the IB Gateway simulator in a subprocess serving a portfolio, runs
the real Bridge against it (SocketFeed over ib_async, the DurableWriter into a private
PostgreSQL schema, the system clock), waits for the first tick that wrote rows and then
measures a window of ``args.seconds``; see tick.py's docstring for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from cadence import SimProcess, socket_simulator_args
from tick_floor import BareInsert

from ibkr_bridge.config import load_settings
from ibkr_bridge.core.records import GreeksRow, PositionRow
from ibkr_bridge.service.bridge import Bridge, TickInfo
from ibkr_bridge.testing import TestDatabase

ACCOUNT: Final = "DU1234567"


def book(legs: int, underlyings: int) -> dict[str, Any]:
    """A portfolio mapping (``portfolio_from_dict``) with ``legs`` option positions.

    Each underlying is a stock with a spot; its options span weekly expiries from +30 days,
    ten strikes from 80 % to 116 % of spot, calls and puts, long and short.
    """
    instruments: list[dict[str, Any]] = []
    positions: list[dict[str, Any]] = []
    per = [legs // underlyings + (1 if i < legs % underlyings else 0) for i in range(underlyings)]
    conid = 900_000_000
    for u, count in enumerate(per):
        symbol = f"UND{u}"
        stock = 100_000 + u
        spot = 100.0 + 50.0 * u
        instruments.append(
            {
                "conid": stock,
                "symbol": symbol,
                "sec_type": "STK",
                "primary_exchange": "NASDAQ",
                "spot": spot,
                "volatility": 0.15 + 0.01 * u,
            }
        )
        for k in range(count):
            expiry, rest = divmod(k, 20)
            strike_step, right = divmod(rest, 2)
            conid += 1
            instruments.append(
                {
                    "conid": conid,
                    "symbol": symbol,
                    "sec_type": "OPT",
                    "underlying_conid": stock,
                    "expiry": f"+{30 + 7 * expiry}d",
                    "strike": round(spot * (0.80 + 0.04 * strike_step)),
                    "right": "CP"[right],
                    "multiplier": 100,
                }
            )
            quantity = (k % 7 + 1) * (1 if k % 3 else -1)
            positions.append({"conid": conid, "quantity": quantity, "avg_cost": 250.0})
    return {"accounts": [ACCOUNT], "instruments": instruments, "positions": positions}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """This process's resident set now (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (a value that occurred, never an interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


@attrs.frozen
class PhaseResult:
    name: str
    legs: int
    window: float  # wall seconds measured
    ticks: int
    skipped: int
    missed: int
    rows: int  # rows of the measured ticks
    rows_per_tick: float
    tick_ms: tuple[float, ...]  # TickInfo.duration: snapshot + aggregate + hand-off
    cpu_ms: tuple[float, ...]  # the same ticks' thread CPU time (no descheduling in it)
    total_ms: tuple[float, ...]  # tick start -> durable
    durable_ms: tuple[float, ...]  # hand-off (end of the tick) -> durable
    bare_ms: tuple[float, ...]  # the same rows, bare asyncpg INSERT+COMMIT
    bare_cpu_pct: float  # upper bound of the bare inserts' share of cpu_pct
    cpu_pct: float
    tick_path_pct: float
    sim_cpu_pct: float | None
    rows_in_table: int
    rows_submitted: int
    rows_buffered: int
    rss_mb: tuple[float, ...]  # sampled about once a second over the window
    positions: int = 0  # position_greeks rows of the measured ticks (BRIDGE_POSITION_ROWS)
    positions_in_table: int = 0
    positions_submitted: int = 0

    def p(self, which: str, q: float) -> float:
        values: tuple[float, ...] = getattr(self, f"{which}_ms")
        return percentile(values, q)


class Recorder:
    """Tick and durability timings of the measured window, from the bridge's hooks."""

    def __init__(self, bridge: Bridge, *, bare_after: float = 0.0) -> None:
        self._bridge = bridge
        # Seconds after the tick's hand-off at which the bare INSERT+COMMIT starts.
        self._bare_after = bare_after
        self.bare: BareInsert | None = None
        self.ready = asyncio.Event()  # the first tick with rows happened
        self.measuring = False
        self.ticks: list[TickInfo] = []
        self.total_ms: list[float] = []
        self.durable_ms: list[float] = []
        self.cpu_ms: list[float] = []  # thread CPU time of each tick that wrote rows
        self.cpu_start: float | None = None
        self._rows: Sequence[GreeksRow] = ()
        self._positions: Sequence[PositionRow] = ()
        self._pending: set[asyncio.Task[None]] = set()
        # One tick's write at a time: the bare INSERT never overlaps the bridge's commit.
        self._serial = asyncio.Lock()

    def on_rows(self, rows: Sequence[GreeksRow]) -> None:
        self._rows = rows  # handed to the writer in this tick, just before on_tick
        # The tick's position_greeks rows (BRIDGE_POSITION_ROWS), submitted with ``rows``.
        self._positions = list(getattr(self._bridge._writer._feed, "position_rows", None) or ())

    def on_tick(self, info: TickInfo) -> None:
        ended = time.perf_counter()
        cpu = time.thread_time()
        if not self.measuring:
            if info.rows:
                self.ready.set()
            return
        self.ticks.append(info)
        if info.rows and self.cpu_start is not None:
            self.cpu_ms.append((cpu - self.cpu_start) * 1000.0)
        if info.rows:
            task = asyncio.create_task(
                self._durable(ended - info.duration, ended, self._rows, self._positions)
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _durable(
        self,
        started: float,
        handed: float,
        rows: Sequence[GreeksRow],
        positions: Sequence[PositionRow],
    ) -> None:
        async with self._serial:
            # The tick's submit() already woke the writer; flush() waits for that batch.
            await self._bridge.sink.flush()
            done = time.perf_counter()
            self.total_ms.append((done - started) * 1000.0)
            self.durable_ms.append((done - handed) * 1000.0)
            if self.bare is not None:
                # Not right after the bridge's commit: the first round trip after an idle
                # stretch costs any client more (write_path.py --gap 0.25 against 0). The
                # bridge's write always comes first after the poll interval's idle; half
                # an interval later, the bare one comes first after an idle stretch too.
                await asyncio.sleep(max(0.0, handed + self._bare_after - time.perf_counter()))
                await self.bare.write(rows, positions)

    async def settle(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending)


def wrap_ticks(bridge: Bridge, recorder: Recorder, profiler: cProfile.Profile | None) -> None:
    """Note each tick's start in thread CPU time, and run ``profiler`` inside ticks only.

    Replaces the writer instance's ``tick`` (the cadence loop calls ``self.tick()``); the
    tick callbacks run inside it, so :meth:`Recorder.on_tick` reads the CPU the tick used.
    """
    writer = bridge._writer
    tick = writer.tick

    def wrapped() -> None:
        if profiler is not None:
            profiler.enable()
        recorder.cpu_start = time.thread_time()
        try:
            tick()
        finally:
            if profiler is not None:
                profiler.disable()

    writer.tick = wrapped  # type: ignore[method-assign]


async def run_phase(
    name: str,
    portfolio: dict[str, Any],
    args: argparse.Namespace,
    server: str,
    workdir: Path,
    *,
    bare: bool = True,
    profiler: cProfile.Profile | None = None,
    position_rows: bool = False,
) -> PhaseResult:
    legs = len(portfolio["positions"])
    path = workdir / f"{name}-portfolio.json"
    path.write_text(json.dumps(portfolio))
    sim = await SimProcess.start(
        socket_simulator_args(
            "WARNING", "--portfolio", str(path), "--tick-interval", str(args.sim_tick_interval)
        ),
        args.startup_timeout,
    )
    try:
        async with TestDatabase.create(server) as db:
            settings = load_settings(
                {
                    "IB_API_MODE": "SOCKET",
                    "IB_SOCKET_PORT": str(sim.port),
                    "DATABASE_URL": db.dsn,
                    "BRIDGE_BUFFER_PATH": str(workdir / f"{name}-buffer.jsonl"),
                    "BRIDGE_POLL_INTERVAL": str(args.interval),
                    "IB_PROBE_INTERVAL": str(args.probe_interval),
                    "BRIDGE_POSITION_ROWS": "true" if position_rows else "false",
                    # tick.py's write phase polls fast but keeps the load phase's staleness
                    # (3 x its interval): the default, 3 x a 0.25 s poll, is shorter than the
                    # simulator's 1 s stream and would skip most ticks.
                    **(
                        {"BRIDGE_STALE_AFTER": str(args.stale_after)}
                        if getattr(args, "stale_after", None)
                        else {}
                    ),
                },
                use_dotenv=False,
            )
            bridge = Bridge(settings)
            inserter: BareInsert | None = None
            recorder = Recorder(bridge, bare_after=args.interval / 2)
            bridge.add_row_callback(recorder.on_rows)
            bridge.add_tick_callback(recorder.on_tick)
            rss: list[float] = []
            try:
                async with bridge:
                    try:
                        await asyncio.wait_for(recorder.ready.wait(), args.startup_timeout)
                    except TimeoutError:
                        raise SystemExit(
                            f"{name}: no tick wrote rows within {args.startup_timeout:g} s "
                            f"(state {bridge.connection_state.value})"
                        ) from None
                    if bare:  # the bridge has created its tables by now
                        inserter = recorder.bare = await BareInsert.open(
                            db.dsn, positions=position_rows
                        )
                    wrap_ticks(bridge, recorder, profiler)
                    missed_before = bridge.status.ticks_missed
                    positions_before = bridge.status.positions_submitted
                    sim_cpu0 = sim.cpu_seconds()
                    cpu0, wall0 = cpu_seconds(), time.perf_counter()
                    recorder.measuring = True
                    end = wall0 + args.seconds
                    while (left := end - time.perf_counter()) > 0:
                        rss.append(rss_mb())
                        await asyncio.sleep(min(1.0, left))
                    recorder.measuring = False
                    cpu1, wall1 = cpu_seconds(), time.perf_counter()
                    sim_cpu1 = sim.cpu_seconds()
                    rss.append(rss_mb())
                    missed = bridge.status.ticks_missed - missed_before
                    positions = bridge.status.positions_submitted - positions_before
                    await recorder.settle()
                status = bridge.status
                stats = bridge.sink.stats
            finally:
                if inserter is not None:
                    await inserter.close()
            conn = await db.connect()
            try:
                # PORTFOLIO rows and the per-underlying ones (their own table).
                in_table = int(
                    await conn.fetchval(
                        "SELECT (SELECT count(*) FROM portfolio_greeks)"
                        " + (SELECT count(*) FROM underlying_greeks)"
                    )
                )
                positions_in_table = (
                    int(await conn.fetchval("SELECT count(*) FROM position_greeks"))
                    if position_rows
                    else 0
                )
            finally:
                await conn.close()
    finally:
        await sim.stop()
    window = wall1 - wall0
    ticks = recorder.ticks
    written = [t for t in ticks if t.rows]
    rows = sum(t.rows for t in ticks)
    sim_pct = (
        100.0 * (sim_cpu1 - sim_cpu0) / window
        if sim_cpu0 is not None and sim_cpu1 is not None
        else None
    )
    return PhaseResult(
        name=name,
        legs=legs,
        window=window,
        ticks=len(ticks),
        skipped=len(ticks) - len(written),
        missed=missed,
        rows=rows,
        rows_per_tick=rows / len(written) if written else 0.0,
        tick_ms=tuple(t.duration * 1000.0 for t in written),
        cpu_ms=tuple(recorder.cpu_ms),
        total_ms=tuple(recorder.total_ms),
        durable_ms=tuple(recorder.durable_ms),
        bare_ms=tuple(inserter.ms) if inserter is not None else (),
        bare_cpu_pct=100.0 * inserter.cpu_seconds / window if inserter is not None else 0.0,
        cpu_pct=100.0 * (cpu1 - cpu0) / window,
        tick_path_pct=100.0 * sum(t.duration for t in ticks) / window,
        sim_cpu_pct=sim_pct,
        rows_in_table=in_table,
        rows_submitted=status.rows_submitted,
        rows_buffered=stats.buffered,
        rss_mb=tuple(rss),
        positions=positions,
        positions_in_table=positions_in_table,
        positions_submitted=status.positions_submitted,
    )


def check(r: PhaseResult) -> list[str]:
    """Ways a phase's figures cannot be trusted (not timing targets)."""
    problems = []
    if not r.total_ms:
        problems.append(f"{r.name}: no tick wrote rows in the window")
    if r.rows_in_table != r.rows_submitted:
        problems.append(
            f"{r.name}: {r.rows_in_table} rows in the table, {r.rows_submitted} submitted"
        )
    if r.positions_in_table != r.positions_submitted:
        problems.append(
            f"{r.name}: {r.positions_in_table} position rows in the table, "
            f"{r.positions_submitted} submitted"
        )
    return problems
