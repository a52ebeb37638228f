"""A real Bridge in a child process, for the kill -9 test (``test_kill9.py``).

    python bridge_child.py        # settings from the environment (BRIDGE_*, IB_*, DATABASE_URL)

It is a small fork server: it imports everything once, then for each line read on stdin
(``run`` or ``final``) forks a child that runs a real :class:`~ibkr_bridge.Bridge` with
real clocks, and prints ``pid <n>``. Forking an already-imported process makes a child
ready in milliseconds instead of the half second an import takes, so the random kill
instants fall on the bridge's work (draining, connecting, writing), not on Python's start.

Each child prints, one line per write (each line is a single write on the pipe):

``started <pid>``
    storage is open (buffer locked and recovered, drain started).
``ack <pid> <bridge_key> <contract> <timestamp>``
    the row is durable: the sink's flush returned after the row was submitted, so it is
    committed in PostgreSQL or fsync'd into the buffer, and the sink neither refused a
    record (buffer full) nor failed a batch. Rows are acknowledged only then.
``nack <pid> <reason>``
    from now on nothing is acknowledged (the sink reported a refusal or a failed batch).

A ``run`` child writes until it is killed. A ``final`` child waits until the buffer is
drained, the breaker CLOSED and fresh rows acknowledged, then stops the bridge cleanly and
prints ``drained <pid> <pending buffer bytes after stop>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.testing import wait_until

FINAL_ROWS = 3  # rows the final child must see acknowledged before it stops


def say(text: str) -> None:
    # One os.write per line: lines from successive children never interleave on the pipe.
    os.write(1, (text + "\n").encode())


class _FailedBatches(logging.Handler):
    """Notices the sink failing a batch (its futures then hold an exception)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unexpected error while writing a batch"):
            self.seen = True


async def serve(mode: str) -> None:
    pid = os.getpid()
    failed = _FailedBatches()
    logging.getLogger("ibkr_bridge.storage.sink").addHandler(failed)
    bridge = Bridge(load_settings(use_dotenv=False))
    acked = 0
    pending: set[asyncio.Task[None]] = set()
    broken: list[str] = []

    async def acknowledge(rows: Sequence[GreeksRow]) -> None:
        nonlocal acked
        # submit() came before this callback, so flush() waits for these rows too.
        await bridge.sink.flush()
        if not broken:
            if bridge.sink.stats.refused_full:
                broken.append("the buffer refused records")
            elif failed.seen:
                broken.append("the sink failed a batch")
            if broken:
                say(f"nack {pid} {broken[0]}")
        if broken:
            return
        for row in rows:
            say(f"ack {pid} {row.key} {row.contract} {row.timestamp.isoformat()}")
        acked += len(rows)

    def on_rows(rows: Sequence[GreeksRow]) -> None:
        task = asyncio.create_task(acknowledge(list(rows)))
        pending.add(task)
        task.add_done_callback(pending.discard)

    bridge.add_row_callback(on_rows)
    await bridge.start()
    say(f"started {pid}")
    if mode == "run":
        await asyncio.Event().wait()  # until SIGKILL
        return
    await wait_until(
        lambda: (
            bridge.connection_state is ConnectionState.LIVE
            and bridge.status.breaker == "CLOSED"
            and bridge.status.buffer_pending_bytes == 0
        ),
        timeout=90,
    )
    first = acked
    await wait_until(lambda: acked >= first + FINAL_ROWS, timeout=30)
    await bridge.stop()
    await asyncio.gather(*pending)
    say(f"drained {pid} {bridge.status.buffer_pending_bytes}")


def child(mode: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the commands are for the fork server, not for us
    os.close(devnull)
    try:
        asyncio.run(serve(mode))
    except BaseException:
        logging.getLogger(__name__).exception("child failed")
        os._exit(1)
    os._exit(0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Children are reaped by the kernel: the test watches them by pid.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        mode = line.strip()
        if mode not in ("run", "final"):
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(mode)
        say(f"pid {pid}")


if __name__ == "__main__":
    main()
