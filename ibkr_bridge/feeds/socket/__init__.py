"""The SOCKET feed: ib_async talking to IB Gateway or TWS."""

from ibkr_bridge.feeds.socket._wire import (
    MAX_FRAME_BYTES,
    MODE,
    FrameLimit,
    SocketSettings,
)
from ibkr_bridge.feeds.socket.feed import SocketFeed

__all__ = ["MAX_FRAME_BYTES", "MODE", "FrameLimit", "SocketFeed", "SocketSettings"]
