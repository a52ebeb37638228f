"""The floors tick.py measures the bridge against: a bare ib_async client and a bare INSERT.

- :func:`run_floor`: an ``ib_async.IB`` connected to its own simulator subprocess serving the
  same book, requesting what the bridge's SOCKET feed requests (the positions at connect,
  ``reqMarketDataType``, one ``reqMktData`` per option leg and one per underlying stock,
  qualified first as the feed does) and doing nothing else; its CPU share over the window is
  the cost of receiving and decoding the stream with ib_async, the floor of the bridge's.
- :class:`BareInsert`: a dedicated asyncpg connection writing the same rows the bridge just
  wrote, with plain ``INSERT`` statements in one transaction, into tables created
  ``LIKE ... INCLUDING ALL`` (same columns, indexes and constraints) in the same schema;
  the floor of the bridge's durable write. With ``--position-rows`` the tick's
  ``position_greeks`` rows too, into a copy partitioned like it, in the same transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg
import attrs
from cadence import SimProcess, socket_simulator_args
from ib_async import IB, Contract, StartupFetchNONE

from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import GreeksRow, PositionRow
from ibkr_bridge.feeds.socket._wire import _market_contract
from ibkr_bridge.storage.positions import COPY_COLUMNS as POSITION_COLUMNS
from ibkr_bridge.storage.positions import POSITION_TABLE, position_tuple
from ibkr_bridge.storage.schema import GREEKS_TABLE, UNDERLYING_TABLE
from ibkr_bridge.storage.store import GREEKS_COPY_COLUMNS
from ibkr_bridge.storage.store._rows import greeks_tuple

#: A clientId that is not the bridge's default (both never share one simulator anyway).
FLOOR_CLIENT_ID: Final = 77


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.frozen
class FloorResult:
    legs: int
    tickers: int
    window: float
    cpu_pct: float
    sim_cpu_pct: float | None
    updates: int  # ticker updates ib_async reported in the window (pendingTickersEvent)


async def run_floor(
    portfolio: dict[str, Any], args: argparse.Namespace, workdir: Path
) -> FloorResult:
    """The bare client's CPU share over ``args.seconds`` once every leg has its Greeks."""
    legs = len(portfolio["positions"])
    path = workdir / "floor-portfolio.json"
    path.write_text(json.dumps(portfolio))
    sim = await SimProcess.start(
        socket_simulator_args(
            "WARNING", "--portfolio", str(path), "--tick-interval", str(args.sim_tick_interval)
        ),
        args.startup_timeout,
    )
    ib = IB()
    try:
        await ib.connectAsync(
            sim.host,
            sim.port,
            FLOOR_CLIENT_ID,
            args.startup_timeout,
            readonly=True,
            account=portfolio["accounts"][0],
            raiseSyncErrors=True,
            fetchFields=StartupFetchNONE,
        )
        ib.reqMarketDataType(1)  # IB_MARKET_DATA_TYPE's default, as the bridge
        positions = [p for p in ib.positions() if p.position != 0]
        options = [ib.reqMktData(_market_contract(p.contract, "SMART")) for p in positions]
        for ticker in options:
            ticker.modelGreeks = None  # as the feed does: only Greeks of this stream count
        stocks: list[Contract] = []
        for symbol, currency in sorted(
            {(p.contract.symbol, p.contract.currency) for p in positions}
        ):
            query = Contract(secType="STK", symbol=symbol, exchange="SMART", currency=currency)
            found = await ib.qualifyContractsAsync(query)
            if found and isinstance(found[0], Contract):
                stocks.append(_market_contract(found[0], "SMART"))
        for stock in stocks:
            ib.reqMktData(stock)
        deadline = time.monotonic() + args.startup_timeout
        while any(t.modelGreeks is None for t in options):
            if time.monotonic() > deadline:
                waiting = sum(t.modelGreeks is None for t in options)
                raise SystemExit(f"floor: {waiting} legs without Greeks after the startup timeout")
            await asyncio.sleep(0.1)
        updates = 0

        def count(tickers: set[Any]) -> None:
            nonlocal updates
            updates += len(tickers)

        ib.pendingTickersEvent += count
        sim_cpu0 = sim.cpu_seconds()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(args.seconds)
        cpu1, wall1 = cpu_seconds(), time.perf_counter()
        sim_cpu1 = sim.cpu_seconds()
        ib.pendingTickersEvent -= count
    finally:
        ib.disconnect()
        await sim.stop()
    window = wall1 - wall0
    return FloorResult(
        legs=legs,
        tickers=len(options) + len(stocks),
        window=window,
        cpu_pct=100.0 * (cpu1 - cpu0) / window,
        sim_cpu_pct=(
            100.0 * (sim_cpu1 - sim_cpu0) / window
            if sim_cpu0 is not None and sim_cpu1 is not None
            else None
        ),
        updates=updates,
    )


def describe_floor(r: FloorResult) -> str:
    sim = f"{r.sim_cpu_pct:.1f} %" if r.sim_cpu_pct is not None else "n/a"
    return (
        f"floor ({r.legs} legs, bare ib_async client, {r.tickers} streams): "
        f"{r.window:.1f} s, {r.updates} ticker updates; CPU {r.cpu_pct:.2f} % of a core; "
        f"simulator CPU {sim}"
    )


_COLUMNS: Final = GREEKS_COPY_COLUMNS[1:]
_BARE: Final = {GREEKS_TABLE: "bare_portfolio_greeks", UNDERLYING_TABLE: "bare_underlying_greeks"}
_BARE_POSITIONS: Final = "bare_position_greeks"


def _insert(table: str, columns: Sequence[str] = _COLUMNS) -> str:
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"


class BareInsert:
    """INSERT+COMMIT of given rows on a dedicated connection; times each transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.ms: list[float] = []
        # Client-side CPU of this process over each call: an upper bound of what these
        # inserts add to the bridge's CPU figure (other tasks run during the awaits).
        self.cpu_seconds = 0.0

    @classmethod
    async def open(cls, dsn: str, *, positions: bool = False) -> BareInsert:
        conn = await asyncpg.connect(dsn)
        for table, bare in _BARE.items():
            await conn.execute(f"CREATE TABLE {bare} (LIKE {table} INCLUDING ALL)")
        if positions:
            # Partitioned by day like position_greeks (tuple routing is part of the cost).
            await conn.execute(
                f"CREATE TABLE {_BARE_POSITIONS} (LIKE {POSITION_TABLE} INCLUDING ALL) "
                'PARTITION BY RANGE ("timestamp");'
                f"CREATE TABLE {_BARE_POSITIONS}_all PARTITION OF {_BARE_POSITIONS} DEFAULT"
            )
        return cls(conn)

    async def write(self, rows: Sequence[GreeksRow], positions: Sequence[PositionRow] = ()) -> None:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            table = _BARE[GREEKS_TABLE if row.contract == PORTFOLIO else UNDERLYING_TABLE]
            by_table.setdefault(table, []).append(greeks_tuple(0, row)[1:])
        legs = [position_tuple(p) for p in positions]
        cpu0, started = cpu_seconds(), time.perf_counter()
        async with self._conn.transaction():
            for table, values in by_table.items():
                await self._conn.executemany(_insert(table), values)
            if legs:
                await self._conn.executemany(_insert(_BARE_POSITIONS, POSITION_COLUMNS), legs)
        self.ms.append((time.perf_counter() - started) * 1000.0)
        self.cpu_seconds += cpu_seconds() - cpu0

    async def close(self) -> None:
        await self._conn.close()
