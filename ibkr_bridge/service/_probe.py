"""The LIVE liveness probe: one round trip to the gateway every probe interval.

A gateway that stops answering without closing the connection (frozen, not gone) is only
noticed this way; the probe then reports the connection lost to the driver.
"""

from __future__ import annotations

import asyncio

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.feeds.protocol import Feed, FeedListener

__all__ = ["describe_error", "probe_until_frozen"]


async def probe_until_frozen(
    feed: Feed, clock: Clock, listener: FeedListener, *, interval: float, timeout: float
) -> None:
    """Probe every ``interval`` s; on a failure or a ``timeout``, tell ``listener`` and end."""
    while True:
        await clock.sleep(interval)
        try:
            async with asyncio.timeout(timeout):
                await feed.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            listener.feed_disconnected(
                f"the gateway did not answer a probe within {timeout:g} s "
                f"({describe_error(exc)}): treating it as frozen"
            )
            return


def describe_error(exc: BaseException) -> str:
    """``Type: message``, or just the type when the message is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
