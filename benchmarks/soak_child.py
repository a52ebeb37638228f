"""One soak world in a child process: simulator, TCP proxy, the real Bridge, a FakeClock.

    python benchmarks/soak_child.py CONFIG.json

Started by ``benchmarks/soak.py`` (which owns PostgreSQL, reads the results and may
``kill -9`` this process). The child runs the simulated day from ``start_offset`` to the
end on its own :class:`~ibkr_bridge.core.clock.FakeClock`, applying the fault schedule of
:func:`schedule`, and journals what it did to ``journal-<child>.jsonl`` (one JSON object
per line, written with ``os.write`` so that a ``kill -9`` loses nothing already written):
every tick's rows and keys, every ``api_logs`` event seen through the Bridge's event
callback, a ``durable`` mark after each flush (everything journalled before it is
committed or fsync'd), every fault, and the valuation inputs (spot after every price
step, positions after every change) from which the parent recomputes the Greeks.

Moving a FakeClock while real IO (sockets, HTTPS, PostgreSQL) settles: the clock is moved
from sleeper deadline to deadline, and before each move the child waits, in real time,
until nothing it can observe is in flight (a SOCKET connect, probe or re-subscription; a
PORTAL request that is not parked by a fault; a buffer drain or a database probe). Work
that takes real time therefore takes (almost) no simulated time, as on a real host where
it takes milliseconds; a wait the bridge sleeps through on its clock is skipped at once.

Stdout lines for the parent: ``PROGRESS <offset> <real seconds>``, ``MIDDRAIN <offset>``
(the buffer drain after the long database outage has committed at least one batch and
is still running: the parent kills this process now; the child stops moving its clock
and waits), ``DONE``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import attrs

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.config import Settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.feeds.portal.feed import PortalFeed
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.socket.feed import SocketFeed
from ibkr_bridge.service.bridge import TickInfo
from ibkr_bridge.sim import PortalSimulator, Portfolio, TwsSimulator, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT, SPY_CONID
from ibkr_bridge.testing import TcpProxy, TestDatabase

NY: Final = ZoneInfo("America/New_York")
ACCOUNT: Final = DEFAULT_ACCOUNT
POLL: Final = 5.0  # BRIDGE_POLL_INTERVAL, and the simulators' price step
PROBE_INTERVAL: Final = 15.0  # IB_PROBE_INTERVAL
MONO0: Final = 1000.0  # the FakeClock's monotonic time at the soak start
DAY: Final = date(2026, 3, 10)  # a Tuesday, after the March DST change
RESET_AT: Final = dtime(23, 45)  # IBKR's nightly reset, New York time
RESET_FRACTION: Final = 0.625  # where in the run the reset falls (hours * 0.625 in)
CALL_NEAR: Final = 800000101
PUT_NEAR: Final = 800000102
UNDERLYINGS: Final = (SPY_CONID,)
BATCH_SIZE: Final = 50  # small drain batches, so a kill lands between commits of one drain
BUSY_CAP: Final = 60.0  # real seconds the child waits for in-flight work before moving on


def soak_start(hours: float) -> datetime:
    """The simulated start: the run reaches 23:45 ET ``0.625 * hours`` in (08:45 ET for 24 h)."""
    reset = datetime.combine(DAY, RESET_AT, tzinfo=NY)
    return (reset - timedelta(seconds=round(RESET_FRACTION * hours * 3600))).astimezone(UTC)


@attrs.frozen
class Fault:
    """One scheduled fault, ``at`` seconds after the soak start, lasting ``duration``."""

    at: float
    name: str
    duration: float = 0.0
    params: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def end(self) -> float:
        return self.at + self.duration

    @property
    def explicit_end(self) -> bool:
        """Whether the child ends it (the simulators end their own timed faults)."""
        return self.name in ("db_refused", "db_cut", "db_blackhole") or (
            self.name == "gateway_restart" and bool(self.params.get("stop_start"))
        )


def schedule(mode: str, hours: float) -> tuple[Fault, ...]:
    """The faults of one run, in order: the same kinds at any length (2 h and up).

    Daytime faults fill the span up to 15 min before 23:45 ET, so that nothing but the
    nightly reset touches the reset window; night faults start at 00:10 ET. Gateway faults
    keep their real lengths; database outages are scaled down for short runs (the long one
    lasts 70 min from 6 h on, a fifth of the run below).
    """
    total = hours * 3600.0
    reset = RESET_FRACTION * total
    day = reset - 900.0
    night_begins = reset + 1500.0
    night = total - night_begins - 300.0
    if day <= 0 or night <= 0:
        raise ValueError(f"a soak needs at least 2 simulated hours, got {hours:g}")

    def grid(seconds: float) -> float:
        return max(POLL, round(seconds / POLL) * POLL)

    def by_day(fraction: float) -> float:
        return grid(fraction * day)

    def by_night(fraction: float) -> float:
        return grid(night_begins + fraction * night)

    socket = mode == "SOCKET"
    long_outage = grid(70 * 60 if hours >= 6 else 0.2 * total)
    faults = [
        Fault(by_day(0.03), "positions", params={"conid": CALL_NEAR, "quantity": 4.0}),
        Fault(by_day(0.07), "gateway_restart", 90.0, {"stop_start": not socket}),
        Fault(by_day(0.14), "db_refused", long_outage, {"kill": True}),
        Fault(
            by_day(0.20), "client_id_in_use" if socket else "competing", 30.0 if socket else 120.0
        ),
        Fault(by_day(0.26), "sentinel", 600.0, {"mode": "vega_theta" if socket else "empty"}),
        Fault(by_day(0.34), "positions", params={"conid": PUT_NEAR, "quantity": 0.0}),
        Fault(by_day(0.60), "db_cut", grid(min(600.0, 0.04 * total))),
        Fault(by_day(0.70), "gateway_freeze", 120.0),
        Fault(by_day(0.78), "garbage", 0.0 if socket else 60.0),
        Fault(by_day(0.84), "db_blackhole", grid(min(600.0, 0.03 * total))),
        Fault(by_day(0.86), "gateway_restart", 300.0, {"stop_start": not socket}),
        # SOCKET: the Gateway closes at 23:45 and is back at 23:55; PORTAL: nightly logout.
        Fault(reset, "nightly_reset", 600.0 if socket else 0.0),
        Fault(by_night(0.05), "positions", params={"conid": PUT_NEAR, "quantity": -3.0}),
    ]
    if socket:
        faults += [
            Fault(by_night(0.25), "daily_reset", 120.0, {"kind": "1101"}),
            Fault(by_night(0.45), "daily_reset", 45.0, {"kind": "1102"}),
            Fault(by_night(0.65), "sentinel", 180.0, {"mode": "minus2"}),
        ]
    else:
        faults += [
            Fault(by_night(0.25), "expire_session"),
            Fault(by_night(0.45), "rate_limit_storm", 90.0),
            Fault(by_night(0.65), "slow", 60.0, {"delay": 12.0}),
        ]
    return tuple(sorted(faults, key=lambda f: f.at))


@attrs.frozen
class ChildConfig:
    """What the parent tells one child (written as JSON)."""

    mode: str
    hours: float
    server_dsn: str
    schema: str
    workdir: str
    child: int
    start_offset: float = 0.0
    spots: Mapping[str, float] | None = None
    seed: int = 20260310

    @classmethod
    def load(cls, path: Path) -> ChildConfig:
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(attrs.asdict(self)), encoding="utf-8")


class Journal:
    """Append-only JSON lines; each line is one ``write(2)``, so ``kill -9`` keeps it."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"k": kind, **fields}, separators=(",", ":"), default=str)
        os.write(self._fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


class RecordingPortfolio(Portfolio):
    """The simulators' portfolio, journalling the spot after every price step."""

    on_step: Callable[[datetime, dict[str, float]], None] | None = None

    def step(self, dt_seconds: float, now: datetime | None = None) -> None:
        super().step(dt_seconds, now)
        if self.on_step is not None:
            self.on_step(self.as_of, {str(c): self.spot(c) for c in UNDERLYINGS})


def make_portfolio(cfg: ChildConfig, faults: Sequence[Fault]) -> RecordingPortfolio:
    """The single-underlying book as of the soak start (same expiries in every child),
    with the position changes scheduled before ``start_offset`` already made."""
    start = soak_start(cfg.hours)
    snap = single_underlying_portfolio(as_of=start).snapshot()
    spots = {int(c): p for c, p in cfg.spots.items()} if cfg.spots else dict(snap.spots)
    portfolio = RecordingPortfolio(
        snap.accounts,
        instruments=snap.instruments.values(),
        positions=snap.positions,
        spots=spots,
        volatilities=snap.volatilities,
        rate=snap.rate,
        seed=cfg.seed + cfg.child,
        as_of=start + timedelta(seconds=cfg.start_offset),
    )
    for fault in faults:
        if fault.name == "positions" and fault.at < cfg.start_offset:
            portfolio.set_position(ACCOUNT, int(fault.params["conid"]), fault.params["quantity"])
    return portfolio


class ObservedFeed:
    """The real feed, with counts of the calls in flight (so the child knows when real IO
    is under way). Everything else is delegated unchanged."""

    def __init__(self, inner: SocketFeed | PortalFeed) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.connecting = 0
        self.probing = 0
        self.resubscribing = 0

    def set_listener(self, listener: FeedListener) -> None:
        self.inner.set_listener(listener)

    @property
    def account(self) -> str | None:
        return self.inner.account

    async def connect(self) -> None:
        self.connecting += 1
        try:
            await self.inner.connect()
        finally:
            self.connecting -= 1

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def probe(self) -> None:
        self.probing += 1
        try:
            await self.inner.probe()
        finally:
            self.probing -= 1

    async def resubscribe(self) -> None:
        self.resubscribing += 1
        try:
            await self.inner.resubscribe()
        finally:
            self.resubscribing -= 1

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        return self.inner.snapshot(now)


class Gateway(Protocol):
    """One simulated IBKR gateway and the faults it can show."""

    def env(self) -> dict[str, str]: ...

    def make_feed(self, settings: Settings, clock: FakeClock) -> ObservedFeed: ...

    def io_busy(self, feed: ObservedFeed) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fault(self, fault: Fault) -> None: ...

    async def fault_end(self, fault: Fault) -> None: ...


class SocketGateway:
    """The IB Gateway simulator (TWS API over TCP); prices step every ``POLL`` seconds."""

    def __init__(self, portfolio: Portfolio, clock: FakeClock, seed: int) -> None:
        self.sim = TwsSimulator(portfolio, clock=clock, seed=seed, tick_interval=POLL)

    def env(self) -> dict[str, str]:
        return {
            "IB_API_MODE": "SOCKET",
            "IB_SOCKET_PORT": str(self.sim.port),
            "IB_CONNECT_TIMEOUT": "2",
            "IB_PROBE_INTERVAL": str(PROBE_INTERVAL),
            "IB_PROBE_TIMEOUT": "1",
        }

    def make_feed(self, settings: Settings, clock: FakeClock) -> ObservedFeed:
        return ObservedFeed(SocketFeed.from_settings(settings, clock))

    def io_busy(self, feed: ObservedFeed) -> bool:
        # ib_async times out on the real clock: a connect, probe or re-subscription is
        # real work the simulated clock must wait for (it is milliseconds unless the
        # Gateway is frozen or garbled, and then the real timeout is what ends it).
        return bool(feed.connecting or feed.probing or feed.resubscribing)

    async def start(self) -> None:
        await self.sim.start()

    async def stop(self) -> None:
        await self.sim.stop()

    async def fault(self, fault: Fault) -> None:
        sim = self.sim
        match fault.name:
            case "gateway_restart" | "nightly_reset":
                await sim.restart(downtime=fault.duration)
            case "client_id_in_use":
                await sim.restart(stale_ids=fault.duration)
            case "gateway_freeze":
                await sim.freeze(fault.duration)
            case "garbage":
                await sim.garbage(512, framed=False)
            case "sentinel":
                await sim.sentinel_greeks(str(fault.params["mode"]), fault.duration)
            case "daily_reset":
                await sim.daily_reset(str(fault.params["kind"]), fault.duration)
            case _:
                raise ValueError(f"no SOCKET fault {fault.name!r}")

    async def fault_end(self, fault: Fault) -> None:
        raise ValueError(f"SOCKET fault {fault.name!r} ends by itself")


class PortalGateway:
    """The Client Portal simulator over HTTPS; prices step every ``POLL`` seconds.

    A restart is the server going away (connections refused) and coming back with its
    login (SSO) intact but no brokerage session, which ``ssodh/init`` restores without a
    human, as with an auto-login gateway. Its certificate survives restarts.
    """

    def __init__(self, portfolio: Portfolio, clock: FakeClock, workdir: Path) -> None:
        self.sim = PortalSimulator(
            portfolio,
            clock=clock,
            cert_dir=workdir / "portal-cert",
            walk_interval=POLL,
            sso_lifetime=7 * 86400.0,
        )

    def env(self) -> dict[str, str]:
        assert self.sim.ca_path is not None
        return {
            "IB_API_MODE": "PORTAL",
            "IBKR_GATEWAY_URL": self.sim.base_url,
            "IBKR_GATEWAY_CA": self.sim.ca_path,
            "IB_CONNECT_TIMEOUT": "10",
            "IB_PROBE_INTERVAL": str(PROBE_INTERVAL),
            "IB_PROBE_TIMEOUT": "5",
        }

    def make_feed(self, settings: Settings, clock: FakeClock) -> ObservedFeed:
        return ObservedFeed(PortalFeed.from_settings(settings, clock))

    def io_busy(self, feed: ObservedFeed) -> bool:
        # The PORTAL feed times out on the simulated clock: wait only for requests that
        # will be answered, never for the ones a fault parks.
        inner = feed.inner
        assert isinstance(inner, PortalFeed)
        return self.sim.busy + max(0, inner.requests_in_flight - self.sim.parked) > 0

    async def start(self) -> None:
        await self.sim.start()

    async def stop(self) -> None:
        await self.sim.stop()

    async def fault(self, fault: Fault) -> None:
        sim = self.sim
        match fault.name:
            case "gateway_restart":
                await sim.stop()
            case "competing":
                sim.competing(fault.duration)
            case "gateway_freeze":
                sim.freeze(fault.duration)
            case "garbage":
                sim.garbage(fault.duration)
            case "sentinel":
                sim.sentinel_greeks(fault.duration, mode=str(fault.params["mode"]))
            case "nightly_reset":
                sim.nightly_logout(needs_human=False)
            case "expire_session":
                sim.expire_session()
            case "rate_limit_storm":
                sim.rate_limit_storm(fault.duration)
            case "slow":
                sim.slow(fault.duration, delay=float(fault.params["delay"]))
            case _:
                raise ValueError(f"no PORTAL fault {fault.name!r}")

    async def fault_end(self, fault: Fault) -> None:
        if fault.name != "gateway_restart":
            raise ValueError(f"PORTAL fault {fault.name!r} ends by itself")
        await self.sim.start()
        self.sim.expire_session()


class Harness:
    """Moves the clock through the schedule, applies the faults, journals everything."""

    def __init__(
        self,
        cfg: ChildConfig,
        clock: FakeClock,
        journal: Journal,
        gateway: Gateway,
        feed: ObservedFeed,
        bridge: Bridge,
        pg: TcpProxy,
        faults: Sequence[Fault],
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.journal = journal
        self.gateway = gateway
        self.feed = feed
        self.bridge = bridge
        self.pg = pg
        self.faults = faults
        self.end = cfg.hours * 3600.0
        self.cut_armed = False
        self.cut_fault: Fault | None = None
        self.ticked = False
        self.kill_watch = False
        self.pending_max = 0
        self.last_pending = 0
        self.real0 = time.perf_counter()

    # -- observation ------------------------------------------------------------------

    def offset(self) -> float:
        return self.clock.monotonic() - MONO0

    def stamp(self) -> str:
        return self.clock.now().isoformat()

    def on_rows(self, rows: Sequence[GreeksRow]) -> None:
        self.journal.write(
            "rows",
            ts=rows[0].timestamp.isoformat(),
            keys=[r.key for r in rows],
            contracts=[r.contract for r in rows],
        )

    def on_tick(self, info: TickInfo) -> None:
        self.ticked = self.ticked or info.rows > 0
        self.journal.write("tick", ts=self.stamp(), rows=info.rows, skipped=info.skipped)

    def on_event(self, event: ApiEvent) -> None:
        self.journal.write(
            "event",
            ts=event.timestamp.isoformat(),
            key=event.key,
            event=event.event,
            machine=event.machine,
            src=event.source_state,
            dst=event.dest_state,
            trigger=event.detail.get("trigger"),
            message=event.message,
            real=time.perf_counter(),
        )

    def on_step(self, when: datetime, spots: dict[str, float]) -> None:
        self.journal.write("spot", ts=when.isoformat(), spots=spots)

    def journal_positions(self, portfolio: Portfolio) -> None:
        held = {str(p.conid): p.quantity for p in portfolio.positions(ACCOUNT)}
        self.journal.write("positions", ts=self.stamp(), positions=held)

    def db_busy(self) -> bool:
        # A probe or drain is under way: it is real work (milliseconds, or a timeout into
        # a black hole) that must not be stretched over simulated minutes.
        breaker = self.bridge.sink.breaker.state.value
        pending = self.bridge.sink.buffer.pending_bytes
        return breaker == "HALF_OPEN" or (breaker == "CLOSED" and pending > 0)

    async def observe(self) -> None:
        pending = self.bridge.status.buffer_pending_bytes
        if pending == 0 and self.last_pending > 0:
            self.journal.write("buffer_empty", ts=self.stamp(), real=time.perf_counter())
        self.last_pending = pending
        if not self.kill_watch:
            return
        self.pending_max = max(self.pending_max, pending)
        draining = self.bridge.sink.breaker.state.value != "OPEN"
        if draining and 0 < pending < self.pending_max:
            # At least one drain batch committed and more are left: the parent kills now.
            self.journal.write("middrain", ts=self.stamp(), offset=self.offset(), pending=pending)
            print(f"MIDDRAIN {self.offset()!r}", flush=True)
            await asyncio.Event().wait()

    async def settle(self) -> None:
        """Wait (real time) until no observable real IO is in flight."""
        started = time.perf_counter()
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(0.0005)
            await self.observe()
            if self.gateway.io_busy(self.feed) or self.db_busy():
                quiet = 0
                if time.perf_counter() - started > BUSY_CAP:
                    self.journal.write("stall", ts=self.stamp(), real_seconds=BUSY_CAP)
                    return
            else:
                quiet += 1

    async def run_to(self, offset: float) -> None:
        target = MONO0 + offset
        while True:
            await self.settle()
            now = self.clock.monotonic()
            if now >= target:
                return
            deadline = self.clock.next_deadline()
            step_to = target if deadline is None else min(target, max(deadline, now))
            self.ticked = False
            await self.clock.advance(step_to - now)
            if self.cut_armed and self.ticked:
                # The tick's rows are being written right now: cut the connection under
                # the transaction.
                self.pg.down()
                self.cut_armed = False
                assert self.cut_fault is not None
                self.journal_fault(self.cut_fault, "cut")

    async def sync(self) -> None:
        await self.bridge.sink.flush()
        self.journal.write("durable", ts=self.stamp())

    # -- faults -----------------------------------------------------------------------

    def journal_fault(self, fault: Fault, phase: str) -> None:
        self.journal.write(
            "fault",
            name=fault.name,
            phase=phase,
            at=fault.at,
            end=fault.end,
            offset=self.offset(),
            ts=self.stamp(),
            params=dict(fault.params),
        )

    async def start_fault(self, fault: Fault, portfolio: Portfolio) -> None:
        self.journal_fault(fault, "start")
        match fault.name:
            case "positions":
                quantity = float(fault.params["quantity"])
                portfolio.set_position(ACCOUNT, int(fault.params["conid"]), quantity)
                self.journal_positions(portfolio)
            case "db_refused":
                self.pg.down()
            case "db_blackhole":
                self.pg.blackhole()
            case "db_cut":
                self.cut_armed = True
                self.cut_fault = fault
            case _:
                await self.gateway.fault(fault)

    async def end_fault(self, fault: Fault) -> None:
        if fault.name.startswith("db_"):
            if fault.name == "db_cut" and self.cut_armed:
                self.cut_armed = False
                self.journal_fault(fault, "never_cut")
            self.pg.up()
            if fault.params.get("kill"):
                self.kill_watch = True
                self.pending_max = self.bridge.sink.buffer.pending_bytes
        else:
            await self.gateway.fault_end(fault)
        self.journal_fault(fault, "end")

    # -- the run ----------------------------------------------------------------------

    async def run(self, portfolio: Portfolio) -> None:
        begin = self.cfg.start_offset
        for fault in self.faults:
            if fault.at < begin < fault.end:
                # The simulator restarted with this process: the fault would be lost.
                raise RuntimeError(f"cannot resume at {begin} inside {fault}")
        actions: dict[float, list[tuple[str, Fault]]] = {}
        for fault in self.faults:
            if fault.at >= begin:
                actions.setdefault(fault.at, []).append(("start", fault))
            if fault.explicit_end and fault.end >= begin:
                actions.setdefault(fault.end, []).append(("end", fault))
        grid = {POLL * k for k in range(math.ceil(begin / POLL), int(self.end / POLL) + 1)}
        stops = sorted(grid | {a for a in actions if a <= self.end} | {self.end})
        hour = int(begin // 3600) + 1
        for stop in stops:
            await self.run_to(stop)
            await self.sync()
            for phase, fault in sorted(actions.get(stop, []), key=lambda a: a[0] != "end"):
                if phase == "end":
                    await self.end_fault(fault)
                else:
                    await self.start_fault(fault, portfolio)
            if stop >= hour * 3600:
                print(f"PROGRESS {stop!r} {time.perf_counter() - self.real0:.1f}", flush=True)
                hour += 1
        await self.finish()

    async def finish(self) -> None:
        """Give the bridge up to 10 simulated minutes to empty its buffer, then stop."""
        limit = self.end + 600.0
        while self.offset() < limit and (
            self.bridge.sink.buffer.pending_bytes > 0
            or self.bridge.sink.breaker.state.value != "CLOSED"
        ):
            await self.run_to(self.offset() + POLL)
            await self.sync()
        await self.bridge.stop()
        await self.observe()
        self.journal.write("durable", ts=self.stamp())


def _settings_env(cfg: ChildConfig, gateway: Gateway, dsn: str) -> dict[str, str]:
    return {
        **gateway.env(),
        "DATABASE_URL": dsn,
        "BRIDGE_BUFFER_PATH": str(Path(cfg.workdir) / "buffer.jsonl"),
        "BRIDGE_DB_CONNECT_TIMEOUT": "1",
        "BRIDGE_DB_COMMAND_TIMEOUT": "2",
        "BRIDGE_BATCH_SIZE": str(BATCH_SIZE),
        "BRIDGE_LOG_LEVEL": "WARNING",
    }


async def run_child(cfg: ChildConfig) -> None:
    workdir = Path(cfg.workdir)
    start = soak_start(cfg.hours)
    clock = FakeClock(
        start=start + timedelta(seconds=cfg.start_offset), monotonic_start=MONO0 + cfg.start_offset
    )
    journal = Journal(workdir / f"journal-{cfg.child}.jsonl")
    journal.write(
        "start",
        child=cfg.child,
        offset=cfg.start_offset,
        ts=clock.now().isoformat(),
        real=time.perf_counter(),
        wall=time.time(),
    )
    faults = schedule(cfg.mode, cfg.hours)
    portfolio = make_portfolio(cfg, faults)
    db = TestDatabase(cfg.server_dsn, cfg.schema)
    gateway: SocketGateway | PortalGateway
    if cfg.mode == "SOCKET":
        gateway = SocketGateway(portfolio, clock, cfg.seed + cfg.child)
    else:
        gateway = PortalGateway(portfolio, clock, workdir)
    async with TcpProxy(*db.server_address()) as pg:
        await gateway.start()
        settings = load_settings(_settings_env(cfg, gateway, db.proxied_dsn(pg)), use_dotenv=False)
        feed = gateway.make_feed(settings, clock)
        bridge = Bridge(settings, feed=feed, clock=clock)
        harness = Harness(cfg, clock, journal, gateway, feed, bridge, pg, faults)
        portfolio.on_step = harness.on_step
        harness.journal_positions(portfolio)
        harness.on_step(clock.now(), {str(c): portfolio.spot(c) for c in UNDERLYINGS})
        bridge.add_row_callback(harness.on_rows)
        bridge.add_tick_callback(harness.on_tick)
        bridge.add_event_callback(harness.on_event)
        await bridge.start()
        try:
            await harness.run(portfolio)
        finally:
            await bridge.stop()
            await gateway.stop()
    journal.write(
        "end",
        ts=clock.now().isoformat(),
        real=time.time(),
        state=bridge.connection_state.value,
        pending=bridge.status.buffer_pending_bytes,
        final_live=bridge.connection_state is ConnectionState.LIVE,
    )
    journal.close()
    print("DONE", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    cfg = ChildConfig.load(Path(argv[0]))
    logging.basicConfig(
        filename=str(Path(cfg.workdir) / f"child-{cfg.child}.log"),
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(run_child(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
