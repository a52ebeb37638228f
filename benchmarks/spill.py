"""Spill throughput: rows/s the buffer appends with the fsync every append makes durable.

    python benchmarks/spill.py                       # appends of 1, 50 and 5000 rows
    python benchmarks/spill.py --seconds 5 --sizes 1 500

While PostgreSQL is down the sink appends each batch it could not write (one tick's rows,
or what waited in memory) with :meth:`JsonlBuffer.append`: one ``write`` and one
``fdatasync`` per call, which is what lets the bridge acknowledge a row as durable. Each
size is timed for ``--seconds`` into a fresh buffer file next to the repository (the disk
the buffer lives on, not a tmpfs); the report gives rows/s and appends/s. ``drain.py``
runs this too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from drain_rows import make_rows

from ibkr_bridge.storage.buffer import JsonlBuffer

ROOT = Path(__file__).resolve().parents[1]


def spill_rate(size: int, seconds: float, workdir: Path) -> tuple[float, float]:
    """(rows/s, appends/s) of fsync'd appends of ``size`` rows for about ``seconds``."""
    batches = [make_rows(i * size, size, seed="spill") for i in range(8)]
    path = workdir / f"spill-{size}.jsonl"
    appends = 0
    with JsonlBuffer(path, max_bytes=1 << 40, fsync=True) as buffer:
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or appends == 0:
            buffer.append(batches[appends % len(batches)])
            appends += 1
    for leftover in workdir.glob(f"spill-{size}.jsonl*"):
        leftover.unlink()
    return appends * size / elapsed, appends / elapsed


def report(sizes: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".spill-") as tmp:
        for size in sizes:
            rows, calls = spill_rate(size, seconds, Path(tmp))
            print(
                f"spill: appends of {size} rows, fsync'd: {rows:,.0f} rows/s "
                f"({calls:,.0f} appends/s)",
                flush=True,
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 5000])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    report(args.sizes, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
