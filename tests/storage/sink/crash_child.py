"""A writer process for the kill -9 test: writes numbered rows, printing an ack per row.

    python crash_child.py DSN BUFFER_PATH FIRST LAST

Row ``i`` has key ``row-i`` and delta ``i``. "ack i" is printed once the DurableWriter says
row i is durable (committed, or fsync'd into the buffer). With FIRST > LAST it only drains
what an earlier run left in the buffer, then exits.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import wait_until

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


def row(i: int) -> GreeksRow:
    return GreeksRow(
        timestamp=T0 + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        delta=float(i),
        key=f"row-{i}",
    )


async def main(dsn: str, path: str, first: int, last: int) -> None:
    store = await Store.open(dsn, connect_timeout=0.3, command_timeout=0.5)
    buffer = JsonlBuffer(Path(path))
    buffer.open()
    # Tiny batches while writing put many commits (and crash windows) into each run; the
    # final drain-only run is the check, not the chaos, so it drains in ordinary batches.
    sink = DurableWriter(
        store,
        buffer,
        api_mode="SOCKET",
        retry_interval=0.1,
        spill_after=0.1,
        batch_size=7 if first <= last else 5000,
    )
    await sink.start()
    for i in range(first, last + 1):
        await sink.write([row(i)])
        print(f"ack {i}", flush=True)
    if first > last:
        await wait_until(
            lambda: buffer.is_empty and sink.breaker.state.value == "CLOSED", timeout=60
        )
        await sink.flush()
        print("drained", flush=True)
    await sink.stop()
    buffer.close()
    await store.close()


if __name__ == "__main__":
    dsn, path, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(dsn, path, first, last))
