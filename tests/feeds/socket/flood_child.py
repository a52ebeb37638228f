"""Run in a subprocess by test_socket_gateway_text: a SocketFeed under a garbage flood.

The IB Gateway simulator (same process, real clock; it waits for the socket to drain
between batches, so its own buffers stay small) sends ``count`` framed garbage messages of
``nbytes`` each to a connected SocketFeed, with the service's logging configured. Prints
one JSON line: peak RSS (KiB) before and after, whether the feed is still connected and
still answers a probe, and how many log lines the flood produced and the longest one.
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import sys
from typing import Any

from ibkr_bridge.feeds.socket.feed import SocketFeed
from ibkr_bridge.ops.logs import configure_logging
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio


def peak_kib() -> int:
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries it over
    # fork and exec, so a child of a 300 MB pytest starts at "300 MB" and proves nothing.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best we have


async def main(count: int, nbytes: int) -> dict[str, Any]:
    stream = io.StringIO()
    configure_logging(stream=stream)
    async with TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim:
        feed = SocketFeed(port=sim.port, client_id=17)
        await feed.connect()
        await feed.probe()
        baseline = peak_kib()
        before = len(stream.getvalue().splitlines())
        await sim.garbage(nbytes, framed=True, count=count)
        await feed.probe()  # answered after every frame sent before it was handled
        lines = stream.getvalue().splitlines()[before:]
        result = {
            "baseline_kib": baseline,
            "peak_kib": peak_kib(),
            "connected": feed.connected,
            "log_lines": len(lines),
            "longest_line": max((len(line) for line in lines), default=0),
            "sent_bytes": count * nbytes,
        }
        await feed.disconnect()
        return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
