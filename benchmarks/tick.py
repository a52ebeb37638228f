"""Tick cost in SOCKET mode: the Bridge against a bare ib_async client and a bare INSERT, same run.

    python benchmarks/tick.py                               # 1,000 legs, 120 s windows, 1 round
    python benchmarks/tick.py --seconds 60 --rounds 3       # what docs/performance.md quotes
    python benchmarks/tick.py --legs 50 --seconds 3 --interval 0.5   # smoke
    python benchmarks/tick.py --profile 30                  # + the tick work's top costs
    python benchmarks/tick.py --position-rows               # + a position_greeks row per leg
    python benchmarks/tick.py --write-interval 0            # no durable-write phase

Each round runs four phases, each with its own simulator subprocess
(``python -m ibkr_bridge.sim socket --port 0``, so its CPU is not charged here):

- baseline: the real Bridge against an account with no position (no market data, one flat
  PORTFOLIO row per tick);
- floor: a bare ``ib_async.IB`` client (no bridge) against a simulator serving the load
  book, requesting what the bridge's SOCKET feed requests (positions at connect,
  reqMarketDataType, reqMktData for every option leg and every underlying stock) and doing
  nothing else: the cost of receiving the stream with ib_async (``tick_floor.py``);
- load: the real Bridge against the same book: ``--legs`` option legs over ``--underlyings``
  stocks, bid/ask/last/volume and model Greeks for every leg every ``--sim-tick-interval``
  seconds. Its own schema, buffer and DurableWriter into PostgreSQL, the system clock;
- write: the load phase again (same book, same stream), polling every ``--write-interval``
  seconds (0.25) instead of ``--interval``, so that its window holds enough ticks (240 in
  60 s) for the durable write's p99 to be a percentile rather than the maximum of 12
  (``BRIDGE_STALE_AFTER`` stays the load phase's 3 x ``--interval``, so ticks are not skipped
  for Greeks older than three fast polls); only
  its durable-write and bare INSERT+COMMIT figures are quoted (its CPU and tick work are
  not the production cadence's, and the load phase keeps reporting those).

Floor and load alternate which goes first from round to round. Each window starts once every
leg has its Greeks (the bridge: at its first tick that wrote rows) and lasts ``--seconds``:

- CPU share = this process's user+system CPU time (getrusage) over the window's wall time;
  the bridge's over the bare client's is the **CPU ratio** (target <= 1.15);
- **tick work** = ``TickInfo.duration``: reading the tickers, the staleness verdict,
  aggregating, building the rows and handing them to the writer (``submit``), no database
  round trip (target p99 <= 2 ms at 1,000 legs);
- **durable write** = from the hand-off (the tick's end) until ``sink.flush()`` says every row
  submitted so far is durable (committed, or fsync'd into the buffer if the database stalls);
  half a poll interval after the tick, the same rows go through a **bare asyncpg
  INSERT+COMMIT** on a dedicated connection into ``LIKE ... INCLUDING ALL`` copies of the
  tables in the same schema, one transaction, never overlapping the bridge's own write, and
  like it after an idle stretch (the first round trip after one costs more: see
  ``write_path.py --gap``) (target: p99 ratio <= 1.5, quoted from the write phase; the load
  phase's ratio, over its few ticks, is printed too);
- aggregate+write = tick start to durable (the tick work plus the durable write).

The summary quotes the **median of the per-round ratios** (not a ratio of medians). The bare
inserts run in this process: their client-side CPU (an upper bound, printed) is inside the
bridge's figure. ``--profile N`` adds a phase after the rounds: the load book with the tick
work under cProfile (only inside ``TickWriter.tick``) for N seconds, printing the top costs;
its timings are inflated by the profiler and are not quoted as figures.

The bridge runs with its defaults except ``BRIDGE_POLL_INTERVAL`` (``--interval``, 5) and
``IB_PROBE_INTERVAL`` (``--probe-interval``, 60: ib_async sends at most 45 requests a second,
so subscribing 1,000 legs keeps its queue busy for ~22 s and the default 15 s probe times
out behind them; see benchmarks/README.md). Percentiles are nearest-rank over the window's
ticks (fewer than 100 ticks: p99 is the maximum). Exit status 1 only when a correctness check
fails (rows in the table != rows submitted, a phase that never wrote); timings never change it.

Uses ``DATABASE_URL`` or the test server (127.0.0.1:5432), else an embedded PostgreSQL;
works in private schemas that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import math
import pstats
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

# Sibling scripts (their directory is sys.path[0] when a script runs).
from tick_floor import FloorResult, describe_floor, run_floor
from tick_load import ACCOUNT, PhaseResult, book, check, run_phase

from ibkr_bridge.testing import find_postgres, stop_embedded_postgres

TARGET_CPU_RATIO: Final = 1.15
TARGET_TICK_P99_MS: Final = 2.0
TARGET_WRITE_RATIO: Final = 1.5


def describe(r: PhaseResult) -> str:
    sim = f"{r.sim_cpu_pct:.1f} %" if r.sim_cpu_pct is not None else "n/a"
    bare = (
        f"bare INSERT+COMMIT p50 {r.p('bare', 50):.3f} ms p99 {r.p('bare', 99):.3f} ms; "
        if r.bare_ms
        else ""
    )
    return (
        f"{r.name} ({r.legs} legs): {r.ticks} ticks in {r.window:.1f} s "
        f"({r.skipped} skipped, {r.missed} missed), {r.rows} rows ({r.rows_per_tick:.0f}/tick); "
        f"tick p50 {r.p('tick', 50):.3f} ms p99 {r.p('tick', 99):.3f} ms "
        f"max {max(r.tick_ms, default=math.nan):.3f} ms "
        f"(thread CPU p50 {r.p('cpu', 50):.3f} ms p99 {r.p('cpu', 99):.3f} ms); "
        f"durable write p50 {r.p('durable', 50):.3f} ms p99 {r.p('durable', 99):.3f} ms; {bare}"
        f"aggregate+write p50 {r.p('total', 50):.3f} ms p99 {r.p('total', 99):.3f} ms "
        f"max {max(r.total_ms, default=math.nan):.3f} ms; "
        f"CPU {r.cpu_pct:.2f} % of a core (tick path {r.tick_path_pct:.3f} %, "
        f"bare inserts <= {r.bare_cpu_pct:.3f} %); "
        f"simulator CPU {sim}; table {r.rows_in_table} rows of {r.rows_submitted} submitted, "
        f"{r.rows_buffered} via the buffer"
        + (
            f"; position_greeks {r.positions_in_table} rows of {r.positions_submitted}"
            if r.positions_submitted
            else ""
        )
    )


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT MET"


def div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def print_profile(profiler: cProfile.Profile, ticks: int, top: int = 18) -> None:
    """The tick work's top functions by own time, per tick."""
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in raw.values())
    print(f"profile: {ticks} ticks under cProfile, {1000 * total / max(ticks, 1):.3f} ms/tick")
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, func), (_cc, calls, tt, ct, _callers) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(
            f"profile: {1000 * tt / max(ticks, 1):7.3f} ms/tick own "
            f"({100 * tt / total:4.1f} %), {1000 * ct / max(ticks, 1):7.3f} ms/tick cumulative, "
            f"{calls / max(ticks, 1):8.0f} calls/tick  {func} ({where})"
        )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    print("\n".join("profile: " + line for line in out.getvalue().splitlines() if line.strip()))


Round = tuple[PhaseResult, FloorResult, PhaseResult, PhaseResult]


def write_ratio(r: PhaseResult) -> float:
    return div(r.p("durable", 99), r.p("bare", 99))


def summary(args: argparse.Namespace, rounds: list[Round]) -> str:
    med = statistics.median
    cpu_ratios = [div(load.cpu_pct, floor.cpu_pct) for _, floor, load, _ in rounds]
    # The write phase's ticks when it ran (a real p99), else the load phase's.
    writes = [write for _, _, _, write in rounds]
    write_ratios = [write_ratio(w) for w in writes]
    tick99 = med([load.p("tick", 99) for _, _, load, _ in rounds])
    cpu_ratio, write_med = med(cpu_ratios), med(write_ratios)
    ticks = sum(load.ticks for _, _, load, _ in rounds)
    write_ticks = sum(len(w.durable_ms) for w in writes)
    write_poll = args.write_interval if args.write_interval > 0 else args.interval

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    return (
        f"median over {len(rounds)} rounds, {args.legs} legs / {args.underlyings} underlyings"
        f"{' with position rows' if args.position_rows else ''}, "
        f"poll {args.interval:g} s, simulator ticks every {args.sim_tick_interval:g} s, "
        f"{args.seconds:g} s windows ({ticks} load ticks): "
        f"CPU bridge / bare ib_async {cpu_ratio:.2f}x of the per-round {listed(cpu_ratios)} "
        f"(target <= {TARGET_CPU_RATIO:g}: {verdict(cpu_ratio, TARGET_CPU_RATIO)}; "
        f"bridge {med([r.cpu_pct for _, _, r, _ in rounds]):.2f} %, "
        f"bare {med([f.cpu_pct for _, f, _, _ in rounds]):.2f} % of a core); "
        f"tick work p50 {med([r.p('tick', 50) for _, _, r, _ in rounds]):.3f} ms "
        f"p99 {tick99:.3f} ms (target <= {TARGET_TICK_P99_MS:g}: "
        f"{verdict(tick99, TARGET_TICK_P99_MS)}; its thread CPU time p50 "
        f"{med([r.p('cpu', 50) for _, _, r, _ in rounds]):.3f} ms "
        f"p99 {med([r.p('cpu', 99) for _, _, r, _ in rounds]):.3f} ms); "
        f"durable write p99 / bare INSERT+COMMIT p99 {write_med:.2f}x of the per-round "
        f"{listed(write_ratios)} (target <= {TARGET_WRITE_RATIO:g}: "
        f"{verdict(write_med, TARGET_WRITE_RATIO)}; "
        f"{write_ticks} ticks polled every {write_poll:g} s; "
        f"durable p50 {med([w.p('durable', 50) for w in writes]):.3f} ms "
        f"p99 {med([w.p('durable', 99) for w in writes]):.3f} ms vs bare "
        f"p50 {med([w.p('bare', 50) for w in writes]):.3f} ms "
        f"p99 {med([w.p('bare', 99) for w in writes]):.3f} ms); "
        f"aggregate+write p99 {med([r.p('total', 99) for _, _, r, _ in rounds]):.3f} ms; "
        f"idle baseline CPU {med([b.cpu_pct for b, _, _, _ in rounds]):.2f} %, "
        f"tick p99 {med([b.p('tick', 99) for b, _, _, _ in rounds]):.3f} ms"
    )


def parse(argv: list[str]) -> argparse.Namespace:
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
    parser.add_argument(
        "--position-rows",
        action="store_true",
        help="BRIDGE_POSITION_ROWS=true: a position_greeks row per leg per tick, in the "
        "tick's transaction (the bare INSERT+COMMIT writes them too)",
    )
    parser.add_argument(
        "--write-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="poll interval of the durable-write phase (0.25: 240 ticks a minute, a real "
        "p99); 0: no write phase, the durable ratio comes from the load phase's ticks",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="baseline+floor+load+write rounds (1)"
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the rounds, profile the tick work of the load book for SECONDS (0: no)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to reach the first row"
    )
    args = parser.parse_args(argv)
    if args.legs < 1 or not 1 <= args.underlyings <= args.legs:
        parser.error("need --legs >= 1 and 1 <= --underlyings <= --legs")
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    if args.write_interval < 0:
        parser.error("need --write-interval >= 0")
    return args


async def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = await find_postgres()
    idle: dict[str, Any] = {"accounts": [ACCOUNT], "instruments": [], "positions": []}
    loaded = book(args.legs, args.underlyings)
    rounds: list[Round] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            base = await run_phase("baseline", idle, args, server, work)
            print(f"round {r + 1}: {describe(base)}", flush=True)
            if r % 2 == 0:
                floor = await run_floor(loaded, args, work)
                print(f"round {r + 1}: {describe_floor(floor)}", flush=True)
                load = await run_phase(
                    "load", loaded, args, server, work, position_rows=args.position_rows
                )
                print(f"round {r + 1}: {describe(load)}", flush=True)
            else:
                load = await run_phase(
                    "load", loaded, args, server, work, position_rows=args.position_rows
                )
                print(f"round {r + 1}: {describe(load)}", flush=True)
                floor = await run_floor(loaded, args, work)
                print(f"round {r + 1}: {describe_floor(floor)}", flush=True)
            write = load
            if args.write_interval > 0:
                fast = argparse.Namespace(
                    **{
                        **vars(args),
                        "interval": args.write_interval,
                        "stale_after": 3 * args.interval,
                    }
                )
                write = await run_phase(
                    "write", loaded, fast, server, work, position_rows=args.position_rows
                )
                print(f"round {r + 1}: {describe(write)}", flush=True)
                problems += check(write)
            print(
                f"round {r + 1}: CPU bridge / bare ib_async "
                f"{div(load.cpu_pct, floor.cpu_pct):.2f}x; "
                f"tick work p99 {load.p('tick', 99):.3f} ms; durable write p99 / bare "
                f"INSERT+COMMIT p99 {write_ratio(write):.2f}x over {len(write.durable_ms)} "
                f"{write.name} ticks (load phase's {len(load.durable_ms)} ticks: "
                f"{write_ratio(load):.2f}x)",
                flush=True,
            )
            rounds.append((base, floor, load, write))
            problems += check(base) + check(load)
        print(summary(args, rounds), flush=True)
        if args.profile > 0:
            profiler = cProfile.Profile()
            profiled = argparse.Namespace(**{**vars(args), "seconds": args.profile})
            result = await run_phase(
                "profiled",
                loaded,
                profiled,
                server,
                work,
                bare=False,
                profiler=profiler,
                position_rows=args.position_rows,
            )
            print_profile(profiler, result.ticks)
    stop_embedded_postgres()
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
