"""ibkr-bridge: keeps PostgreSQL fed with an Interactive Brokers portfolio's net Greeks.

The public API is what this module exports; everything else is an implementation detail.
Testing helpers (fake clock, TCP proxy, test database) live in :mod:`ibkr_bridge.testing`
and the IBKR simulators in :mod:`ibkr_bridge.sim`.
"""

from __future__ import annotations

from ibkr_bridge.config import ApiMode, ConfigError, Settings, load_settings
from ibkr_bridge.core._version import __version__
from ibkr_bridge.core.clock import Clock, FakeClock, SystemClock
from ibkr_bridge.core.errors import (
    AccountSelectionError,
    BridgeError,
    GatewayError,
    LifecycleError,
    PermanentStoreError,
    SchemaError,
    StoreError,
    TransientStoreError,
)
from ibkr_bridge.core.machines import BreakerState, ConnectionState, IllegalTransition, Transition
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.service.bridge import Bridge
from ibkr_bridge.service.status import BridgeStatus, TickInfo
from ibkr_bridge.storage.buffer import BufferFullError, BufferLockedError, JsonlBuffer
from ibkr_bridge.storage.schema import ensure_bridge_schema
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store

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
