"""The fault-matrix harness: start a world, inject a fault, recover, check the invariants.

A :class:`World` is the real :class:`~ibkr_bridge.Bridge` in SOCKET mode (real ib_async
against the IB Gateway simulator) or PORTAL mode (real HTTPS against the Client Portal
simulator), writing to a private schema of a real PostgreSQL through a
:class:`~ibkr_bridge.testing.TcpProxy`, everything on one :class:`FakeClock`. A case of
the matrix is a scenario run in such a world (:func:`run_case`). Afterwards the harness
brings everything back (database reachable, gateway accepting and answering), advances
the fake clock until the bridge is LIVE with the breaker CLOSED and the buffer empty,
writes a few more rows, stops the bridge and checks the same invariants for every case:

- nothing lost: every row the bridge submitted is in ``portfolio_greeks``, unless the
  sink refused it because the buffer was full *and* logged it in full (the only
  exception the design allows, and only in the case that asks for it);
- nothing duplicated: ``bridge_key`` unique and ``(contract, timestamp)`` unique;
- nothing wrong written: every stored row equals the row the bridge computed, no row the
  bridge never computed, no NaN / sentinel / zero-from-empty value, and the Greeks equal
  an independent Black-Scholes (Black-76 for FOP) recomputation (SOCKET: at the instant
  the legs were subscribed, the simulator's prices never move; PORTAL: at one of the
  instants the feed's latest snapshot can have been answered);
- every event logged: every ``api_logs`` event the bridge emitted (seen through
  ``add_event_callback``) is stored, and the breaker and connection transitions appear in
  ``api_logs`` in the order they happened;
- the buffer is empty and its quarantine file absent (unless the case explains it).

Every outcome, passed or not, is appended to :data:`RESULTS`; ``tests/faults/conftest.py``
prints them as a table at the end of the session (and writes ``docs/fault-matrix.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState
from ibkr_bridge.config import Settings, load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.feeds.portal.feed import PortalFeed
from ibkr_bridge.sim import (
    PortalSimulator,
    Portfolio,
    TwsSimulator,
    default_portfolio,
    model_greeks,
    single_underlying_portfolio,
)
from ibkr_bridge.sim.portfolio import years_between
from ibkr_bridge.storage.store import GREEKS_COPY_COLUMNS
from ibkr_bridge.testing import TcpProxy, TestDatabase, wait_until

NY: Final = ZoneInfo("America/New_York")
ACCOUNT: Final = "DU1234567"
# A Tuesday afternoon in New York: far from IBKR's nightly reset window.
START: Final = datetime(2026, 3, 10, 14, 0, tzinfo=NY)
POLL: Final = 5.0
REFUSED_PREFIX: Final = "buffer full, refused: "
GREEK_COLUMNS: Final = ("delta", "gamma", "vega", "theta")
# The row's columns as the store writes them (without its sequence and idempotency key).
ROW_COLUMNS: Final = GREEKS_COPY_COLUMNS[1:-1]
_SENTINELS: Final = (-1.0, -2.0, 1.7976931348623157e308)


# -- results for the summary table -----------------------------------------------------------


@attrs.frozen
class Outcome:
    """One line of the summary table."""

    case: str
    outcome: str  # "passed" or "FAILED: <first problem>"
    submitted: int | None = None
    written: int | None = None
    refused: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    note: str = ""


RESULTS: list[Outcome] = []


def record(outcome: Outcome) -> None:
    RESULTS.append(outcome)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def summary_table(results: list[Outcome]) -> str:
    """The results as a Markdown table, one line per case, in the order they ran."""
    lines = [
        "| case | outcome | rows submitted | rows written | refused (logged) "
        "| rows lost | rows duplicated | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        outcome = r.outcome.replace("|", "\\|").replace("\n", " ")
        note = r.note.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r.case} | {outcome} | {_cell(r.submitted)} | {_cell(r.written)} "
            f"| {_cell(r.refused)} | {_cell(r.lost)} | {_cell(r.duplicated)} | {note} |"
        )
    return "\n".join(lines) + "\n"


# -- what the bridge refused (buffer full) ---------------------------------------------------


class RefusalLog(logging.Handler):
    """Collects the records the sink refused because the buffer was full.

    The sink's policy is to log every refused record in full at ERROR level; this reads
    them back from that log line, so "refused" here means "refused *and* logged".
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(REFUSED_PREFIX):
            self.keys.append(json.loads(message[len(REFUSED_PREFIX) :])["key"])


@contextlib.contextmanager
def refusal_log() -> Iterator[RefusalLog]:
    handler = RefusalLog()
    logger = logging.getLogger("ibkr_bridge.storage.sink")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# -- the independent recomputation -----------------------------------------------------------


def expected_nets(portfolio: Portfolio, at: datetime) -> dict[str, dict[str, float]]:
    """Net Greeks per contract recomputed by hand at ``at``: PORTFOLIO and each underlying.

    Stocks count their quantity in delta, futures quantity x multiplier; an option counts
    quantity x multiplier x its per-share model Greek (Black-76 for FOP).
    """
    nets: dict[str, dict[str, float]] = {}
    for pos in portfolio.positions(ACCOUNT):
        inst = pos.instrument
        net = nets.setdefault(inst.symbol, dict.fromkeys(GREEK_COLUMNS, 0.0))
        if not inst.is_option:
            net["delta"] += pos.quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
            continue
        assert inst.underlying_conid is not None
        assert inst.strike is not None
        assert inst.right is not None
        expires = inst.expires_at()
        assert expires is not None
        g = model_greeks(
            inst.sec_type,
            portfolio.spot(inst.underlying_conid),
            inst.strike,
            years_between(at, expires),
            portfolio.volatility(inst.underlying_conid),
            portfolio.rate,
            inst.right,
        )
        size = pos.quantity * inst.multiplier
        for name in GREEK_COLUMNS:
            net[name] += size * getattr(g, name)
    total = {name: math.fsum(n[name] for n in nets.values()) for name in GREEK_COLUMNS}
    return {"PORTFOLIO": total, **nets}


def _is_clean(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value not in _SENTINELS)


# -- the world -------------------------------------------------------------------------------


def base_env(dsn: str, buffer: Path) -> dict[str, str]:
    return {
        "IB_ACCOUNT": ACCOUNT,
        "IB_PROBE_INTERVAL": "15",
        "DATABASE_URL": dsn,
        "BRIDGE_BUFFER_PATH": str(buffer),
        "BRIDGE_POLL_INTERVAL": str(POLL),
        "BRIDGE_RETRY_INTERVAL": "10",
        "BRIDGE_DB_CONNECT_TIMEOUT": "1",
        "BRIDGE_DB_COMMAND_TIMEOUT": "2",
    }


@attrs.define
class World:
    """Everything one case runs against; bridges come and go, the recorders stay."""

    clock: FakeClock
    db: TestDatabase
    pg: TcpProxy
    env: dict[str, str]
    buffer_path: Path
    refusals: RefusalLog
    tws: TwsSimulator | None = None
    portal: PortalSimulator | None = None
    submitted: list[GreeksRow] = attrs.Factory(list)
    # For each submitted row: how many requests the simulator had received by then.
    requests_seen: dict[str, int] = attrs.Factory(dict)
    events: list[ApiEvent] = attrs.Factory(list)
    bridge: Bridge | None = None
    refused_counted: int = 0  # the sinks' own refused_full counters, summed over bridges
    # Tables a scenario set aside (e.g. before dropping the live one): read with the live one.
    saved_greeks: list[str] = attrs.Factory(list)
    saved_events: list[str] = attrs.Factory(list)
    # Case-specific state (e.g. a role the scenario made) and how to undo it afterwards.
    scratch: dict[str, Any] = attrs.Factory(dict)
    cleanups: list[Callable[[], Awaitable[None]]] = attrs.Factory(list)
    last_pending: int = 0  # buffer bytes left when the last bridge stopped
    t0_mono: float = 0.0
    t0_wall: datetime = START

    # -- the gateway -------------------------------------------------------------------------

    @property
    def sim(self) -> TwsSimulator:
        assert self.tws is not None, "a SOCKET case"
        return self.tws

    @property
    def portal_sim(self) -> PortalSimulator:
        assert self.portal is not None, "a PORTAL case"
        return self.portal

    @property
    def portfolio(self) -> Portfolio:
        return self.sim.portfolio if self.portal is None else self.portal.portfolio

    def busy(self) -> int:
        """HTTP requests still on their way (PORTAL); 0 in SOCKET mode."""
        if self.portal is None:
            return 0
        feed = self.bridge._feed if self.bridge is not None else None
        in_flight = feed.requests_in_flight if isinstance(feed, PortalFeed) else 0
        return self.portal.busy + max(0, in_flight - self.portal.parked)

    async def settle(self) -> None:
        """Let real IO finish before the fake clock moves: ``busy()`` stays 0 a few turns."""
        quiet = 0
        deadline = asyncio.get_running_loop().time() + 10.0
        while quiet < 3:
            await asyncio.sleep(0.0005)
            quiet = 0 if self.busy() else quiet + 1
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("gateway requests still in flight after 10 s")

    # -- bridges -----------------------------------------------------------------------------

    def settings(self, **overrides: str) -> Settings:
        return load_settings({**self.env, **overrides}, use_dotenv=False)

    def new_bridge(self, **overrides: str) -> Bridge:
        bridge = Bridge(self.settings(**overrides), clock=self.clock)
        bridge.add_row_callback(self._on_rows)
        bridge.add_event_callback(self.events.append)
        return bridge

    def _on_rows(self, rows: Sequence[GreeksRow]) -> None:
        self.submitted.extend(rows)
        count = len(self.tws.requests) if self.tws is not None else 0
        for row in rows:
            self.requests_seen[row.key] = count

    async def start_bridge(self, **overrides: str) -> Bridge:
        bridge = self.new_bridge(**overrides)
        await bridge.start()
        self.bridge = bridge
        return bridge

    async def stop_bridge(self) -> None:
        if self.bridge is None:
            return
        bridge, self.bridge = self.bridge, None
        await bridge.stop()
        self.refused_counted += bridge.sink.stats.refused_full
        self.last_pending = bridge.status.buffer_pending_bytes

    @property
    def live_bridge(self) -> Bridge:
        assert self.bridge is not None, "no bridge is running"
        return self.bridge

    @property
    def state(self) -> ConnectionState:
        return self.live_bridge.connection_state

    @property
    def healthy(self) -> bool:
        """LIVE and fresh, breaker CLOSED, nothing waiting in the buffer."""
        status = self.live_bridge.status
        return (
            self.state is ConnectionState.LIVE
            and not status.stale
            and status.breaker == "CLOSED"
            and status.buffer_pending_bytes == 0
        )

    # -- time --------------------------------------------------------------------------------

    async def run(self, seconds: float) -> None:
        """Move the clock ahead deadline by deadline, letting real IO finish at each."""
        end = self.clock.monotonic() + seconds
        while True:
            await self.settle()
            now = self.clock.monotonic()
            if now >= end:
                return
            deadline = self.clock.next_deadline()
            target = end if deadline is None else min(end, max(deadline, now))
            await self.clock.advance(target - now)

    async def ticks(self, n: int) -> None:
        await self.run(n * POLL)

    async def advance_until(
        self,
        condition: Callable[[], bool],
        *,
        limit: float,
        step: float = POLL,
        settle: float = 0.25,
    ) -> None:
        """Advance the fake clock, deadline by deadline, until ``condition`` holds.

        Before each step the IO the last one set off gets to finish: PORTAL requests are
        tracked (``busy()``); a SOCKET connect or a drain is not, so it gets up to
        ``settle`` real seconds. Fake time is capped at ``limit``.
        """
        elapsed = 0.0
        patience = settle if self.portal is None else 0.0
        while True:
            await self.settle()
            if condition():
                return
            if patience:
                with contextlib.suppress(TimeoutError):
                    await wait_until(condition, timeout=patience)
                    return
            if elapsed >= limit:
                raise TimeoutError(f"not reached within {limit:g} s of fake time: {condition}")
            deadline = self.clock.next_deadline()
            now = self.clock.monotonic()
            dt = step if deadline is None else min(step, max(deadline - now, 0.001))
            await self.clock.advance(dt)
            elapsed += dt

    def _has_data(self) -> bool:
        if self.state is not ConnectionState.LIVE:
            return False
        return self.live_bridge._feed.snapshot(self.clock.now()) is not None

    async def data_ready(self) -> None:
        """LIVE with market data for every leg (the next tick writes rows)."""
        if self.portal is not None:
            # The Client Portal is polled on the fake clock: time has to move.
            await self.advance_until(self._has_data, limit=60, step=1.0)
            return
        await wait_until(self._has_data, timeout=15)

    async def rows_flow(self, n: int = 2) -> None:
        """``n`` more ticks write rows (proves the writer is back after a fault)."""
        await self.data_ready()
        before = len(self.submitted)
        await self.ticks(n)
        assert len(self.submitted) > before, "no rows were submitted after recovery"

    # -- recovery ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """End every fault, then advance until healthy and a few rows are written."""
        self.pg.up()
        if self.tws is not None:
            if self.tws.refusing:
                await self.tws.accept_connections()
            if self.tws.frozen:
                await self.tws.unfreeze()
            self.tws.clear_sentinel_greeks()
        if self.portal is not None:
            self.portal.clear_faults()
        await self.advance_until(lambda: self.healthy, limit=900.0)
        await self.rows_flow(2)
        await self.live_bridge.sink.flush()

    # -- what happened -----------------------------------------------------------------------

    def transitions(self, machine: str) -> list[ApiEvent]:
        return [e for e in self.events if e.event == "transition" and e.machine == machine]

    def reached(self, machine: str, dest: str) -> bool:
        return any(e.dest_state == dest for e in self.transitions(machine))

    def wall_of(self, mono: float) -> datetime:
        return self.t0_wall + timedelta(seconds=mono - self.t0_mono)

    async def fetch_tables(self) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        async def union(live: str, saved: list[str]) -> list[asyncpg.Record]:
            # The saved copies were set aside before the live table was dropped: older rows.
            rows: list[asyncpg.Record] = []
            for table in [*saved, live]:
                rows += await self.db.fetch(f"SELECT * FROM {table} ORDER BY id")
            return rows

        # Per-underlying rows have their own table (issue 14.2); the invariants see both.
        underlying = await self.db.fetch("SELECT * FROM underlying_greeks ORDER BY id")
        return (
            await union("portfolio_greeks", self.saved_greeks) + underlying,
            await union("api_logs", self.saved_events),
        )


# -- invariants ------------------------------------------------------------------------------


@attrs.frozen
class Report:
    """What the invariants found for one case."""

    case: str
    submitted: int
    written: int
    refused: int
    lost: int
    duplicated: int
    problems: tuple[str, ...]

    def outcome(self, note: str = "") -> Outcome:
        text = "passed" if not self.problems else f"FAILED: {self.problems[0]}"
        return Outcome(
            self.case,
            text,
            self.submitted,
            self.written,
            self.refused,
            self.lost,
            self.duplicated,
            note,
        )


class _Expected:
    """The independent recomputation a row must equal (one of the candidates)."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._cache: dict[datetime, dict[str, dict[str, float]]] = {}

    def _at(self, when: datetime) -> dict[str, dict[str, float]]:
        if when not in self._cache:
            self._cache[when] = expected_nets(self._world.portfolio, when)
        return self._cache[when]

    def candidates(self, row: GreeksRow) -> list[dict[str, float]]:
        w = self._world
        if w.tws is not None:
            # SOCKET: the Greeks come from the last market-data request the simulator had
            # received when the row was computed (its prices never move afterwards).
            seen = w.tws.requests[: w.requests_seen[row.key]]
            subscribed = [r.at for r in seen if r.msg_id == 1]
            if not subscribed:
                return []
            nets = self._at(w.wall_of(subscribed[-1]))
            return [nets[row.contract]] if row.contract in nets else [{}]
        # PORTAL: the feed values a row with its latest snapshot, at most 3 polls of 2 s
        # (6 s) old, answered on the simulator's whole-second grid: one of those instants.
        found = []
        for lag in range(7):
            nets = self._at(row.timestamp - timedelta(seconds=lag))
            found.append(nets.get(row.contract, {}))
        return found


def _matches(db_row: asyncpg.Record, want: Mapping[str, float]) -> bool:
    return bool(want) and all(
        db_row[name] is not None and math.isclose(db_row[name], value, rel_tol=1e-9, abs_tol=1e-9)
        for name, value in want.items()
    )


def _first_difference(db_row: asyncpg.Record, want: Mapping[str, float]) -> tuple[str, Any, Any]:
    if not want:
        return "contract", db_row["contract"], "a contract of the portfolio"
    for name, value in want.items():
        if db_row[name] is None or not math.isclose(db_row[name], value, rel_tol=1e-9):
            return name, db_row[name], value
    return "-", None, None


def _check_rows(world: World, rows: list[asyncpg.Record], problems: list[str]) -> None:
    by_key = {r.key: r for r in world.submitted}
    expected = _Expected(world)
    found: dict[str, list[str]] = {}

    def wrong(kind: str, text: str) -> None:
        found.setdefault(kind, []).append(text)

    for db_row in rows:
        row = by_key.get(db_row["bridge_key"])
        if row is None:
            wrong("rows the bridge never computed", db_row["bridge_key"])
            continue
        for column in ROW_COLUMNS:
            if db_row[column] != getattr(row, column):
                text = f"{column} {db_row[column]!r} != {getattr(row, column)!r}"
                wrong("stored values differ from the computed row", text)
        for column in (*GREEK_COLUMNS, "underlying_price", "dollar_delta"):
            if not _is_clean(db_row[column]):
                wrong("values that are not data", f"{column} = {db_row[column]!r}")
        if not db_row["legs"] or db_row["legs"] <= 0:
            wrong("rows from nothing (legs <= 0)", f"{row.contract} legs = {db_row['legs']}")
        if db_row["legs_missing"]:
            continue  # a leg without Greeks: only the checks above apply
        candidates = expected.candidates(row)
        if not candidates:
            wrong("rows written before any market data was requested", row.key)
            continue
        if not any(_matches(db_row, want) for want in candidates):
            name, got, value = _first_difference(db_row, candidates[0])
            wrong("Greeks differ from the recomputation", f"{name} {got!r} != {value!r}")
    for kind, examples in found.items():
        problems.append(f"wrong values: {len(examples)} {kind}, e.g. {examples[0]}")


def _check_events(
    world: World, logs: list[asyncpg.Record], refused: set[str], problems: list[str]
) -> None:
    stored = [r["bridge_key"] for r in logs]
    stored_set = set(stored)
    missing = [e for e in world.events if e.key not in stored_set and e.key not in refused]
    if missing:
        first = missing[0]
        problems.append(
            f"{len(missing)} of {len(world.events)} events not in api_logs, "
            f"e.g. {first.event}: {first.message}"
        )
    observed_keys = {e.key for e in world.events}
    foreign = [r for r in logs if r["bridge_key"] not in observed_keys]
    if foreign:
        problems.append(f"{len(foreign)} api_logs rows the bridge never emitted")
    dup = len(stored) - len(stored_set)
    if dup:
        problems.append(f"{dup} duplicated api_logs rows")
    for machine in ("breaker", "connection"):
        seen = [e.key for e in world.transitions(machine) if e.key not in refused]
        logged = [r["bridge_key"] for r in logs if r["machine"] == machine]
        if seen != logged:
            problems.append(
                f"{machine} transitions: observed {len(seen)}, api_logs has {len(logged)} "
                "(or in another order)"
            )


def _leftovers(buffer: Path) -> list[str]:
    problems = []
    for path in (buffer, Path(f"{buffer}.cursor")):
        if path.exists():
            problems.append(f"{path.name} still exists: the buffer was not drained")
    quarantine = Path(f"{buffer}.quarantine")
    if quarantine.exists() and quarantine.stat().st_size:
        problems.append(f"{quarantine.name} is not empty")
    return problems


def leg_problems(
    nets: Sequence[Any], legs: Sequence[Any], held: int, *, whole: Collection[str] | None = None
) -> list[str]:
    """position_greeks against the net rows: no leg twice; every tick whose net row's key is
    in ``whole`` (default: every net row) has all ``held`` legs, summing to its net delta.

    Used by the matrix (every stored tick is whole) and the kill -9 row (only acknowledged
    ticks are known whole: a kill may tear an append after the net row's line).
    """
    problems: list[str] = []
    slots = Counter((leg["account"], leg["conid"], leg["timestamp"]) for leg in legs)
    if len({leg["bridge_key"] for leg in legs}) != len(legs) or any(n > 1 for n in slots.values()):
        problems.append("duplicated position_greeks rows")
    by_tick: dict[datetime, list[Any]] = defaultdict(list)
    for leg in legs:
        by_tick[leg["timestamp"]].append(leg)
    portfolio = [r for r in nets if r["contract"] == "PORTFOLIO"]
    checked = 0
    for net in portfolio:
        if whole is not None and net["bridge_key"] not in whole:
            continue
        tick = by_tick.get(net["timestamp"], [])
        total = sum(leg["delta"] for leg in tick)
        if len(tick) != held or not math.isclose(total, net["delta"], rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"the tick at {net['timestamp']} has {len(tick)} of {held} legs")
            break
        checked += 1
    stamps = {r["timestamp"] for r in portfolio}
    if whole is None and any(stamp not in stamps for stamp in by_tick):
        problems.append("ticks of position_greeks without their net row")
    if not checked:
        problems.append("no tick to check position_greeks against: the legs were not exercised")
    return problems


async def check_invariants(world: World, case: str, *, allow_refusals: bool = False) -> Report:
    """The invariants every case ends with; call after the last bridge stopped."""
    problems: list[str] = []
    rows, logs = await world.fetch_tables()
    refused = set(world.refusals.keys)
    if refused and not allow_refusals:
        problems.append(f"{len(refused)} records refused by a full buffer")
    if len(world.refusals.keys) != world.refused_counted:
        problems.append(
            f"the sink counted {world.refused_counted} refused records but logged "
            f"{len(world.refusals.keys)}"
        )
    submitted_keys = [r.key for r in world.submitted]
    if len(submitted_keys) != len(set(submitted_keys)):
        problems.append("the bridge submitted the same row key twice")
    stored_keys = [r["bridge_key"] for r in rows]
    stored_set = set(stored_keys)
    lost = [k for k in submitted_keys if k not in stored_set and k not in refused]
    refused_rows = [k for k in submitted_keys if k in refused]
    both = [k for k in refused_rows if k in stored_set]
    if lost:
        problems.append(f"{len(lost)} of {len(submitted_keys)} submitted rows lost")
    if both:
        problems.append(f"{len(both)} rows both refused and written")
    by_slot = Counter((r["contract"], r["timestamp"]) for r in rows)
    duplicated = (len(stored_keys) - len(stored_set)) + sum(n - 1 for n in by_slot.values())
    if duplicated:
        problems.append(f"{duplicated} duplicated rows (bridge_key or contract+timestamp)")
    _check_rows(world, rows, problems)
    _check_events(world, logs, refused, problems)
    for contract in {r["contract"] for r in rows}:
        stamps = [r["timestamp"] for r in rows if r["contract"] == contract]
        if stamps != sorted(stamps):
            problems.append(f"rows of {contract} were written out of timestamp order")
    if world.last_pending:
        problems.append(f"{world.last_pending} buffer bytes pending when the bridge stopped")
    problems += _leftovers(world.buffer_path)
    if not rows:
        problems.append("no rows were written at all: the case proved nothing")
    if world.env.get("BRIDGE_POSITION_ROWS") == "true":
        legs = await world.db.fetch("SELECT * FROM position_greeks")
        problems += leg_problems(rows, legs, len(world.portfolio.positions(ACCOUNT)))
    return Report(
        case=case,
        submitted=len(submitted_keys),
        written=len(stored_set),
        refused=len(refused_rows),
        lost=len(lost),
        duplicated=duplicated,
        problems=tuple(problems),
    )


# -- one case --------------------------------------------------------------------------------

Scenario = Callable[[World], Awaitable[None]]
Setup = Callable[[World], Awaitable[None]]


@attrs.frozen
class Case:
    """One row of the matrix.

    ``setup`` runs before the first bridge starts (e.g. the database is already down);
    with ``starts_bridge`` the scenario starts (and maybe stops) bridges itself. The
    harness then recovers and stops the bridge; ``verify`` checks what only this case
    promises (e.g. the refusal episode reached ``api_logs``) before the common invariants.
    """

    id: str
    scenario: Scenario
    mode: str = "SOCKET"
    env: Mapping[str, str] = attrs.field(factory=dict)
    setup: Setup | None = None
    verify: Scenario | None = None
    starts_bridge: bool = False
    allow_refusals: bool = False
    note: str = ""
    known_bug: str | None = None  # a reported bug in code outside these tests: xfail(strict)

    def __str__(self) -> str:
        return self.id

    def param(self) -> Any:
        marks = (
            []
            if self.known_bug is None
            else [pytest.mark.xfail(strict=True, reason=self.known_bug)]
        )
        return pytest.param(self, id=self.id, marks=marks)


@contextlib.asynccontextmanager
async def _gateway(
    mode: str, clock: FakeClock
) -> AsyncIterator[tuple[TwsSimulator | None, PortalSimulator | None, dict[str, str]]]:
    if mode == "SOCKET":
        # The prices never move (the tick interval is far away): Greeks stay recomputable.
        portfolio = default_portfolio(as_of=clock.now())
        async with TwsSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as tws:
            env = {
                "IB_SOCKET_PORT": str(tws.port),
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_TIMEOUT": "0.5",
                # The market never moves, so its Greeks come once: not stale here.
                "BRIDGE_STALE_AFTER": "86400",
            }
            yield tws, None, env
        return
    portfolio = single_underlying_portfolio(as_of=clock.now())
    async with PortalSimulator(portfolio, clock=clock) as portal:
        assert portal.ca_path is not None
        env = {
            "IB_API_MODE": "PORTAL",
            "IBKR_GATEWAY_URL": portal.base_url,
            "IBKR_GATEWAY_CA": portal.ca_path,
            "IB_CONNECT_TIMEOUT": "5",
            "IB_PROBE_TIMEOUT": "2",
        }
        yield None, portal, env


@contextlib.asynccontextmanager
async def make_world(
    db: TestDatabase, tmp_path: Path, *, env: Mapping[str, str] = {}, mode: str = "SOCKET"
) -> AsyncIterator[World]:
    clock = FakeClock(start=START.astimezone(UTC))
    buffer = tmp_path / "buffer" / "buffer.jsonl"
    with refusal_log() as refusals:
        async with TcpProxy(*db.server_address()) as pg, _gateway(mode, clock) as gateway:
            tws, portal, gateway_env = gateway
            world = World(
                clock=clock,
                db=db,
                pg=pg,
                env={**base_env(db.proxied_dsn(pg), buffer), **gateway_env, **env},
                buffer_path=buffer,
                refusals=refusals,
                tws=tws,
                portal=portal,
                t0_mono=clock.monotonic(),
                t0_wall=clock.now(),
            )
            try:
                yield world
            finally:
                if world.bridge is not None:
                    with contextlib.suppress(Exception):
                        await world.bridge.stop()
                for cleanup in reversed(world.cleanups):
                    await cleanup()


async def run_case(case: Case, db: TestDatabase, tmp_path: Path) -> Report:
    """Start a world, run the case's fault, recover, stop, check; record the outcome."""
    try:
        async with make_world(db, tmp_path, env=case.env, mode=case.mode) as world:
            if case.setup is not None:
                await case.setup(world)
            if not case.starts_bridge:
                await world.start_bridge()
            await case.scenario(world)
            if world.bridge is None:
                await world.start_bridge()
            await world.recover()
            await world.stop_bridge()
            report = await check_invariants(world, case.id, allow_refusals=case.allow_refusals)
            if case.verify is not None:
                try:
                    await case.verify(world)
                except AssertionError as exc:
                    problems = (_first_line(exc), *report.problems)
                    report = attrs.evolve(report, problems=problems)
    except BaseException as exc:
        record(Outcome(case.id, f"FAILED: {_first_line(exc)}", note=case.note))
        raise
    note = case.note
    if case.known_bug is not None and report.problems:
        note = f"{note}; KNOWN BUG (xfail): {case.known_bug}" if note else case.known_bug
    record(report.outcome(note))
    return report


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def assert_report(report: Report) -> None:
    assert not report.problems, "\n".join(report.problems)
