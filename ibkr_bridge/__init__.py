"""ibkr-bridge: keeps PostgreSQL fed with an Interactive Brokers portfolio's net Greeks.

The public API is what this module exports; everything else is an implementation detail.
Testing helpers (fake clock, TCP proxy, test database) live in :mod:`ibkr_bridge.testing`
and the IBKR simulators in :mod:`ibkr_bridge.sim`.
"""

from __future__ import annotations

from .bridge import Bridge, BridgeStatus, TickInfo
from .buffer import BufferFullError, BufferLockedError, JsonlBuffer
from .clock import Clock, FakeClock, SystemClock
from .config import ApiMode, ConfigError, Settings, load_settings
from .errors import (
    AccountSelectionError,
    BridgeError,
    GatewayError,
    LifecycleError,
    PermanentStoreError,
    SchemaError,
    StoreError,
    TransientStoreError,
)
from .machines import BreakerState, ConnectionState, IllegalTransition, Transition
from .records import ApiEvent, GreeksRow
from .schema import ensure_bridge_schema
from .sink import DurableWriter
from .store import Store

__version__ = "0.1.0.dev0"

__all__ = [
    "AccountSelectionError",
    "ApiEvent",
    "ApiMode",
    "BreakerState",
    "Bridge",
    "BridgeError",
    "BridgeStatus",
    "BufferFullError",
    "BufferLockedError",
    "Clock",
    "ConfigError",
    "ConnectionState",
    "DurableWriter",
    "FakeClock",
    "GatewayError",
    "GreeksRow",
    "IllegalTransition",
    "JsonlBuffer",
    "LifecycleError",
    "PermanentStoreError",
    "SchemaError",
    "Settings",
    "Store",
    "StoreError",
    "SystemClock",
    "TickInfo",
    "TransientStoreError",
    "Transition",
    "__version__",
    "ensure_bridge_schema",
    "load_settings",
]
