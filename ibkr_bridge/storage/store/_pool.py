"""The store's pool and deadlines: every operation on a connection runs under a timeout.

asyncpg's COPY from an in-memory source can wait forever when the backend dies mid-COPY,
and a black-holed server never answers at all. On a deadline or any failure
mid-transaction the connection is terminated, never returned to the pool in an unknown
state; failures are re-raised as TransientStoreError or PermanentStoreError, decided by
:func:`~ibkr_bridge.storage.dberrors.classify_db_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from ibkr_bridge.config import default_of
from ibkr_bridge.core.errors import PermanentStoreError, SchemaError, TransientStoreError
from ibkr_bridge.storage.dberrors import Failure, classify_db_error
from ibkr_bridge.storage.store._copy import TEMP_DDL

T = TypeVar("T")

# The settings' defaults (BRIDGE_DB_COMMAND_TIMEOUT, BRIDGE_DB_CONNECT_TIMEOUT).
COMMAND_TIMEOUT: Final[float] = default_of("db_command_timeout")
CONNECT_TIMEOUT: Final[float] = default_of("db_connect_timeout")
# Errors from closing or releasing that leave only one thing to do: terminate.
_CLOSE_ERRORS: Final = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(TEMP_DDL)


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing more than asyncpg's rollback of an open transaction.

    asyncpg's default (``RESET ALL; CLOSE ALL; UNLISTEN *; pg_advisory_unlock_all()``) is
    one more round trip inside every write's time. The store sets no session setting,
    listens to nothing, keeps no cursor and takes transaction-scoped advisory locks only:
    there is nothing to reset. A connection that failed mid-use is terminated instead.
    """
    del conn


class _Pooled:
    """An asyncpg pool whose every use runs under the acquire and command deadlines."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        command_timeout: float = COMMAND_TIMEOUT,
        acquire_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._pool = pool
        self._command_timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._closed = False

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._pool.close()
        except _CLOSE_ERRORS:
            self._pool.terminate()

    async def _run(
        self,
        op: Callable[[asyncpg.Connection], Awaitable[T]],
        on_done: Callable[[], None] | None = None,
    ) -> T:
        """Run ``op`` on a pooled connection; ``on_done`` right after it succeeds.

        ``on_done`` runs before the connection goes back to the pool: asyncpg's release
        (a shielded task) costs two loop iterations, each a chance for a burst of stream
        decoding to delay whoever waits for the commit.
        """
        if self._closed:
            # Not the data's fault: a record written after close waits in the buffer.
            raise TransientStoreError("the store is closed")
        conn: asyncpg.Connection | None = None
        try:
            async with asyncio.timeout(self._acquire_timeout + self._command_timeout):
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
                # that lands as the inner call completes, and stop() would wait forever.
                async with asyncio.timeout(self._acquire_timeout):
                    conn = await self._pool.acquire()
                async with asyncio.timeout(self._command_timeout):
                    result = await op(conn)
        except BaseException as exc:
            if conn is not None:
                # Mid-transaction state is unknown (a cut, a deadline): never reuse it.
                _terminate(conn)
            if isinstance(exc, asyncio.CancelledError | SchemaError):
                raise  # a table in the wrong shape is not a database failure
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"the database did not answer within the deadline ({exc})")
            if not isinstance(exc, Exception):
                raise
            raise _wrap(exc) from exc
        else:
            if on_done is not None:
                on_done()  # its errors are its own, not the database's
        finally:
            if conn is not None:
                await self._release(conn)
        return result

    async def _release(self, conn: asyncpg.Connection) -> None:
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._pool.release(conn)
        except _CLOSE_ERRORS:
            _terminate(conn)


def _terminate(conn: asyncpg.Connection) -> None:
    # The pool may already have taken back a proxy whose socket died under it.
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _wrap(exc: Exception) -> Exception:
    if isinstance(exc, TransientStoreError | PermanentStoreError):
        return exc
    kind = classify_db_error(exc)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if kind is Failure.TRANSIENT:
        return TransientStoreError(text)
    return PermanentStoreError(text)
