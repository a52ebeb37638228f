"""The SOCKET feed's liveness probe: one reqCurrentTime, and any message counts as an answer."""

from __future__ import annotations

import asyncio
from typing import Final

from ib_async import IB

from ibkr_bridge.feeds.socket._ibasync import messages_received

# How often a probe looks for Gateway traffic while its reqCurrentTime is pending.
_PROBE_POLL: Final = 0.02


async def probe_gateway(ib: IB) -> None:
    """Return once the Gateway proves it is alive; hang while it is frozen.

    One reqCurrentTime is sent, and any message arriving after that proves life as
    well as its answer does: while ib_async throttles its own requests (45 a second; a
    book of 1,000 legs takes over 20 s to subscribe) the request waits behind them,
    but the Gateway's ticks keep coming. A frozen Gateway sends neither, and the
    Bridge's timeout around this call ends the connection.
    """
    mark = messages_received(ib)
    answer = asyncio.ensure_future(ib.reqCurrentTimeAsync())
    try:
        while not answer.done():
            if messages_received(ib) > mark:
                return
            await asyncio.sleep(_PROBE_POLL)
        answer.result()
    finally:
        if not answer.done():
            answer.cancel()
