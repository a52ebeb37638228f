"""A drain process for the kill -9 test: drains a buffer into the database and says so.

    python drain_child.py DSN BUFFER_PATH BATCH_SIZE

Prints ``ready`` once the buffer is open, ``batch`` after each batch's cursor is saved and
``drained`` at the end. The test kills it at random instants and starts it again.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import DrainProgress, drain_buffer
from ibkr_bridge.storage.store import Store


async def main(dsn: str, path: str, batch_size: int) -> None:
    store = await Store.open(dsn, command_timeout=30.0)

    def said(progress: DrainProgress, quarantined: int) -> None:
        print("batch", flush=True)

    with JsonlBuffer(Path(path)) as buffer:
        print("ready", flush=True)
        await drain_buffer(buffer, store, batch_size=batch_size, on_batch=said)
    print("drained", flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
