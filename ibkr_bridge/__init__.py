"""ibkr-bridge: keeps PostgreSQL fed with an Interactive Brokers portfolio's net Greeks.

The public API is what this module exports (``__all__``): the :class:`Bridge`, its settings,
the records it writes, its status, the error classes and :func:`ensure_bridge_schema`.
Everything else is imported from its own module: the storage internals
(:class:`~ibkr_bridge.storage.sink.DurableWriter`, :class:`~ibkr_bridge.storage.store.Store`,
:class:`~ibkr_bridge.storage.buffer.JsonlBuffer`), the clocks
(:mod:`ibkr_bridge.core.clock`), the testing helpers (:mod:`ibkr_bridge.testing`: fake
clock, TCP proxy, test database) and the IBKR simulators (:mod:`ibkr_bridge.sim`).

The names are loaded on first use (PEP 562), so importing a pure module such as
``ibkr_bridge.core.greeks`` does not import aiohttp, asyncpg or prometheus_client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from ibkr_bridge.core._version import __version__
from ibkr_bridge.core.errors import (
    AccountSelectionError,
    BridgeError,
    BufferFormatError,
    BufferFullError,
    BufferLockedError,
    BufferPathError,
    ConfigError,
    GatewayError,
    IllegalTransition,
    JsonlBufferError,
    LifecycleError,
    NeedsLoginError,
    PermanentStoreError,
    RecordFormatError,
    SchemaError,
    StoreError,
    TransientStoreError,
)

if TYPE_CHECKING:  # the same names, for type checkers and the API docs (loaded lazily)
    from ibkr_bridge.config import ApiMode, Settings, load_settings
    from ibkr_bridge.core.machines import BreakerState, ConnectionState
    from ibkr_bridge.core.records import ApiEvent, GreeksRow
    from ibkr_bridge.service.bridge import Bridge
    from ibkr_bridge.service.status import BridgeStatus, TickInfo
    from ibkr_bridge.storage.schema import ensure_bridge_schema

#: Each lazily loaded name and the module that defines it.
_LAZY: Final = {
    "ApiEvent": "ibkr_bridge.core.records",
    "ApiMode": "ibkr_bridge.config",
    "BreakerState": "ibkr_bridge.core.machines",
    "Bridge": "ibkr_bridge.service.bridge",
    "BridgeStatus": "ibkr_bridge.service.status",
    "ConnectionState": "ibkr_bridge.core.machines",
    "GreeksRow": "ibkr_bridge.core.records",
    "Settings": "ibkr_bridge.config",
    "TickInfo": "ibkr_bridge.service.status",
    "ensure_bridge_schema": "ibkr_bridge.storage.schema",
    "load_settings": "ibkr_bridge.config",
}

__all__ = [
    "AccountSelectionError",
    "ApiEvent",
    "ApiMode",
    "BreakerState",
    "Bridge",
    "BridgeError",
    "BridgeStatus",
    "BufferFormatError",
    "BufferFullError",
    "BufferLockedError",
    "BufferPathError",
    "ConfigError",
    "ConnectionState",
    "GatewayError",
    "GreeksRow",
    "IllegalTransition",
    "JsonlBufferError",
    "LifecycleError",
    "NeedsLoginError",
    "PermanentStoreError",
    "RecordFormatError",
    "SchemaError",
    "Settings",
    "StoreError",
    "TickInfo",
    "TransientStoreError",
    "__version__",
    "ensure_bridge_schema",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
