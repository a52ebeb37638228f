"""Every exception ibkr-bridge raises, as one hierarchy under :class:`BridgeError`.

The hierarchy::

    BridgeError                      anything raised on purpose by ibkr-bridge
    ├── ConfigError (ValueError)     bad settings; lists every problem at once    [config]
    ├── SchemaError                  a bridge table exists but lacks columns/keys [schema]
    ├── JsonlBufferError             the crash-safe JSONL buffer                  [buffer]
    │   ├── BufferLockedError        another process holds the buffer
    │   ├── BufferFullError          the size cap is reached (nothing is deleted)
    │   ├── BufferFormatError        a buffer file of an unknown header version
    │   └── BufferPathError          the buffer path is a symlink, a directory, not permitted
    ├── StoreError                   a database write failed
    │   ├── TransientStoreError      the environment (anything but bad data): the breaker
    │   │                            opens, records wait in the buffer
    │   └── PermanentStoreError      this record's own data is wrong (SQLSTATE 22/23):
    │                                isolated into <buffer>.rejected
    ├── LifecycleError (RuntimeError)  a Bridge or writer used out of order        [bridge]
    └── GatewayError                 IBKR side: simulator or real gateway
        ├── AccountSelectionError (ValueError)  IB_ACCOUNT missing among several accounts
        └── NeedsLoginError          Client Portal: only a human login can help    [portal]

    IllegalTransition (ValueError)   a trigger not valid in the state             [machines]
        (outside BridgeError: defined with the machines, in core.machines.base)

This module imports nothing but the standard library, so the pure layer can raise these.
Database failures are classified by meaning in :mod:`ibkr_bridge.storage.dberrors`.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error ibkr-bridge raises on purpose."""


class SchemaError(BridgeError):
    """A bridge table exists in a shape the bridge cannot write to."""


class StoreError(BridgeError):
    """A database operation failed (the cause is chained)."""


class TransientStoreError(StoreError):
    """The database is unreachable or unwell; the same write may succeed later."""


class PermanentStoreError(StoreError):
    """The database refused this data; retrying the same rows cannot help."""


class LifecycleError(BridgeError, RuntimeError):
    """An object was used in a state that does not allow it."""


class GatewayError(BridgeError):
    """The IBKR gateway (socket or Client Portal) misbehaved or refused us."""


class AccountSelectionError(GatewayError, ValueError):
    """Several accounts are managed and ``IB_ACCOUNT`` does not choose one."""
