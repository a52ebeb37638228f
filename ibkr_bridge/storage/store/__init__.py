"""PostgreSQL writes: the live path and the buffer drain share one COPY-based path.

Greeks rows are routed by their contract: ``PORTFOLIO`` rows to ``portfolio_greeks``, the
per-underlying rows to ``underlying_greeks`` (so an unfiltered reader of the latest
``portfolio_greeks`` row gets the portfolio). Buffered lines need nothing new: a line
written when every row went to ``portfolio_greeks`` is routed the same way on drain.

A batch of records (Greeks rows and api_logs events, in order) is written in one
transaction. First optimistically: COPY straight into the tables. If any key is already
there (a replay: a buffer line drained twice after a crash, a commit retried because its
reply was lost, a spilled batch whose slow write committed after all), that COPY fails as a
whole and its transaction leaves nothing; then the batch goes, in a new transaction,
through per-connection temporary tables and one ``INSERT ... SELECT ... ORDER BY seq ON
CONFLICT (bridge_key) DO NOTHING`` per table. Either way a replay is a no-op, so the live
path and the drain can both be at-least-once, and the common case costs no more than a
plain COPY.

Every call runs under a deadline: asyncpg's COPY from an in-memory source can wait
forever when the backend dies mid-COPY, and a black-holed server never answers at all.
On a deadline or any failure mid-transaction the connection is terminated, never
returned to the pool in an unknown state.

Failures are re-raised as :class:`~ibkr_bridge.core.errors.TransientStoreError` or
:class:`~ibkr_bridge.core.errors.PermanentStoreError`, decided by
:func:`~ibkr_bridge.storage.dberrors.classify_db_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from ibkr_bridge.core.errors import PermanentStoreError
from ibkr_bridge.core.partitions import PartitionPlan
from ibkr_bridge.core.records import ApiEvent, GreeksRow, Record
from ibkr_bridge.storage.positions import (
    PositionTables,
    create_position_table,
    maintain_partitions,
)
from ibkr_bridge.storage.schema import check_bridge_schema, ensure_bridge_schema
from ibkr_bridge.storage.store._copy import copy_batch, trial_copy
from ibkr_bridge.storage.store._pool import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    _Pooled,
    init_connection,
    keep_session,
)
from ibkr_bridge.storage.store._rows import (
    EVENTS_COPY_COLUMNS,
    GREEKS_COPY_COLUMNS,
    EventTuple,
    GreeksTuple,
    PositionTuple,
    RoutedGreeks,
    event_tuple,
    greeks_tuple,
    split_raw,
    split_records,
)
from ibkr_bridge.storage.store._statement import STATEMENT_MAX_POSITIONS, write_statement

__all__ = [
    "EVENTS_COPY_COLUMNS",
    "GREEKS_COPY_COLUMNS",
    "EventTuple",
    "GreeksTuple",
    "PositionTables",
    "PositionTuple",
    "RoutedGreeks",
    "Store",
    "event_tuple",
    "greeks_tuple",
    "split_raw",
    "split_records",
]


class Store(_Pooled):
    """The bridge's PostgreSQL writer over an asyncpg pool.

    Create it with :meth:`open` (which does not connect yet, so a bridge can start while
    the database is down) and close it with :meth:`close`.
    """

    @classmethod
    async def open(
        cls,
        dsn: str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        max_size: int = 2,
        positions: PositionTables | None = None,
        **connect_kwargs: Any,
    ) -> Store:
        """A store whose pool connects lazily (min_size 0) with the given deadlines."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            init=init_connection,
            reset=keep_session,
            # Connections idle for long are recycled so a server restart is noticed
            # at the next write rather than by a stale socket.
            max_inactive_connection_lifetime=60.0,
            **connect_kwargs,
        )
        store = cls(pool, command_timeout=command_timeout, acquire_timeout=connect_timeout)
        store.positions = positions
        return store

    #: ``position_greeks`` is kept (created, partitioned ahead) when set.
    positions: PositionTables | None = None

    # -- probes -------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """The bridge's tables (and ``position_greeks`` with its partitions, when kept)."""
        await self._run(_ensure_or_check)
        if self.positions is not None:
            keep = self.positions
            await self._run(lambda conn: create_position_table(conn, keep.now(), keep.ahead))

    async def maintain_partitions(self) -> PartitionPlan | None:
        """Create the partitions ahead and drop those past retention; what was done."""
        keep = self.positions
        if keep is None:
            return None
        return await self._run(
            lambda conn: maintain_partitions(
                conn, keep.now(), ahead=keep.ahead, retention_days=keep.retention_days
            )
        )

    async def ping(self) -> None:
        """One round trip; raises a StoreError when the database cannot answer."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def accepts(self, records: Sequence[Record]) -> bool:
        """Would the tables take these records? Tried in a transaction that is rolled back.

        False when PostgreSQL refuses them as data; a transient failure raises as usual.
        """
        greeks, events, positions = split_records(records)
        try:
            await self._run(lambda conn: trial_copy(conn, greeks, events, positions))
        except PermanentStoreError:
            return False
        return True

    # -- writes -------------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Write records in one transaction, in order; replays are no-ops."""
        if records:
            await self.write_tuples(*split_records(records))

    async def write_live(
        self, records: Sequence[Record], on_commit: Callable[[], None] | None = None
    ) -> None:
        """As :meth:`write`, shaped for one tick: the live path's write (breaker CLOSED).

        Same transaction, order, replay and error rules. A tick without position rows
        spans up to three small tables (four with a few position rows): one statement, one
        round trip (:mod:`~ibkr_bridge.storage.store._statement`), instead of BEGIN, a COPY
        per table and COMMIT. Many position rows (a big book's) go the COPY way, measured
        faster for them than ``INSERT ... SELECT FROM unnest``. ``on_commit`` runs as soon
        as the batch is committed, before the connection is released.
        """
        if records:
            await self.write_live_tuples(*split_records(records), on_commit=on_commit)

    async def write_live_tuples(
        self,
        greeks: Sequence[GreeksTuple],
        events: Sequence[EventTuple],
        positions: Sequence[PositionTuple] = (),
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        if len(positions) > STATEMENT_MAX_POSITIONS:
            await self._run(lambda conn: copy_batch(conn, greeks, events, positions), on_commit)
        elif greeks or events or positions:
            await self._run(
                lambda conn: write_statement(conn, greeks, events, positions), on_commit
            )

    async def write_portfolio_snapshot(self, row: GreeksRow) -> None:
        await self.write([row])

    async def log_api_event(self, event: ApiEvent) -> None:
        await self.write([event])

    async def write_tuples(
        self,
        greeks: Sequence[GreeksTuple],
        events: Sequence[EventTuple],
        positions: Sequence[PositionTuple] = (),
    ) -> None:
        if greeks or events or positions:
            await self._run(lambda conn: copy_batch(conn, greeks, events, positions))


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
