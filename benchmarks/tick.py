"""Tick latency and CPU share in SOCKET mode: a big option book against an idle one, same run.

    python benchmarks/tick.py                               # 1,000 legs, 120 s per phase
    python benchmarks/tick.py --seconds 60                  # quicker
    python benchmarks/tick.py --legs 50 --seconds 3 --interval 0.5   # smoke

Each round runs two phases, each with its own simulator, database schema, buffer and Bridge:

- baseline: the IB Gateway simulator serving an account with no position, so the bridge
  streams no market data and writes one flat PORTFOLIO row per tick;
- load: the simulator serving ``--legs`` option legs over ``--underlyings`` underlyings and
  streaming bid/ask/last/volume and model Greeks for every leg each ``--sim-tick-interval``
  seconds (its own default, 1 s).

The simulator runs in a subprocess (``python -m ibkr_bridge.sim socket --port 0``) so that its
CPU is not charged to the bridge. This process runs the real Bridge: SocketFeed over ib_async
2.1.0 on loopback, and the DurableWriter into PostgreSQL, on the system clock.

The measured window starts at the first tick that wrote rows (every leg has its Greeks, so
connecting, the position sync and the subscriptions are over) and lasts ``--seconds``:

- tick = ``TickInfo.duration``: reading the tickers, aggregating, handing rows to the writer;
- aggregate+write = from the start of a tick until everything submitted up to and including
  its rows is durable (committed to PostgreSQL, or fsync'd into the buffer should the database
  stall): the tick's duration plus an awaited ``sink.flush()`` started as the tick ends;
- CPU share = this process's user+system CPU time (getrusage) over the window divided by the
  window's wall time: ib_async decoding the stream, the prober, the writer, asyncpg, all of it;
- tick-path share = the sum of tick durations over the window's wall time.

The bridge runs with its default settings except ``BRIDGE_POLL_INTERVAL`` (``--interval``) and
``IB_PROBE_INTERVAL`` (``--probe-interval``, 60 s): ib_async sends at most 45 requests a second,
so subscribing 1,000 legs keeps its send queue busy for ~22 s and the default 15 s probe, queued
behind them, times out after 5 s; the bridge then takes the Gateway for frozen and reconnects,
over and over (``--probe-interval 15`` shows it).

Percentiles are nearest-rank over the ticks of the window (with fewer than 100 ticks p99 is
the maximum). Targets, load phase: p99 aggregate+write <= 10 ms, CPU share <= 2 % of a core.

Uses ``DATABASE_URL`` or the test server (127.0.0.1:5432), else an embedded PostgreSQL;
works in private schemas that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

# The sibling script (its directory is sys.path[0] when a script runs): shared helpers.
from cadence import SimProcess, socket_simulator_args

from ibkr_bridge.config import load_settings
from ibkr_bridge.service.bridge import Bridge, TickInfo
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

ACCOUNT: Final = "DU1234567"
TARGET_P99_MS: Final = 10.0
TARGET_CPU_PCT: Final = 2.0


# -- the portfolio -------------------------------------------------------------------------


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


# -- the simulator subprocess --------------------------------------------------------------


# -- one phase -----------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (a value that occurred, never an interpolation)."""
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
    tick_ms: tuple[float, ...]
    total_ms: tuple[float, ...]
    cpu_pct: float
    tick_path_pct: float
    sim_cpu_pct: float | None
    rows_in_table: int
    rows_submitted: int
    rows_buffered: int

    def p(self, which: str, q: float) -> float:
        values = self.tick_ms if which == "tick" else self.total_ms
        return percentile(values, q) if values else math.nan


class Recorder:
    """Tick and durability timings of the measured window, from the bridge's hooks."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self.ready = asyncio.Event()  # the first tick with rows happened
        self.measuring = False
        self.ticks: list[TickInfo] = []
        self.total_ms: list[float] = []
        self._pending: set[asyncio.Task[None]] = set()

    def on_tick(self, info: TickInfo) -> None:
        ended = time.perf_counter()
        if not self.measuring:
            if info.rows:
                self.ready.set()
            return
        self.ticks.append(info)
        if info.rows:
            task = asyncio.create_task(self._durable(ended - info.duration))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _durable(self, started: float) -> None:
        # The tick's submit() already woke the writer; flush() waits for that batch.
        await self._bridge.sink.flush()
        self.total_ms.append((time.perf_counter() - started) * 1000.0)

    async def settle(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending)


async def run_phase(
    name: str,
    portfolio: dict[str, Any],
    args: argparse.Namespace,
    server: str,
    workdir: Path,
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
                },
                use_dotenv=False,
            )
            bridge = Bridge(settings)
            recorder = Recorder(bridge)
            bridge.add_tick_callback(recorder.on_tick)
            async with bridge:
                try:
                    await asyncio.wait_for(recorder.ready.wait(), args.startup_timeout)
                except TimeoutError:
                    raise SystemExit(
                        f"{name}: no tick wrote rows within {args.startup_timeout:g} s "
                        f"(state {bridge.connection_state.value})"
                    ) from None
                missed_before = bridge.status.ticks_missed
                sim_cpu0 = sim.cpu_seconds()
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                recorder.measuring = True
                await asyncio.sleep(args.seconds)
                recorder.measuring = False
                cpu1, wall1 = cpu_seconds(), time.perf_counter()
                sim_cpu1 = sim.cpu_seconds()
                missed = bridge.status.ticks_missed - missed_before
                await recorder.settle()
            status = bridge.status
            stats = bridge.sink.stats
            conn = await db.connect()
            try:
                # PORTFOLIO rows and the per-underlying ones (their own table).
                in_table = int(
                    await conn.fetchval(
                        "SELECT (SELECT count(*) FROM portfolio_greeks)"
                        " + (SELECT count(*) FROM underlying_greeks)"
                    )
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
        total_ms=tuple(recorder.total_ms),
        cpu_pct=100.0 * (cpu1 - cpu0) / window,
        tick_path_pct=100.0 * sum(t.duration for t in ticks) / window,
        sim_cpu_pct=sim_pct,
        rows_in_table=in_table,
        rows_submitted=status.rows_submitted,
        rows_buffered=stats.buffered,
    )


# -- reporting -----------------------------------------------------------------------------


def describe(r: PhaseResult) -> str:
    sim = f"{r.sim_cpu_pct:.1f} %" if r.sim_cpu_pct is not None else "n/a"
    return (
        f"{r.name} ({r.legs} legs): {r.ticks} ticks in {r.window:.1f} s "
        f"({r.skipped} skipped, {r.missed} missed), {r.rows} rows ({r.rows_per_tick:.0f}/tick); "
        f"tick p50 {r.p('tick', 50):.3f} ms p99 {r.p('tick', 99):.3f} ms "
        f"max {max(r.tick_ms, default=math.nan):.3f} ms; "
        f"aggregate+write p50 {r.p('total', 50):.3f} ms p99 {r.p('total', 99):.3f} ms "
        f"max {max(r.total_ms, default=math.nan):.3f} ms; "
        f"CPU {r.cpu_pct:.2f} % of a core (tick path {r.tick_path_pct:.3f} %); "
        f"simulator CPU {sim}; table {r.rows_in_table} rows of {r.rows_submitted} submitted, "
        f"{r.rows_buffered} via the buffer"
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
    return problems


def verdict(value: float, target: float) -> str:
    return "target met" if value <= target else "MISSED"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, default=1000, help="option legs (1000)")
    parser.add_argument("--underlyings", type=int, default=10, help="underlyings (10)")
    parser.add_argument("--seconds", type=float, default=120.0, help="window per phase (120)")
    parser.add_argument("--interval", type=float, default=5.0, help="BRIDGE_POLL_INTERVAL (5)")
    parser.add_argument(
        "--sim-tick-interval", type=float, default=1.0, help="simulator streaming interval (1)"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=60.0,
        help="IB_PROBE_INTERVAL (60; the bridge's default 15 s probe times out behind "
        "ib_async's 45 requests/s throttle while a big book subscribes)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="baseline+load rounds (1)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to reach the first row"
    )
    args = parser.parse_args(argv)
    if args.legs < 1 or not 1 <= args.underlyings <= args.legs:
        parser.error("need --legs >= 1 and 1 <= --underlyings <= --legs")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    server = await find_postgres()
    idle: dict[str, Any] = {"accounts": [ACCOUNT], "instruments": [], "positions": []}
    loaded = book(args.legs, args.underlyings)
    results: list[tuple[PhaseResult, PhaseResult]] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            base = await run_phase("baseline", idle, args, server, Path(tmp))
            print(f"round {r + 1}: {describe(base)}", flush=True)
            load = await run_phase("load", loaded, args, server, Path(tmp))
            print(f"round {r + 1}: {describe(load)}", flush=True)
            results.append((base, load))
            problems += check(base) + check(load)
    stop_embedded_postgres()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    load_p50 = med([load.p("total", 50) for _, load in results])
    load_p99 = med([load.p("total", 99) for _, load in results])
    base_p99 = med([base.p("total", 99) for base, _ in results])
    load_tick99 = med([load.p("tick", 99) for _, load in results])
    base_tick99 = med([base.p("tick", 99) for base, _ in results])
    load_cpu = med([load.cpu_pct for _, load in results])
    base_cpu = med([base.cpu_pct for base, _ in results])
    ticks = sum(load.ticks for _, load in results)
    print(
        f"median over {args.rounds} round(s), {args.legs} legs / {args.underlyings} underlyings, "
        f"poll {args.interval:g} s, simulator ticks every {args.sim_tick_interval:g} s, "
        f"{args.seconds:g} s windows ({ticks} load ticks): "
        f"aggregate+write p50 {load_p50:.3f} ms p99 {load_p99:.3f} ms "
        f"(target <= {TARGET_P99_MS:g}: {verdict(load_p99, TARGET_P99_MS)}; "
        f"{ratio(load_p99, base_p99)} the idle baseline's {base_p99:.3f} ms); "
        f"tick p99 {load_tick99:.3f} ms ({ratio(load_tick99, base_tick99)} baseline); "
        f"CPU {load_cpu:.2f} % of a core "
        f"(target <= {TARGET_CPU_PCT:g}: {verdict(load_cpu, TARGET_CPU_PCT)}; "
        f"{ratio(load_cpu, base_cpu)} the idle baseline's {base_cpu:.2f} %)"
    )
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
