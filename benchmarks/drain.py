"""Drain throughput: the buffer's drain path against raw COPY of the same rows, in one run.

    python benchmarks/drain.py --rows 1000000 --rounds 3   # the documented figure
    python benchmarks/drain.py --rows 100000               # quicker

The buffer file of N Greeks rows is written once (with ``JsonlBuffer.append``); each
round copies it to a fresh path and times

* **drain**: the service's own ``drain_buffer`` into ``portfolio_greeks`` (read, checksum
  check, decode and validate, COPY in one transaction per batch, fsync'd cursor commit);
* **raw COPY**: asyncpg's ``copy_records_to_table`` of the same rows (same keys, already
  in memory as tuples, built outside the timer) into the same indexed table, in batches
  of the same size, each its own transaction.

The two alternate which goes first from round to round, and the table is truncated and
vacuumed before each. Per round: both rows/s, their ratio and the drain's peak RSS growth
(resident set sampled after every batch, less the resident set at its start). Overall:
the **median of the per-round ratios** (target >= 0.8), the medians of the rates and the
largest RSS growth (target <= 64 MB). Then, in the same run, the CPU cost per line of the
stdlib, orjson and msgspec decoders (``drain_decoders.py``) and the fsync'd append rate
(``spill.py``).

Uses ``DATABASE_URL`` or the test server (127.0.0.1:5432), else an embedded PostgreSQL;
works in a private schema that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import drain_decoders
import spill
from drain_rows import T0, make_rows

from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import DrainProgress, drain_buffer
from ibkr_bridge.storage.store import GREEKS_COPY_COLUMNS, Store, greeks_tuple
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

__all__ = ["T0", "make_rows"]  # recovery.py takes its rows from here
SEED = "drain-bench"
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def rss_mb() -> float:
    """The resident set now (not the peak: an earlier phase's peak would hide growth)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_MB


async def truncate(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE portfolio_greeks")
    await conn.execute("VACUUM ANALYZE portfolio_greeks")


def fill(path: Path, rows: int, batch: int) -> None:
    with JsonlBuffer(path, fsync=False) as buffer:
        for start in range(0, rows, batch):
            buffer.append(make_rows(start, min(batch, rows - start), seed=SEED))


async def time_drain(
    conn: asyncpg.Connection, store: Store, path: Path, rows: int, batch: int
) -> tuple[float, float]:
    """(rows/s, peak RSS growth MB) of draining ``path``."""
    await truncate(conn)
    base = peak = rss_mb()

    def sample(progress: DrainProgress, quarantined: int) -> None:
        nonlocal peak
        peak = max(peak, rss_mb())

    t = time.perf_counter()
    with JsonlBuffer(path) as buffer:
        progress = await drain_buffer(buffer, store, batch_size=batch, on_batch=sample)
    seconds = time.perf_counter() - t
    n = await conn.fetchval("SELECT count(*) FROM portfolio_greeks")
    if n != rows or progress.drained != rows:
        raise SystemExit(f"drain wrote {n} rows, expected {rows}")
    return rows / seconds, peak - base


async def time_raw(conn: asyncpg.Connection, rows: int, batch: int) -> float:
    """rows/s of raw COPY of the same rows; only the COPY calls are timed."""
    await truncate(conn)
    seconds = 0.0
    for start in range(0, rows, batch):
        rows_here = make_rows(start, min(batch, rows - start), seed=SEED)
        tuples = [greeks_tuple(0, r)[1:] for r in rows_here]
        t = time.perf_counter()
        await conn.copy_records_to_table(
            "portfolio_greeks", records=tuples, columns=GREEKS_COPY_COLUMNS[1:]
        )
        seconds += time.perf_counter() - t
    n = await conn.fetchval("SELECT count(*) FROM portfolio_greeks")
    if n != rows:
        raise SystemExit(f"raw COPY wrote {n} rows, expected {rows}")
    return rows / seconds


async def run_rounds(args: argparse.Namespace, workdir: Path) -> None:
    template = workdir / "template.jsonl"
    t = time.perf_counter()
    fill(template, args.rows, args.batch)
    print(f"buffer of {args.rows:,} rows written in {time.perf_counter() - t:.1f} s", flush=True)
    server = await find_postgres()
    async with TestDatabase.create(server) as db:
        store = await Store.open(db.dsn, command_timeout=120.0)
        await store.ensure_schema()
        conn = await db.connect()
        ratios, drains, raws, growths = [], [], [], []
        try:
            for r in range(args.rounds):
                path = workdir / "bench-buffer.jsonl"
                shutil.copyfile(template, path)
                path.chmod(0o600)  # as the buffer keeps its files
                if r % 2 == 0:
                    d, m = await time_drain(conn, store, path, args.rows, args.batch)
                    c = await time_raw(conn, args.rows, args.batch)
                else:
                    c = await time_raw(conn, args.rows, args.batch)
                    d, m = await time_drain(conn, store, path, args.rows, args.batch)
                ratios.append(d / c)
                drains.append(d)
                raws.append(c)
                growths.append(m)
                print(
                    f"round {r + 1}: drain {d:,.0f} rows/s, raw COPY {c:,.0f} rows/s, "
                    f"ratio {d / c:.2f}, peak RSS growth {m:.1f} MB "
                    f"(load average {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
            await truncate(conn)
        finally:
            await conn.close()
            await store.close()
    print(
        f"median over {args.rounds} rounds of {args.rows:,} rows (batch {args.batch}): "
        f"median ratio {statistics.median(ratios):.2f} of the per-round ratios "
        f"{', '.join(f'{x:.2f}' for x in ratios)} (target >= 0.8); "
        f"drain {statistics.median(drains):,.0f} rows/s, raw COPY "
        f"{statistics.median(raws):,.0f} rows/s (medians); "
        f"peak RSS growth {max(growths):.1f} MB (target <= 64)",
        flush=True,
    )
    if args.decoders:
        with template.open("rb") as f:
            lines = f.read(1 << 30).splitlines()[1 : 1 + args.decoders]
        drain_decoders.compare(lines)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--decoders", type=int, default=20_000, help="lines to time each decoder on (0: skip)"
    )
    parser.add_argument(
        "--spill-seconds", type=float, default=3.0, help="per append size (0: skip)"
    )
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        await run_rounds(args, Path(tmp))
    if args.spill_seconds > 0:
        spill.report([1, 50, args.batch], args.spill_seconds)
    stop_embedded_postgres()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
