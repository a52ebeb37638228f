"""Run in a subprocess by test_socket_frame_limit: a real Bridge whose Gateway announces one
huge frame.

    python huge_frame_child.py NBYTES BOUND_KIB

A real :class:`~ibkr_bridge.Bridge` (real clock, PostgreSQL in a private schema, the
service's logging) runs against the IB Gateway simulator in this process. Once it is LIVE the
simulator announces a 2 GiB frame and streams up to ``NBYTES`` filler bytes of it (draining
the socket between chunks, so its own buffers stay small). Should this process's peak RSS
pass ``BOUND_KIB`` the streaming is stopped there (so a client that buffers everything fails
in seconds instead of running out of memory). Then, unless that happened, it waits for the
Bridge to be LIVE again on a new connection. Prints one JSON line: peak RSS (KiB) before and
after, filler bytes sent, whether the bound stopped it, whether the Bridge reconnected, the
``api_logs`` events and service-log lines about the frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.ops.logs import configure_logging
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TestDatabase, wait_until

GUARD = 60.0  # seconds a wait may take before the child reports it as not reached
ABOUT = "announced a frame"


def peak_kib() -> int:
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries it over
    # fork and exec, so a child of a 300 MB pytest starts at "300 MB" and proves nothing.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best we have


async def bounded(stream: asyncio.Task[int], bound_kib: int) -> bool:
    """Wait for ``stream``; cancel it once the peak RSS passes the bound (True if so)."""
    while not stream.done():
        if peak_kib() > bound_kib:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
            return True
        await asyncio.sleep(0.005)
    return False


async def main(nbytes: int, bound_kib: int) -> dict[str, Any]:
    log = io.StringIO()
    configure_logging(stream=log)
    async with (
        TestDatabase.create() as db,
        TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                {
                    "IB_SOCKET_PORT": str(sim.port),
                    "IB_CONNECT_TIMEOUT": "5",
                    "DATABASE_URL": db.dsn,
                    "BRIDGE_BUFFER_PATH": str(Path(tmp) / "buffer.jsonl"),
                    "BRIDGE_BACKOFF": "0.2",
                },
                use_dotenv=False,
            )
            bridge = Bridge(settings)
            async with bridge:
                await wait_until(
                    lambda: bridge.connection_state is ConnectionState.LIVE, timeout=GUARD
                )
                accepted = sim.connections_accepted
                baseline = peak_kib()
                stream = asyncio.create_task(sim.huge_frame(nbytes=nbytes))
                hit_bound = await bounded(stream, bound_kib)
                sent = -1 if hit_bound else stream.result()
                peak = peak_kib()
                reconnected = False
                if not hit_bound:
                    with contextlib.suppress(TimeoutError):
                        await wait_until(
                            lambda: (
                                bridge.connection_state is ConnectionState.LIVE
                                and sim.connections_accepted > accepted
                            ),
                            timeout=GUARD,
                        )
                        reconnected = True
                await bridge.sink.flush()
                events = await db.fetch(
                    "SELECT event, status, message FROM api_logs WHERE message LIKE $1 ORDER BY id",
                    f"%{ABOUT}%",
                )
    lines = [line for line in log.getvalue().splitlines() if ABOUT in line]
    return {
        "baseline_kib": baseline,
        "peak_kib": peak,
        "sent_bytes": sent,
        "hit_bound": hit_bound,
        "reconnected": reconnected,
        "connections": sim.connections_accepted - accepted,
        "events": [dict(e) for e in events],
        "log_lines": lines,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
