"""Every exception ibkr-bridge raises, and the one place database errors are classified.

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
    │   ├── TransientStoreError      try again later: the breaker opens, rows are buffered
    │   └── PermanentStoreError      this data can never be written: log it, skip it
    ├── LifecycleError (RuntimeError)  a Bridge or writer used out of order        [bridge]
    └── GatewayError                 IBKR side: simulator or real gateway
        ├── AccountSelectionError (ValueError)  IB_ACCOUNT missing among several accounts
        └── NeedsLoginError          Client Portal: only a human login can help    [portal]

    IllegalTransition (ValueError)   a trigger not valid in the state             [machines]
        (outside BridgeError on purpose: the pure state machines import nothing with IO,
        and this module imports asyncpg to classify its errors)

Whether a database failure is *transient* (the server is down, restarting, overloaded,
unreachable, slow, or the schema is temporarily gone) or *permanent* (this particular row
is bad) is decided by :func:`classify_db_error` alone. Transient failures trip the circuit
breaker and the rows wait in the buffer; permanent ones never trip it and never block the
rows behind them.
"""

from __future__ import annotations

import enum
from typing import Final

import asyncpg
from asyncpg import exceptions as pgexc


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


class Failure(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# SQLSTATE classes that mean "the server, not the row": connection exceptions (08),
# insufficient resources (53: too many connections, disk full), operator intervention (57:
# admin/crash shutdown, cannot connect now, query cancelled by statement_timeout), system
# errors (58), transaction rollback (40: serialization failure, deadlock), and invalid
# authorization (28: a password being rotated is an outage, not bad data).
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "53", "57", "58", "40", "28", "XX"})
# A table or column vanishing mid-run (dropped by someone) is repaired by re-running the
# schema bootstrap on the next retry; the rows wait in the buffer meanwhile.
_SCHEMA_SQLSTATES: Final = frozenset({"42P01", "42703", "3F000", "42P10"})

_TRANSIENT_TYPES: Final = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket errors
    TimeoutError,  # asyncio.TimeoutError is TimeoutError from Python 3.11
    pgexc.PostgresConnectionError,  # 08xxx incl. ConnectionDoesNotExistError
    pgexc.CannotConnectNowError,
    pgexc.AdminShutdownError,
    pgexc.CrashShutdownError,
    pgexc.TooManyConnectionsError,
    pgexc.QueryCanceledError,
    pgexc.ConnectionFailureError,
    pgexc.InvalidPasswordError,
    pgexc.InvalidAuthorizationSpecificationError,
)


def classify_db_error(exc: BaseException) -> Failure:
    """Transient (retry later, keep the rows) or permanent (this data is bad)."""
    if isinstance(exc, TransientStoreError):
        return Failure.TRANSIENT
    if isinstance(exc, PermanentStoreError):
        return Failure.PERMANENT
    if isinstance(exc, _TRANSIENT_TYPES):
        return Failure.TRANSIENT
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "cannot perform operation: another operation is in
        # progress" after a cut: the connection is gone, not the data. InterfaceErrors
        # about arguments are raised before anything is sent and count as permanent.
        text = str(exc).lower()
        if "closed" in text or "connection" in text or "in progress" in text:
            return Failure.TRANSIENT
        return Failure.PERMANENT
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state in _SCHEMA_SQLSTATES or state[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return Failure.TRANSIENT
        return Failure.PERMANENT
    if isinstance(exc, asyncpg.exceptions._base.InternalClientError):
        return Failure.TRANSIENT
    return Failure.PERMANENT


def is_transient(exc: BaseException) -> bool:
    return classify_db_error(exc) is Failure.TRANSIENT


def is_schema_problem(exc: BaseException) -> bool:
    """True when the failure says a bridge table or column is missing."""
    state = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and state in _SCHEMA_SQLSTATES
