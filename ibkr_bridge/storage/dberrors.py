"""The one place database errors are classified, by what they mean (transient vs permanent).

A database failure is judged by what it means, in one place, :func:`classify_db_error`:

- *permanent* (``PermanentStoreError``: this record's own data is wrong) only for SQLSTATE
  class 22 (data exception: a NUL byte, a number out of range, malformed JSON) and class
  23 (integrity constraint: NOT NULL, CHECK, foreign key, unique), and for asyncpg's
  client-side refusal to encode a value (its ``DataError``, ``OverflowError``). The record
  is isolated into ``<buffer>.rejected`` and never blocks the rows behind it.
- a unique violation on the idempotency key ``bridge_key`` is a *replay*, not bad data:
  the row is already there (:func:`is_replay`; the store turns it into a no-op).
- *transient* (``TransientStoreError``: the environment, the same write may succeed later)
  for everything else: cannot connect, DNS, TLS, a DSN asyncpg cannot use, authentication
  (28), database missing (3D000), table or column missing (42P01, 42703), insufficient
  privilege (42501), read-only transaction after a failover (25006), disk full (53100),
  shutdowns (57), deadlocks (40), no partition of ``position_greeks`` for the row's day
  (23514 "no partition of relation": class 23, yet the environment's), and any exception
  nobody foresaw. The breaker opens and
  the records wait in the buffer; guessing "environment" for an unknown failure costs a
  wait, guessing "bad data" would cost the row.

The sink adds one more rule on top (:mod:`ibkr_bridge.storage.sink`): a run of consecutive
permanent refusals longer than a handful is itself treated as an environment failure.
"""

from __future__ import annotations

import enum
from typing import Final

import asyncpg

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError


class Failure(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# The only SQLSTATE classes that speak about the record rather than the environment:
# data exception (22) and integrity constraint violation (23).
_DATA_SQLSTATE_CLASSES: Final = frozenset({"22", "23"})
_UNIQUE_VIOLATION: Final = "23505"
_CHECK_VIOLATION: Final = "23514"
# The schema's unique indexes on the idempotency key are named <table>_bridge_key_uq.
_IDEMPOTENCY_COLUMN: Final = "bridge_key"
# A table or column vanishing mid-run (dropped by someone) is repaired by re-running the
# schema bootstrap on the next retry; the rows wait in the buffer meanwhile.
_SCHEMA_SQLSTATES: Final = frozenset({"42P01", "42703", "3F000", "42P10"})

# Raised by asyncpg while encoding a record's values, before anything is sent: the value
# itself cannot be stored (an integer beyond int32, bytes that are not text).
_CLIENT_DATA_TYPES: Final = (asyncpg.exceptions._base.DataError, OverflowError)


def is_replay(exc: BaseException) -> bool:
    """True for a unique violation on ``bridge_key``: this record is already stored."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
        return False
    constraint = getattr(exc, "constraint_name", None) or ""
    detail = getattr(exc, "detail", None) or ""
    return _IDEMPOTENCY_COLUMN in constraint or f"({_IDEMPOTENCY_COLUMN})=" in detail


def classify_db_error(exc: BaseException) -> Failure:
    """Permanent only when the record's own data is wrong; anything else is transient."""
    if isinstance(exc, TransientStoreError):
        return Failure.TRANSIENT
    if isinstance(exc, PermanentStoreError):
        return Failure.PERMANENT
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if (
            state[:2] in _DATA_SQLSTATE_CLASSES
            and not is_replay(exc)
            and not is_missing_partition(exc)
        ):
            return Failure.PERMANENT
        # A replay reaching here is retried through the store's ON CONFLICT path, where it
        # is a no-op: waiting is right, rejecting a row that is stored would be wrong.
        return Failure.TRANSIENT
    if isinstance(exc, _CLIENT_DATA_TYPES):
        return Failure.PERMANENT
    # OSError (refused, reset, DNS), TimeoutError, asyncpg's InterfaceError and
    # ClientConfigurationError (a DSN it cannot use), InternalClientError, anything else.
    return Failure.TRANSIENT


def is_transient(exc: BaseException) -> bool:
    return classify_db_error(exc) is Failure.TRANSIENT


def is_schema_problem(exc: BaseException) -> bool:
    """True when the failure says a bridge table, column or partition is missing."""
    state = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and (
        state in _SCHEMA_SQLSTATES or is_missing_partition(exc)
    )


def is_missing_partition(exc: BaseException) -> bool:
    """PostgreSQL found no partition of ``position_greeks`` for a row (23514).

    SQLSTATE class 23, but not the row's fault: the day's partition has not been made
    (the bridge was down across days, or the clock jumped). The schema probe makes it.
    """
    return (
        isinstance(exc, asyncpg.PostgresError)
        and getattr(exc, "sqlstate", None) == _CHECK_VIOLATION
        and str(getattr(exc, "message", "") or exc).startswith("no partition of relation")
    )
