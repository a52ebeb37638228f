"""Drain throughput: the buffer's drain path against raw COPY, in the same run.

    python benchmarks/drain.py                 # 1,000,000 rows, 3 rounds
    python benchmarks/drain.py --rows 100000   # quicker

Each round: fill a fresh buffer file with N Greeks rows, then time draining it into
``portfolio_greeks`` with the service's own ``drain_buffer`` (read + decode + COPY into a
temp table + INSERT ... ON CONFLICT + fsync'd cursor commit), and time asyncpg's
``copy_records_to_table`` of the same rows (already in memory as tuples, in batches of the
same size) into the same indexed table. Prints per-round figures, medians, the ratio
drain/raw and the peak RSS growth during the drain.
Target: ratio >= 0.5, RSS growth <= 64 MB.

Uses ``DATABASE_URL`` or the test server (127.0.0.1:5432), else an embedded PostgreSQL;
works in a private schema that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import drain_buffer
from ibkr_bridge.storage.store import GREEKS_COPY_COLUMNS, Store, greeks_tuple
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


def make_rows(
    start: int, count: int, *, base: datetime = T0, account: str = "DU1234567"
) -> list[GreeksRow]:
    """Rows ``start .. start+count-1`` of a 5-second series (the benchmarks' test data)."""
    return [
        GreeksRow(
            timestamp=base + timedelta(seconds=5 * i),
            account=account,
            api_mode="SOCKET",
            delta=1234.5 + i * 0.001,
            gamma=12.25,
            vega=-3456.75,
            theta=-987.125,
            underlying_price=512.34,
            dollar_delta=632_000.0,
            legs=40,
            legs_missing=0,
        )
        for i in range(start, start + count)
    ]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


async def truncate(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE portfolio_greeks")
    await conn.execute("VACUUM ANALYZE portfolio_greeks")


async def one_round(
    db: TestDatabase, store: Store, rows: int, batch: int, workdir: Path
) -> tuple[float, float, float]:
    path = workdir / "bench-buffer.jsonl"
    with JsonlBuffer(path, fsync=False) as buffer:
        for start in range(0, rows, batch):
            buffer.append(make_rows(start, min(batch, rows - start)))
    conn = await db.connect()
    try:
        await truncate(conn)
        rss_before = rss_mb()
        t = time.perf_counter()
        with JsonlBuffer(path) as buffer:
            progress = await drain_buffer(buffer, store, batch_size=batch)
        drain_s = time.perf_counter() - t
        rss_growth = rss_mb() - rss_before
        n = await conn.fetchval("SELECT count(*) FROM portfolio_greeks")
        if n != rows or progress.drained != rows:
            raise SystemExit(f"drain wrote {n} rows, expected {rows}")

        await truncate(conn)
        raw_s = 0.0
        for start in range(0, rows, batch):
            tuples = [greeks_tuple(0, r)[1:] for r in make_rows(start, min(batch, rows - start))]
            t = time.perf_counter()
            await conn.copy_records_to_table(
                "portfolio_greeks", records=tuples, columns=GREEKS_COPY_COLUMNS[1:]
            )
            raw_s += time.perf_counter() - t
        await truncate(conn)
    finally:
        await conn.close()
    return rows / drain_s, rows / raw_s, rss_growth


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    server = await find_postgres()
    async with TestDatabase.create(server) as db:
        store = await Store.open(db.dsn, command_timeout=120.0)
        await store.ensure_schema()
        drain, raw, rss = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                d, c, m = await one_round(db, store, args.rows, args.batch, Path(tmp))
                drain.append(d)
                raw.append(c)
                rss.append(m)
                print(
                    f"round {r + 1}: drain {d:,.0f} rows/s, raw COPY {c:,.0f} rows/s, "
                    f"ratio {d / c:.2f}, peak RSS growth {m:.1f} MB",
                    flush=True,
                )
        await store.close()
    md, mc = statistics.median(drain), statistics.median(raw)
    print(
        f"median over {args.rounds} rounds of {args.rows:,} rows (batch {args.batch}): "
        f"drain {md:,.0f} rows/s, raw COPY {mc:,.0f} rows/s, ratio {md / mc:.2f} "
        f"(target >= 0.5); peak RSS growth {max(rss):.1f} MB (target <= 64)"
    )
    stop_embedded_postgres()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
