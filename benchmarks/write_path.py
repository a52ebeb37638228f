"""The live write's own cost: the bridge's write against a bare INSERT+COMMIT, same run.

    python benchmarks/write_path.py                  # 1,500 calls, 3 rounds
    python benchmarks/write_path.py --calls 30 --rounds 1   # smoke
    python benchmarks/write_path.py --calls 100 --gap 0.25  # each call after 0.25 s idle

One tick's rows (the PORTFOLIO row and ``--underlyings`` per-underlying rows) are written,
calls interleaved round robin so the three paths see the same server and machine (the
first min(20, calls / 3) calls of each path prepare its statements and are not timed):

- ``store``: ``Store.write_live`` through the bridge's pool (acquire, the one-statement
  write, release), what the writer task awaits;
- ``statement``: the same statement (``write_statement``) on a raw connection;
- ``bare``: ``tick_floor.BareInsert`` (BEGIN, executemany per table, COMMIT) into
  ``LIKE ... INCLUDING ALL`` copies, the baseline ``tick.py`` quotes.

With ``--gap`` each call follows that many seconds of idle, as the bridge's write follows
the poll interval: compared with ``--gap 0`` it shows what the first round trip after an
idle stretch costs any client (why ``tick.py`` starts its bare INSERT half a poll interval
after the tick, not right after the bridge's commit). No ib_async stream runs here, so
``tick.py``'s durable-write figure minus this one is what the writer task's hand-offs and
a busy event loop add. The summary quotes the median of the per-round p99 ratios store /
bare. Exit status 1 only when the rows counted back from the
tables are not the rows written; timings never change it. Uses the test server or an
embedded one, in a private schema dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from tick_floor import BareInsert
from tick_load import percentile

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.store import Store
from ibkr_bridge.storage.store._rows import split_records
from ibkr_bridge.storage.store._statement import write_statement
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

PATHS = ("store", "statement", "bare")
T0 = datetime(2026, 12, 7, tzinfo=UTC)


def row(at: datetime, contract: str, price: float | None, legs: int) -> GreeksRow:
    return GreeksRow(
        timestamp=at,
        account="DU1",
        api_mode="SOCKET",
        contract=contract,
        delta=1.5,
        gamma=0.1,
        vega=2.0,
        theta=-1.0,
        underlying_price=price,
        dollar_delta=None if price is None else 1.5 * price,
        legs=legs,
    )


def tick_rows(at: datetime, underlyings: int) -> list[GreeksRow]:
    """One tick's rows: the PORTFOLIO row and one row per underlying."""
    return [row(at, "PORTFOLIO", None, 1000)] + [
        row(at, f"S{i}", 500.0, 100) for i in range(underlyings)
    ]


async def one_round(
    dsn: str, calls: int, underlyings: int, start: int, warmup: int, gap: float = 0.0
) -> dict[str, list[float]]:
    store = await Store.open(dsn)
    await store.ensure_schema()
    raw = await asyncpg.connect(dsn)
    bare = await BareInsert.open(dsn)
    ms: dict[str, list[float]] = {path: [] for path in PATHS}
    try:
        for k in range(calls * len(PATHS)):
            rows = tick_rows(T0 + timedelta(seconds=start + k), underlyings)
            path = PATHS[k % len(PATHS)]
            greeks, events, positions = split_records(rows)
            if gap > 0 and k >= warmup * len(PATHS):
                await asyncio.sleep(gap)
            began = time.perf_counter()
            if path == "store":
                await store.write_live(rows)
            elif path == "statement":
                await write_statement(raw, greeks, events, positions)
            else:
                await bare.write(rows)
            if k >= warmup * len(PATHS):  # the first calls prepare each statement
                ms[path].append((time.perf_counter() - began) * 1000.0)
    finally:
        await bare.close()
        await raw.close()
        await store.close()
    return ms


async def count(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        bridge = await conn.fetchval(
            "SELECT (SELECT count(*) FROM portfolio_greeks)"
            " + (SELECT count(*) FROM underlying_greeks)"
        )
        bare = await conn.fetchval(
            "SELECT (SELECT count(*) FROM bare_portfolio_greeks)"
            " + (SELECT count(*) FROM bare_underlying_greeks)"
        )
        return int(bridge), int(bare)
    finally:
        await conn.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--underlyings", type=int, default=10)
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds of idle before each timed call (0)"
    )
    args = parser.parse_args(argv)
    if args.gap < 0:
        parser.error("need --gap >= 0")
    per_call = 1 + args.underlyings
    ratios: list[float] = []
    ok = True
    for r in range(1, args.rounds + 1):
        async with TestDatabase.create(await find_postgres()) as db:
            warmup = min(20, args.calls // 3)
            ms = await one_round(db.dsn, args.calls, args.underlyings, r * 10**7, warmup, args.gap)
            bridge, bare = await count(db.dsn)
        # store and statement both write the bridge's tables.
        want_bridge, want_bare = 2 * args.calls * per_call, args.calls * per_call
        ok = ok and bridge == want_bridge and bare == want_bare
        parts = ", ".join(
            f"{path} p50 {statistics.median(v):.3f} ms p99 {percentile(v, 99):.3f} ms"
            for path, v in ms.items()
        )
        ratio = percentile(ms["store"], 99) / percentile(ms["bare"], 99)
        ratios.append(ratio)
        print(
            f"round {r}: {args.calls} calls per path, {per_call} rows each: {parts}; "
            f"store / bare p99 {ratio:.2f}x; tables {bridge} of {want_bridge} rows "
            f"(bare {bare} of {want_bare})"
        )
    print(
        f"median over {args.rounds} rounds of {args.calls} calls, {per_call} rows a call"
        f"{f', {args.gap:g} s idle before each' if args.gap else ''}: "
        f"store / bare INSERT+COMMIT p99 {statistics.median(ratios):.2f}x "
        f"(per round {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    stop_embedded_postgres()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
