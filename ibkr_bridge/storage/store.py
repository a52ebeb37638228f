"""PostgreSQL writes: the live path and the buffer drain share one COPY-based path.

Greeks rows are routed by their contract: ``PORTFOLIO`` rows to ``portfolio_greeks``, the
per-underlying rows to ``underlying_greeks`` (so an unfiltered reader of the latest
``portfolio_greeks`` row gets the portfolio). Buffered lines need nothing new: a line
written when every row went to ``portfolio_greeks`` is routed the same way on drain.

A batch of records (Greeks rows and api_logs events, in order) is written in one
transaction. First optimistically: COPY straight into the tables. If any key is already
there (a replay: a buffer line drained twice after a crash, a commit retried because its
reply was lost, a spilled batch whose slow write committed after all), that COPY fails as a
whole and a savepoint undoes it; then the batch goes through per-connection temporary
tables and one ``INSERT ... SELECT ... ORDER BY seq ON CONFLICT (bridge_key) DO NOTHING``
per table. Either way a replay is a no-op, so the live path and the drain can both be
at-least-once, and the common case costs no more than a plain COPY.

Every call runs under a deadline: asyncpg's COPY from an in-memory source can wait
forever when the backend dies mid-COPY, and a black-holed server never answers at all.
On a deadline or any failure mid-transaction the connection is terminated, never
returned to the pool in an unknown state.

Failures are re-raised as :class:`~ibkr_bridge.core.errors.TransientStoreError` or
:class:`~ibkr_bridge.core.errors.PermanentStoreError`, decided by
:func:`~ibkr_bridge.storage.dberrors.classify_db_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import asyncpg

from ibkr_bridge.core.errors import PermanentStoreError, SchemaError, TransientStoreError
from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import ApiEvent, GreeksRow, Record
from ibkr_bridge.storage.dberrors import Failure, classify_db_error, is_replay
from ibkr_bridge.storage.schema import (
    EVENTS_TABLE,
    GREEKS_TABLE,
    UNDERLYING_TABLE,
    check_bridge_schema,
    ensure_bridge_schema,
)

T = TypeVar("T")

GREEKS_COPY_COLUMNS: Final = (
    "seq",
    "timestamp",
    "contract",
    "delta",
    "gamma",
    "vega",
    "theta",
    "underlying_price",
    "dollar_delta",
    "account",
    "api_mode",
    "legs",
    "legs_missing",
    "bridge_key",
)
EVENTS_COPY_COLUMNS: Final = (
    "seq",
    "timestamp",
    "api_mode",
    "event",
    "status",
    "message",
    "machine",
    "source_state",
    "dest_state",
    "detail",
    "bridge_key",
)

_TEMP_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS _bridge_greeks_in (
    seq integer, timestamp timestamptz, contract text, delta double precision,
    gamma double precision, vega double precision, theta double precision,
    underlying_price double precision, dollar_delta double precision, account text,
    api_mode text, legs integer, legs_missing integer, bridge_key text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _bridge_events_in (
    seq integer, timestamp timestamptz, api_mode text, event text, status text,
    message text, machine text, source_state text, dest_state text, detail jsonb,
    bridge_key text
) ON COMMIT DELETE ROWS;
""".strip()

# A Greeks record's table follows from its contract alone, so a replayed record (a buffer
# line written by a version that put every row in portfolio_greeks included) always lands
# in the same table as its first copy and its key makes the replay a no-op there.
_GREEKS_INSERT: Final = f"""
INSERT INTO {GREEKS_TABLE} ({", ".join(GREEKS_COPY_COLUMNS[1:])})
SELECT {", ".join(GREEKS_COPY_COLUMNS[1:])} FROM _bridge_greeks_in
WHERE contract = '{PORTFOLIO}' ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING;
INSERT INTO {UNDERLYING_TABLE} ({", ".join(GREEKS_COPY_COLUMNS[1:])})
SELECT {", ".join(GREEKS_COPY_COLUMNS[1:])} FROM _bridge_greeks_in
WHERE contract IS DISTINCT FROM '{PORTFOLIO}' ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING
"""
_EVENTS_INSERT: Final = f"""
INSERT INTO {EVENTS_TABLE} ({", ".join(EVENTS_COPY_COLUMNS[1:])})
SELECT {", ".join(EVENTS_COPY_COLUMNS[1:])} FROM _bridge_events_in ORDER BY seq
ON CONFLICT (bridge_key) DO NOTHING
"""

GreeksTuple = tuple[Any, ...]
EventTuple = tuple[Any, ...]


def greeks_tuple(seq: int, row: GreeksRow) -> GreeksTuple:
    return (
        seq,
        row.timestamp,
        row.contract,
        row.delta,
        row.gamma,
        row.vega,
        row.theta,
        row.underlying_price,
        row.dollar_delta,
        row.account,
        row.api_mode,
        row.legs,
        row.legs_missing,
        row.key,
    )


def event_tuple(seq: int, event: ApiEvent) -> EventTuple:
    return (
        seq,
        event.timestamp,
        event.api_mode,
        event.event,
        event.status,
        event.message,
        event.machine,
        event.source_state,
        event.dest_state,
        json.dumps(dict(event.detail), separators=(",", ":"), default=str),
        event.key,
    )


def split_records(records: Iterable[Record]) -> tuple[list[GreeksTuple], list[EventTuple]]:
    greeks: list[GreeksTuple] = []
    events: list[EventTuple] = []
    for seq, record in enumerate(records):
        if isinstance(record, GreeksRow):
            greeks.append(greeks_tuple(seq, record))
        else:
            events.append(event_tuple(seq, record))
    return greeks, events


def split_raw(lines: Iterable[Mapping[str, Any]]) -> tuple[list[GreeksTuple], list[EventTuple]]:
    """Tuples straight from buffer dicts (``{"type", "key", "data"}``), skipping attrs.

    The drain of a large buffer spends its time here, so it does the least work that
    still hands asyncpg typed values (binary COPY needs datetimes, not strings).
    """
    greeks: list[GreeksTuple] = []
    events: list[EventTuple] = []
    parse_ts = datetime.fromisoformat
    for seq, line in enumerate(lines):
        d = line["data"]
        if line["type"] == "greeks":
            greeks.append(
                (
                    seq,
                    parse_ts(d["timestamp"]),
                    d["contract"],
                    d["delta"],
                    d["gamma"],
                    d["vega"],
                    d["theta"],
                    d["underlying_price"],
                    d["dollar_delta"],
                    d["account"],
                    d["api_mode"],
                    d["legs"],
                    d["legs_missing"],
                    line["key"],
                )
            )
        else:
            events.append(
                (
                    seq,
                    parse_ts(d["timestamp"]),
                    d["api_mode"],
                    d["event"],
                    d["status"],
                    d["message"],
                    d["machine"],
                    d["source_state"],
                    d["dest_state"],
                    json.dumps(d["detail"], separators=(",", ":")),
                    line["key"],
                )
            )
    return greeks, events


class _RollBack(Exception):
    """Leaves a trial transaction (:meth:`Store.accepts`) without committing it."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_TEMP_DDL)


class Store:
    """The bridge's PostgreSQL writer over an asyncpg pool.

    Create it with :meth:`open` (which does not connect yet, so a bridge can start while
    the database is down) and close it with :meth:`close`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        command_timeout: float = 10.0,
        acquire_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._command_timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str | None = None,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        max_size: int = 2,
        **connect_kwargs: Any,
    ) -> Store:
        """A store whose pool connects lazily (min_size 0) with the given deadlines."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            init=_init_connection,
            # Connections idle for long are recycled so a server restart is noticed
            # at the next write rather than by a stale socket.
            max_inactive_connection_lifetime=60.0,
            **connect_kwargs,
        )
        return cls(pool, command_timeout=command_timeout, acquire_timeout=connect_timeout)

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
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()

    async def ensure_schema(self) -> None:
        await self._run(_ensure_or_check)

    async def ping(self) -> None:
        """One round trip; raises a StoreError when the database cannot answer."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def write(self, records: Sequence[Record]) -> None:
        """Write records in one transaction, in order; replays are no-ops."""
        if records:
            greeks, events = split_records(records)
            await self.write_tuples(greeks, events)

    async def accepts(self, records: Sequence[Record]) -> bool:
        """Would the tables take these records? Tried in a transaction that is rolled back.

        False when PostgreSQL refuses them as data; a transient failure raises as usual.
        """
        greeks, events = split_records(records)

        async def tx(conn: asyncpg.Connection) -> None:
            with contextlib.suppress(_RollBack):
                async with conn.transaction():
                    if greeks:
                        await conn.copy_records_to_table(
                            GREEKS_TABLE,
                            records=[g[1:] for g in greeks],
                            columns=GREEKS_COPY_COLUMNS[1:],
                        )
                    if events:
                        await conn.copy_records_to_table(
                            EVENTS_TABLE,
                            records=[e[1:] for e in events],
                            columns=EVENTS_COPY_COLUMNS[1:],
                        )
                    raise _RollBack

        try:
            await self._run(tx)
        except PermanentStoreError:
            return False
        return True

    async def write_portfolio_snapshot(self, row: GreeksRow) -> None:
        await self.write([row])

    async def log_api_event(self, event: ApiEvent) -> None:
        await self.write([event])

    async def write_tuples(
        self, greeks: Sequence[GreeksTuple], events: Sequence[EventTuple]
    ) -> None:
        if not greeks and not events:
            return

        async def tx(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                # Optimistic first: COPY straight into the tables, as fast as COPY gets.
                # A replayed key makes it fail as a whole (a savepoint undoes just that);
                # then the temp-table path below inserts what is new and skips replays.
                try:
                    async with conn.transaction():
                        for table, rows in _by_table(greeks).items():
                            await conn.copy_records_to_table(
                                table, records=rows, columns=GREEKS_COPY_COLUMNS[1:]
                            )
                        if events:
                            await conn.copy_records_to_table(
                                EVENTS_TABLE,
                                records=[e[1:] for e in events],
                                columns=EVENTS_COPY_COLUMNS[1:],
                            )
                    return
                except asyncpg.UniqueViolationError as exc:
                    if not is_replay(exc):
                        raise  # another unique constraint: the record's own data
                if greeks:
                    await conn.copy_records_to_table(
                        "_bridge_greeks_in", records=greeks, columns=GREEKS_COPY_COLUMNS
                    )
                    await conn.execute(_GREEKS_INSERT)
                if events:
                    await conn.copy_records_to_table(
                        "_bridge_events_in", records=events, columns=EVENTS_COPY_COLUMNS
                    )
                    await conn.execute(_EVENTS_INSERT)

        await self._run(tx)

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
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
        finally:
            if conn is not None:
                await self._release(conn)
        return result

    async def _release(self, conn: asyncpg.Connection) -> None:
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._pool.release(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            _terminate(conn)


def _by_table(greeks: Sequence[GreeksTuple]) -> dict[str, list[GreeksTuple]]:
    """PORTFOLIO rows to portfolio_greeks, per-underlying rows to underlying_greeks (no seq)."""
    tables: dict[str, list[GreeksTuple]] = {}
    for g in greeks:
        table = GREEKS_TABLE if g[2] == PORTFOLIO else UNDERLYING_TABLE
        tables.setdefault(table, []).append(g[1:])
    return tables


async def _ensure_or_check(conn: asyncpg.Connection) -> None:
    """Create the tables if absent; a role that may only write needs them to be right.

    The bootstrap's DDL needs the tables' owner (or CREATE on the schema). A role granted
    only INSERT and SELECT, as least privilege suggests, would fail every probe and the
    breaker would never close: when the tables are already there and in shape, that is
    all the probe needs to know.
    """
    try:
        await ensure_bridge_schema(conn)
    except asyncpg.InsufficientPrivilegeError:
        if await check_bridge_schema(conn):  # missing or misshapen: the DDL was needed
            raise


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
