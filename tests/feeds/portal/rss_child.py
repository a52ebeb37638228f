"""Run in a subprocess by test_portal_gateway_text: a PortalFeed meets 50 MB answers.

The simulator (same process, on the real clock) answers the market-data snapshot with a
50 MB JSON array, first with a Content-Length, then chunked without one; the feed polls a
few times. Prints one JSON line: the process's peak RSS (``VmHWM``, KiB) before and
after, and the events the feed reported.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from collections.abc import Mapping
from typing import Any

from ibkr_bridge.core.records import Status
from ibkr_bridge.feeds.portal.feed import PortalFeed
from ibkr_bridge.sim import PortalSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portal import SNAPSHOT


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def feed_disconnected(self, reason: str) -> None:
        self.seen.append(("disconnect", reason))

    def feed_data_lost(self, code: int, message: str) -> None:
        pass

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        pass

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.seen.append((event, message))


def peak_kib() -> int:
    # VmHWM is this process's own high-water mark. ru_maxrss is not: Linux carries it over
    # fork and exec, so a child of a 300 MB pytest starts at "300 MB" and proves nothing.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best we have


async def main(nbytes: int) -> dict[str, Any]:
    async with PortalSimulator(single_underlying_portfolio()) as sim:
        feed = PortalFeed(gateway_url=sim.base_url, ca_path=sim.ca_path, event_interval=0.0)
        events = Events()
        feed.set_listener(events)
        await feed.connect()
        await feed.resubscribe()  # past the pre-flight: the next snapshots carry data
        baseline = peak_kib()
        for chunked in (False, True):
            sim.huge_body(nbytes, chunked=chunked, endpoints=[SNAPSHOT])
            for _ in range(3):
                await feed.resubscribe()
        connected = feed.connected
        await feed.disconnect()
        return {
            "baseline_kib": baseline,
            "peak_kib": peak_kib(),
            "connected": connected,
            "events": events.seen,
            "snapshots_answered": sim.count(SNAPSHOT, status=200),
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1])))))
