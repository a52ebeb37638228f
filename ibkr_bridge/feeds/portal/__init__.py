"""The PORTAL feed: the Client Portal Web API over aiohttp."""

from ibkr_bridge.feeds.portal._http import MAX_BODY_BYTES
from ibkr_bridge.feeds.portal._wire import (
    MODE,
    NeedsLoginError,
    PortalPosition,
    PortalSettings,
    api_root,
)
from ibkr_bridge.feeds.portal.feed import PortalFeed

__all__ = [
    "MAX_BODY_BYTES",
    "MODE",
    "NeedsLoginError",
    "PortalFeed",
    "PortalPosition",
    "PortalSettings",
    "api_root",
]
