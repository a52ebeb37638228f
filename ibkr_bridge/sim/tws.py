"""An IB Gateway simulator speaking the real TWS API wire protocol.

Unmodified TWS API clients (ib_async, IBKR's own ibapi) connect to :class:`TwsSimulator`
as to a Gateway: version handshake, ``startApi``, managed accounts, positions, account
updates, contract details and streaming market data with model Greeks computed by the
:class:`~ibkr_bridge.sim.portfolio.Portfolio`. Time comes from an injectable
:class:`~ibkr_bridge.core.clock.Clock`, so tests drive streaming and faults with a FakeClock.

Faults that real Gateways show (restart, nightly reset with 1100/1101/1102, refused
connections, a hung Gateway, garbage on the socket, IBKR's "not computed" Greek
sentinels, positions changing mid-session) can be triggered from tests or from a fault
script (:mod:`ibkr_bridge.sim.faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from attrs import frozen

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.sim import tws_codec as wire
from ibkr_bridge.sim._tasks import BackgroundTasks
from ibkr_bridge.sim.faults import (
    HUGE_FRAME_CHUNK,
    HUGE_FRAME_SIZE,
    MAX_DECLARED_FRAME,
    RESET_KINDS,
    SENTINEL_MODES,
    FaultStep,
    run_fault_script,
)
from ibkr_bridge.sim.portfolio import (
    NEW_YORK,
    Instrument,
    Portfolio,
    Position,
    PositionChange,
)

log = logging.getLogger(__name__)

# tickPrice / tickSize / tickOptionComputation types: (live, delayed)
_BID: Final = (1, 66)
_ASK: Final = (2, 67)
_LAST: Final = (4, 68)
_CLOSE: Final = (9, 75)
_BID_SIZE: Final = (0, 69)
_ASK_SIZE: Final = (3, 70)
_LAST_SIZE: Final = (5, 71)
_VOLUME: Final = (8, 74)
_MODEL_GREEKS: Final = (13, 83)

MSG_CLIENT_IN_USE: Final = (
    "Unable to connect as the client id is already in use. Retry with a unique client id."
)
_FARM_BROKEN: Final = (
    (2103, "Market data farm connection is broken:usfarm"),
    (2105, "HMDS data farm connection is broken:ushmds"),
    (2157, "Sec-def data farm connection is broken:secdefnj"),
)
_FARM_OK: Final = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
# IB's wording of every data-farm notice; {farm} is the farm's name.
FARM_MESSAGES: Final[Mapping[int, str]] = MappingProxyType(
    {
        2103: "Market data farm connection is broken:{farm}",
        2104: "Market data farm connection is OK:{farm}",
        2105: "HMDS data farm connection is broken:{farm}",
        2106: "HMDS data farm connection is OK:{farm}",
        2107: "HMDS data farm connection is inactive but should be available upon demand.{farm}",
        2108: "Market data farm connection is inactive but should be available upon demand.{farm}",
        2157: "Sec-def data farm connection is broken:{farm}",
        2158: "Sec-def data farm connection is OK:{farm}",
    }
)
_DEFAULT_FARM: Final = {2105: "ushmds", 2106: "ushmds", 2107: "ushmds", 2157: "secdefnj"} | {
    2158: "secdefnj"
}
_LOST: Final = (1100, "Connectivity between IB and Trader Workstation has been lost.")
_RESTORED: Final = {
    "1101": "Connectivity between IB and Trader Workstation has been restored - data lost.*",
    "1102": (
        "Connectivity between IB and Trader Workstation has been restored - data maintained. "
        "All data farms are connected: usfarm; ushmds; secdefnj."
    ),
}


@frozen
class RequestRecord:
    """One request a client sent: its message id and raw fields."""

    conn_id: int
    client_id: int | None
    msg_id: int
    fields: tuple[str, ...]
    at: float  # the simulator clock's monotonic time


class _Conn:
    """State of one API socket."""

    def __init__(self, conn_id: int, writer: asyncio.StreamWriter) -> None:
        self.id = conn_id
        self.writer = writer
        self.version = 0
        self.client_id: int | None = None
        self.started = False
        self.md_type = 1
        self.subs: dict[int, int] = {}  # reqId -> conid
        self.positions_sub = False
        self.account_sub: str | None = None
        self.multi_subs: dict[int, str] = {}
        self.held: list[bytes] = []  # written while the Gateway was frozen
        self.task: asyncio.Task[Any] | None = None

    @property
    def closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _min_tick(inst: Instrument) -> float:
    return {"FUT": 0.25, "FOP": 0.05}.get(inst.sec_type, 0.01)


def _floor_tick(value: float, tick: float) -> float:
    # The epsilon keeps 600.01 from flooring to 600.00 through binary rounding.
    return round(math.floor(value / tick + 1e-9) * tick, 6)


def _ceil_tick(value: float, tick: float) -> float:
    return round(math.ceil(value / tick - 1e-9) * tick, 6)


def _near_tick(value: float, tick: float) -> float:
    return round(round(value / tick) * tick, 6)


class TwsSimulator:
    """A Gateway on ``host:port`` serving ``portfolio`` over the TWS API socket protocol.

    ``tick_interval`` is how often (simulator clock seconds) underlyings move and
    subscribed tickers get fresh prices and Greeks; ``account_interval`` how often
    account-update subscribers get their portfolio again, as a Gateway does every few
    minutes.
    """

    def __init__(
        self,
        portfolio: Portfolio,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock | None = None,
        seed: int | None = None,
        tick_interval: float = 1.0,
        account_interval: float = 180.0,
        min_version: int = wire.MIN_VERSION,
        max_version: int = wire.MAX_VERSION,
        faults: Iterable[FaultStep] = (),
        next_order_id: int = 1,
        request_log_size: int = 100_000,
    ) -> None:
        if tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        self.portfolio = portfolio
        self.host = host
        self._port = port
        self._clock: Clock = clock if clock is not None else SystemClock()
        if seed is not None:
            portfolio.reseed(seed)
        self._rng = random.Random(seed)
        self.tick_interval = tick_interval
        self.account_interval = account_interval
        self.min_version = min_version
        self.max_version = max_version
        self._faults = tuple(faults)
        self._next_order_id = next_order_id
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._conn_seq = 0
        self._requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self._request_signal = asyncio.Event()
        self._tasks = BackgroundTasks(log)
        self._unsubscribe: Callable[[], None] | None = None
        self._closes: dict[int, float] = {}
        self._volume: dict[int, float] = {}
        self._running = False
        self._gen = {"refuse": 0, "freeze": 0, "outage": 0, "sentinel": 0, "withhold": 0}
        self._thawed = asyncio.Event()  # cleared while the Gateway is frozen
        self._thawed.set()
        self._refusing = False
        self._outage = False
        self._sentinel: str | None = None
        self._withheld: dict[int, int] = {}  # conid -> generation of its withhold_greeks
        self._stale_ids: dict[int, float] = {}  # client id -> monotonic time it frees up
        self.connections_accepted = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the real one once started with ``port=0``)."""
        return self._port

    @property
    def clock(self) -> Clock:
        return self._clock

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.portfolio.set_time(self._clock.now())
        self._closes = {}
        for inst in self.portfolio.instruments():
            # Underlyings without a spot have no price to close at.
            with contextlib.suppress(KeyError):
                self._closes[inst.conid] = self.portfolio.price(inst.conid)
        self._unsubscribe = self.portfolio.subscribe(self._on_position_change)
        await self._listen()
        self._tasks.spawn(self._stream_loop())
        if self._faults:
            self.run_faults(self._faults)
        log.info("TWS simulator listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._close_listener()
        await self._tasks.cancel_all()
        handlers = []
        for conn in list(self._conns.values()):
            # abort, not close: a client that stopped reading must not keep us waiting.
            conn.writer.transport.abort()
            if conn.task is not None:
                handlers.append(conn.task)
        self._thawed.set()  # let handlers parked by a freeze see their socket is gone
        if handlers:
            # Handlers end on their own once the read fails; cancelling them instead
            # makes asyncio's stream callback log a spurious CancelledError.
            _, pending = await asyncio.wait(handlers, timeout=2.0)
            for task in pending:
                task.cancel()
        self._conns.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        if self._server is not None:
            # Closing the listening socket makes new connects fail with ECONNREFUSED while
            # established sockets stay up (Python 3.11 does not close them here).
            self._server.close()
            self._server = None

    def run_faults(self, steps: Iterable[FaultStep]) -> asyncio.Task[None]:
        """Run a fault script on the simulator clock, starting now."""
        return self._tasks.spawn(run_fault_script(self, tuple(steps), self._clock))

    # -- introspection --------------------------------------------------------------------

    @property
    def client_ids(self) -> frozenset[int]:
        """Client ids of the API sessions currently connected."""
        return frozenset(
            c.client_id for c in self._conns.values() if c.started and c.client_id is not None
        )

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def subscriptions(self) -> Mapping[int, int]:
        """Active streaming market data, reqId → conid, over all sessions."""
        merged: dict[int, int] = {}
        for conn in self._conns.values():
            merged.update(conn.subs)
        return MappingProxyType(merged)

    def subscriptions_of(self, client_id: int) -> Mapping[int, int]:
        for conn in self._conns.values():
            if conn.started and conn.client_id == client_id:
                return MappingProxyType(dict(conn.subs))
        return MappingProxyType({})

    def server_version_of(self, client_id: int) -> int | None:
        for conn in self._conns.values():
            if conn.started and conn.client_id == client_id:
                return conn.version
        return None

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request received (most recent ``request_log_size``), in order."""
        return tuple(self._requests)

    @property
    def request_ids(self) -> list[int]:
        """The message ids of :attr:`requests`, e.g. to assert 58 was never sent."""
        return [r.msg_id for r in self._requests]

    def count_requests(self, msg_id: int, client_id: int | None = None) -> int:
        return sum(
            1
            for r in self._requests
            if r.msg_id == msg_id and (client_id is None or r.client_id == client_id)
        )

    async def wait_for_request(self, msg_id: int, count: int = 1) -> RequestRecord:
        """Wait until ``count`` requests with ``msg_id`` have arrived (wrap in a timeout)."""
        while True:
            matches = [r for r in self._requests if r.msg_id == msg_id]
            if len(matches) >= count:
                return matches[count - 1]
            self._request_signal.clear()
            await self._request_signal.wait()

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    @property
    def refusing(self) -> bool:
        return self._refusing

    @property
    def in_outage(self) -> bool:
        return self._outage

    @property
    def sentinel_mode(self) -> str | None:
        return self._sentinel

    # -- faults ---------------------------------------------------------------------------

    async def restart(self, downtime: float = 0.0, stale_ids: float = 0.0) -> None:
        """Gateway restart: every API socket closes; refuse connects for ``downtime`` s.

        With ``stale_ids`` the old sessions' client ids stay taken for that long (from
        now), so a quick reconnect gets error 326 as from a Gateway that has not yet
        noticed the old session is gone.
        """
        log.info("fault: restart (downtime %.1fs, stale ids %.1fs)", downtime, stale_ids)
        if downtime > 0:
            await self.refuse(downtime)
        until = self._clock.monotonic() + stale_ids
        for conn in list(self._conns.values()):
            if conn.started and conn.client_id is not None and stale_ids > 0:
                self._stale_ids[conn.client_id] = until
            # Forget the session now, so client_ids is exact once restart() returns.
            conn.started = False
            conn.close()

    async def port_reset(self) -> None:
        """Error 1300 (API port reset) to every session, then its socket closes."""
        log.info("fault: port reset (1300)")
        text = (
            "TWS socket port has been reset and this connection is being dropped. "
            f"Please reconnect on the new port - {self._port}"
        )
        for conn in list(self._conns.values()):
            if conn.started:
                self._send_error(conn, -1, 1300, text)
            conn.started = False
            conn.close()

    async def daily_reset(self, kind: str = "1101", outage: float = 30.0) -> None:
        """IBKR server reset: 1100 and broken farms now, 1101 or 1102 after ``outage`` s.

        Sockets stay up; streaming stops during the outage. With 1101 every market data
        subscription is dropped and the client has to subscribe again.
        """
        if kind not in RESET_KINDS:
            raise ValueError(f"kind must be one of {RESET_KINDS}, got {kind!r}")
        log.info("fault: daily reset (%s after %.1fs)", kind, outage)
        self._gen["outage"] += 1
        gen = self._gen["outage"]
        self._outage = True
        for conn in self._started():
            self._send_error(conn, -1, *_LOST)
            for code, text in _FARM_BROKEN:
                self._send_error(conn, -1, code, text)

        async def restore() -> None:
            await self._clock.sleep(outage)
            if self._gen["outage"] == gen:
                self._end_outage(kind)

        self._tasks.spawn(restore())

    def _end_outage(self, kind: str) -> None:
        self._outage = False
        for conn in self._started():
            if kind == "1101":
                conn.subs.clear()
            self._send_error(conn, -1, int(kind), _RESTORED[kind])
            for code, text in _FARM_OK:
                self._send_error(conn, -1, code, text)

    async def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connections (listener closed) for ``seconds``, or until accepted."""
        log.info("fault: refuse connections (%s s)", seconds)
        self._gen["refuse"] += 1
        gen = self._gen["refuse"]
        self._refusing = True
        self._close_listener()
        if seconds is not None:

            async def reopen() -> None:
                await self._clock.sleep(seconds)
                if self._gen["refuse"] == gen:
                    await self.accept_connections()

            self._tasks.spawn(reopen())

    async def accept_connections(self) -> None:
        """End :meth:`refuse`: listen again on the same port."""
        self._gen["refuse"] += 1
        self._refusing = False
        if self._server is None and self._running:
            await self._listen()

    async def freeze(self, seconds: float | None = None) -> None:
        """A hung Gateway: bytes are accepted, nothing is answered or streamed.

        Requests are kept and answered when the freeze ends (after ``seconds``, or on
        :meth:`unfreeze`).
        """
        log.info("fault: freeze (%s s)", seconds)
        self._gen["freeze"] += 1
        gen = self._gen["freeze"]
        self._thawed.clear()
        if seconds is not None:

            async def thaw() -> None:
                await self._clock.sleep(seconds)
                if self._gen["freeze"] == gen:
                    await self.unfreeze()

            self._tasks.spawn(thaw())

    async def unfreeze(self) -> None:
        self._gen["freeze"] += 1
        self._thawed.set()
        for conn in list(self._conns.values()):
            held, conn.held = conn.held, []
            for data in held:
                self._write(conn, data)

    async def garbage(self, nbytes: int = 64, framed: bool = True, count: int = 1) -> None:
        """Send ``count`` bursts of ``nbytes`` random bytes to every session, each inside a
        frame or raw.

        A raw burst corrupts the client's framing for the rest of the session; many framed
        ones are a flood the client must survive (the simulator waits for each session's
        socket to drain between batches, so its own buffers stay small).
        """
        log.info("fault: garbage (%d x %d bytes, framed=%s)", count, nbytes, framed)
        for i in range(count):
            for conn in list(self._conns.values()):
                junk = self._rng.randbytes(nbytes)
                self._write(conn, wire.frame(junk) if framed else junk)
            if i % 64 == 63:
                await self._drain()

    async def huge_frame(
        self, size: int = HUGE_FRAME_SIZE, nbytes: int | None = None, chunk: int = HUGE_FRAME_CHUNK
    ) -> int:
        """Announce one frame of ``size`` bytes to every session, then stream ``nbytes``
        filler bytes of it (default: all of them), ``chunk`` at a time with the socket
        drained in between: a hostile or broken Gateway a client must not buffer for.

        Stops early once every such session is closed. Returns the most filler bytes any
        session was sent.
        """
        if not 0 <= size <= MAX_DECLARED_FRAME:
            raise ValueError(f"size must be 0..{MAX_DECLARED_FRAME}, got {size}")
        total = size if nbytes is None else nbytes
        if total < 0 or chunk <= 0:
            raise ValueError(f"nbytes must be >= 0 and chunk > 0, got {nbytes}, {chunk}")
        log.info("fault: huge frame (%d bytes announced, %d streamed)", size, total)
        conns = [c for c in self._conns.values() if not c.closing]
        header = struct.pack(">I", size)
        for conn in conns:
            self._write(conn, header)
        filler = b"\x7f" * min(chunk, total)
        sent = 0
        while sent < total:
            await self._wait_thawed()  # a frozen Gateway would only pile the filler up
            live = [c for c in conns if not c.closing]
            if not live:
                break
            piece = filler[: total - sent]
            for conn in live:
                self._write(conn, piece)
            sent += len(piece)
            for conn in live:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.writer.drain()
        return sent

    async def error_message(self, code: int, text: str, req_id: int = -1) -> None:
        """An IB error message ``code`` with ``text`` (any length, any content) to every
        started session: what a client quotes from the Gateway must be bounded."""
        log.info("fault: error message %d (%d chars)", code, len(text))
        for conn in self._started():
            self._send_error(conn, req_id, code, text)

    async def _drain(self) -> None:
        for conn in list(self._conns.values()):
            if not conn.closing and self._thawed.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.writer.drain()

    async def sentinel_greeks(self, mode: str, seconds: float | None = None) -> None:
        """Greeks arrive as IBKR's sentinels for ``seconds`` (or until cleared).

        ``minus2``: IBKR's "not computed" values (delta/gamma/vega/theta -2, the others -1);
        ``vega_theta``: real delta, gamma and prices but vega and theta -2;
        ``dblmax``: 1.7976931348623157E308; ``nan``: NaN; ``missing``: no
        tickOptionComputation at all.
        """
        if mode not in SENTINEL_MODES:
            raise ValueError(f"mode must be one of {SENTINEL_MODES}, got {mode!r}")
        log.info("fault: sentinel greeks %s (%s s)", mode, seconds)
        self._gen["sentinel"] += 1
        gen = self._gen["sentinel"]
        self._sentinel = mode
        if seconds is not None:

            async def clear() -> None:
                await self._clock.sleep(seconds)
                if self._gen["sentinel"] == gen:
                    self.clear_sentinel_greeks()

            self._tasks.spawn(clear())

    def clear_sentinel_greeks(self) -> None:
        self._gen["sentinel"] += 1
        self._sentinel = None

    async def withhold_greeks(self, conid: int, seconds: float | None = None) -> None:
        """Send no tickOptionComputation for ``conid`` for ``seconds`` (or until resumed).

        Prices keep streaming and no 1100 is sent: what an option the login has no
        permission for, an illiquid one, or a silently dead model stream looks like.
        """
        self.portfolio.instrument(conid)  # KeyError for an unknown conid, now
        log.info("fault: withhold greeks of %d (%s s)", conid, seconds)
        self._gen["withhold"] += 1
        gen = self._gen["withhold"]
        self._withheld[conid] = gen
        if seconds is not None:

            async def resume() -> None:
                await self._clock.sleep(seconds)
                if self._withheld.get(conid) == gen:
                    self.resume_greeks(conid)

            self._tasks.spawn(resume())

    def resume_greeks(self, conid: int) -> None:
        """End :meth:`withhold_greeks`: current Greeks go out to every subscriber at once."""
        if self._withheld.pop(conid, None) is None:
            return
        now = self._clock.now()
        inst = self.portfolio.instrument(conid)
        for conn in self._started():
            for req_id, sub_conid in list(conn.subs.items()):
                if sub_conid == conid and not self._outage:
                    delayed = 1 if conn.md_type in (3, 4) else 0
                    self._send_greeks(conn, req_id, inst, now, _MODEL_GREEKS[delayed])

    @property
    def withheld_greeks(self) -> frozenset[int]:
        return frozenset(self._withheld)

    async def farm_notice(self, code: int, farm: str | None = None) -> None:
        """Send IB's data-farm notice ``code`` (2103..2108, 2157, 2158) to every session.

        No 1100 comes with it; ``farm`` defaults to the farm a Gateway would name
        (``usfarm`` for market data).
        """
        if code not in FARM_MESSAGES:
            raise ValueError(f"code must be one of {sorted(FARM_MESSAGES)}, got {code!r}")
        name = farm or _DEFAULT_FARM.get(code, "usfarm")
        log.info("fault: farm notice %d (%s)", code, name)
        for conn in self._started():
            self._send_error(conn, -1, code, FARM_MESSAGES[code].format(farm=name))

    def set_position(
        self,
        account: str,
        conid: int | Instrument,
        quantity: float,
        avg_cost: float | None = None,
    ) -> Position | None:
        """Change a position; subscribed clients get position/updatePortfolio messages."""
        return self.portfolio.set_position(account, conid, quantity, avg_cost)

    def remove_position(self, account: str, conid: int) -> Position | None:
        return self.portfolio.remove_position(account, conid)

    def set_spot(self, conid: int, price: float) -> None:
        self.portfolio.set_spot(conid, price)

    # -- connection handling --------------------------------------------------------------

    def _started(self) -> list[_Conn]:
        return [c for c in self._conns.values() if c.started and not c.closing]

    async def _wait_thawed(self) -> None:
        await self._thawed.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn_seq += 1
        conn = _Conn(self._conn_seq, writer)
        conn.task = asyncio.current_task()
        self._conns[conn.id] = conn
        self.connections_accepted += 1
        try:
            if await reader.readexactly(4) != wire.API_PREFIX:
                log.warning("connection %d: no API prefix, closing", conn.id)
                return
            body = await self._read_frame(reader)
            await self._wait_thawed()
            low, high = wire.parse_handshake(body)
            version = wire.negotiate(low, high, self.min_version, self.max_version)
            if version is None:
                log.warning("connection %d: client versions %d..%d unsupported", conn.id, low, high)
                return
            conn.version = version
            self._write(conn, wire.handshake_reply(version, self._connection_time()))
            while True:
                fields = wire.split_fields(await self._read_frame(reader))
                if not fields:
                    continue
                self._record(conn, fields)
                await self._wait_thawed()
                if conn.closing:
                    break
                self._dispatch(conn, fields)
        except (asyncio.IncompleteReadError, ConnectionError, wire.FrameError) as exc:
            log.debug("connection %d closed: %r", conn.id, exc)
        finally:
            self._conns.pop(conn.id, None)
            conn.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        if size > wire.MAX_FRAME:
            raise wire.FrameError(f"frame of {size} bytes")
        return await reader.readexactly(size)

    def _record(self, conn: _Conn, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except ValueError:
            msg_id = -1
        self._requests.append(
            RequestRecord(conn.id, conn.client_id, msg_id, tuple(fields), self._clock.monotonic())
        )
        self._request_signal.set()

    def _write(self, conn: _Conn, data: bytes) -> None:
        if conn.closing:
            return
        if not self._thawed.is_set():
            conn.held.append(data)
            return
        conn.writer.write(data)

    def _send_error(self, conn: _Conn, req_id: int, code: int, text: str) -> None:
        self._write(conn, wire.error(conn.version, req_id, code, text))

    def _connection_time(self) -> str:
        return self._clock.now().astimezone(NEW_YORK).strftime("%Y%m%d %H:%M:%S %Z")

    def _dispatch(self, conn: _Conn, fields: list[str]) -> None:
        msg_id = int(fields[0]) if fields[0].lstrip("-").isdigit() else -1
        if not conn.started and msg_id != 71:
            log.warning("connection %d: request %s before startApi, ignored", conn.id, msg_id)
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            log.info("client %s: request %s not simulated, ignored", conn.client_id, msg_id)
            return
        try:
            handler(self, conn, fields)
        except (ValueError, IndexError, KeyError) as exc:
            log.warning("client %s: malformed request %s: %r", conn.client_id, fields, exc)

    # -- request handlers -----------------------------------------------------------------

    def _start_api(self, conn: _Conn, fields: list[str]) -> None:
        if conn.started:
            return
        client_id = int(fields[2])
        stale = self._stale_ids.get(client_id, -math.inf) > self._clock.monotonic()
        if client_id in self.client_ids or stale:
            log.info("client id %d already in use: error 326 and close", client_id)
            self._send_error(conn, -1, 326, MSG_CLIENT_IN_USE)
            conn.close()
            return
        conn.client_id = client_id
        conn.started = True
        self._write(conn, wire.managed_accounts(self.portfolio.accounts))
        self._write(conn, wire.next_valid_id(self._next_order_id))
        for code, text in _FARM_BROKEN if self._outage else _FARM_OK:
            self._send_error(conn, -1, code, text)

    def _req_ids(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.next_valid_id(self._next_order_id))

    def _req_managed_accounts(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.managed_accounts(self.portfolio.accounts))

    def _req_current_time(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.current_time(int(self._clock.now().timestamp())))

    def _req_positions(self, conn: _Conn, fields: list[str]) -> None:
        conn.positions_sub = True
        for pos in self.portfolio.positions():
            self._write(conn, self._position_msg(pos.account, pos.instrument, pos))
        self._write(conn, wire.position_end())

    def _cancel_positions(self, conn: _Conn, fields: list[str]) -> None:
        conn.positions_sub = False

    def _req_account_updates(self, conn: _Conn, fields: list[str]) -> None:
        subscribe = fields[2] not in ("0", "", "false", "False")
        account = fields[3] if len(fields) > 3 else ""
        if not subscribe:
            conn.account_sub = None
            return
        if not account and len(self.portfolio.accounts) == 1:
            account = self.portfolio.accounts[0]
        if account not in self.portfolio.accounts:
            self._send_error(conn, -1, 2100, "Requested account is not managed: " + account)
            return
        conn.account_sub = account
        self._send_account(conn, account)

    def _send_account(self, conn: _Conn, account: str) -> None:
        now = self._clock.now()
        for key, value, currency in self._account_values(account, now):
            self._write(conn, wire.account_value(key, value, currency, account))
        for pos in self.portfolio.positions(account):
            self._write(conn, self._portfolio_msg(pos, now))
        self._write(conn, wire.account_time(now.astimezone(NEW_YORK).strftime("%H:%M")))
        self._write(conn, wire.account_download_end(account))

    def _account_values(self, account: str, now: datetime) -> list[tuple[str, str, str]]:
        positions = self.portfolio.positions(account)
        values = [self.portfolio.market_value(p, now) for p in positions]
        unrealized = sum(self.portfolio.unrealized_pnl(p, now) for p in positions)
        cash = self.portfolio.cash(account)
        net = cash + sum(values)
        gross = sum(abs(v) for v in values)
        money = [
            ("NetLiquidation", net),
            ("TotalCashValue", cash),
            ("GrossPositionValue", gross),
            ("UnrealizedPnL", unrealized),
            ("RealizedPnL", 0.0),
            ("AvailableFunds", net * 0.5),
            ("ExcessLiquidity", net * 0.6),
            ("BuyingPower", net * 2.0),
            ("EquityWithLoanValue", net),
        ]
        out = [
            ("AccountCode", account, ""),
            ("AccountType", "INDIVIDUAL", ""),
            ("Currency", "USD", "USD"),
        ]
        out += [(key, f"{value:.2f}", "USD") for key, value in money]
        return out

    def _req_account_updates_multi(self, conn: _Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        account = fields[3]
        model = fields[4] if len(fields) > 4 else ""
        accounts = self.portfolio.accounts if account in ("", "All") else (account,)
        conn.multi_subs[req_id] = account
        now = self._clock.now()
        for acct in accounts:
            if acct not in self.portfolio.accounts:
                continue
            for key, value, currency in self._account_values(acct, now):
                self._write(
                    conn, wire.account_update_multi(req_id, acct, model, key, value, currency)
                )
        self._write(conn, wire.account_update_multi_end(req_id))

    def _cancel_account_updates_multi(self, conn: _Conn, fields: list[str]) -> None:
        conn.multi_subs.pop(int(fields[2]), None)

    def _req_account_summary(self, conn: _Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        now = self._clock.now()
        for account in self.portfolio.accounts:
            for key, value, currency in self._account_values(account, now):
                self._write(conn, wire.account_summary(req_id, account, key, value, currency))
        self._write(conn, wire.account_summary_end(req_id))

    def _req_executions(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.exec_details_end(int(fields[2])))

    def _req_open_orders(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.open_order_end())

    def _req_completed_orders(self, conn: _Conn, fields: list[str]) -> None:
        self._write(conn, wire.completed_orders_end())

    def _req_market_data_type(self, conn: _Conn, fields: list[str]) -> None:
        data_type = int(fields[2])
        if data_type not in (1, 2, 3, 4):
            raise ValueError(f"market data type {data_type}")
        conn.md_type = data_type
        for req_id in conn.subs:
            self._write(conn, wire.market_data_type(req_id, data_type))

    def _resolve(self, spec: wire.ContractSpec) -> list[Instrument]:
        if spec.con_id:
            try:
                inst = self.portfolio.instrument(spec.con_id)
            except KeyError:
                return []
            return [inst] if not spec.sec_type or spec.sec_type == inst.sec_type else []
        return self.portfolio.find_instruments(
            symbol=spec.symbol or None,
            sec_type=spec.sec_type or None,
            expiry=spec.expiry or None,
            strike=spec.strike or None,
            right=spec.right or None,
            currency=spec.currency or None,
            multiplier=float(spec.multiplier) if spec.multiplier else None,
            local_symbol=spec.local_symbol or None,
            trading_class=spec.trading_class or None,
        )

    def _req_mkt_data(self, conn: _Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        spec, i = wire.parse_contract(fields, 3)
        if spec.sec_type == "BAG":
            i += 1 + 4 * int(fields[i])
        if fields[i] == "1":
            i += 3
        snapshot = fields[i + 2] == "1"
        if not spec.exchange:
            self._send_error(
                conn, req_id, 321, "Error validating request.-'bW' : cause - Please enter exchange"
            )
            return
        found = self._resolve(spec)
        if len(found) != 1:
            self._send_error(
                conn, req_id, 200, "No security definition has been found for the request"
            )
            return
        if req_id in conn.subs:
            self._send_error(conn, req_id, 322, f"Duplicate ticker id: {req_id}")
            return
        inst = found[0]
        self._write(conn, wire.market_data_type(req_id, conn.md_type))
        self._write(conn, wire.tick_req_params(req_id, _min_tick(inst), "9c0001", 3))
        if snapshot:
            if not self._outage:
                self._send_ticks(conn, req_id, inst, first=True)
            self._write(conn, wire.tick_snapshot_end(req_id))
            return
        conn.subs[req_id] = inst.conid
        if not self._outage:
            self._send_ticks(conn, req_id, inst, first=True)

    def _cancel_mkt_data(self, conn: _Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        if conn.subs.pop(req_id, None) is None:
            self._send_error(conn, req_id, 300, f"Can't find EId with tickerId:{req_id}")

    def _req_contract_details(self, conn: _Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        spec, _ = wire.parse_contract(fields, 3)
        found = self._resolve(spec)
        if not found:
            self._send_error(
                conn, req_id, 200, "No security definition has been found for the request"
            )
            return
        for inst in found:
            self._write(conn, wire.contract_details(conn.version, req_id, inst, self._extra(inst)))
        self._write(conn, wire.contract_details_end(req_id))

    def _extra(self, inst: Instrument) -> wire.DetailsExtra:
        day = self._clock.now().astimezone(NEW_YORK).strftime("%Y%m%d")
        underlying: Instrument | None = None
        if inst.underlying_conid is not None:
            underlying = self.portfolio.instrument(inst.underlying_conid)
        if inst.sec_type == "STK":
            name = inst.symbol
        else:
            parts = [inst.symbol, inst.expiry or "", inst.wire_multiplier]
            if inst.strike is not None:
                parts.insert(2, f"{wire.fmt(inst.strike)} {inst.right}")
            name = " ".join(parts)
        return wire.DetailsExtra(
            min_tick=_min_tick(inst),
            long_name=name,
            valid_exchanges=inst.exchange if inst.exchange != "SMART" else "SMART,ARCA,NYSE",
            trading_hours=f"{day}:0400-{day}:2000",
            liquid_hours=f"{day}:0930-{day}:1600",
            stock_type="ETF" if inst.sec_type == "STK" else "",
            under_symbol=underlying.symbol if underlying is not None else "",
            under_sec_type=underlying.sec_type if underlying is not None else "",
        )

    def _log_only(self, conn: _Conn, fields: list[str]) -> None:
        log.info("client %s sent request %s (no reply simulated)", conn.client_id, fields[0])

    _handlers: Final[Mapping[int, Callable[[TwsSimulator, _Conn, list[str]], None]]] = {
        71: _start_api,
        1: _req_mkt_data,
        2: _cancel_mkt_data,
        5: _req_open_orders,
        6: _req_account_updates,
        7: _req_executions,
        8: _req_ids,
        9: _req_contract_details,
        15: _log_only,  # reqAutoOpenOrders
        16: _req_open_orders,  # reqAllOpenOrders
        17: _req_managed_accounts,
        49: _req_current_time,
        58: _log_only,  # reqGlobalCancel
        59: _req_market_data_type,
        61: _req_positions,
        62: _req_account_summary,
        63: _log_only,  # cancelAccountSummary
        64: _cancel_positions,
        76: _req_account_updates_multi,
        77: _cancel_account_updates_multi,
        99: _req_completed_orders,
    }

    # -- market data ----------------------------------------------------------------------

    def _send_ticks(self, conn: _Conn, req_id: int, inst: Instrument, first: bool) -> None:
        now = self._clock.now()
        delayed = 1 if conn.md_type in (3, 4) else 0
        price = self.portfolio.price(inst.conid, now)
        tick = _min_tick(inst)
        half_spread = max(tick, price * 0.0005)
        bid = max(tick, _floor_tick(price - half_spread, tick))
        ask = max(round(bid + tick, 6), _ceil_tick(price + half_spread, tick))
        last = max(tick, _near_tick(price, tick))
        lot = 100 if inst.sec_type == "STK" else 1
        bid_size = float(self._rng.randint(1, 50) * lot)
        ask_size = float(self._rng.randint(1, 50) * lot)
        last_size = float(self._rng.randint(1, 10) * lot)
        volume = self._volume.get(inst.conid, float(self._rng.randint(100, 5000) * lot))
        volume += last_size
        self._volume[inst.conid] = volume
        self._write(conn, wire.tick_price(req_id, _BID[delayed], bid, bid_size))
        self._write(conn, wire.tick_price(req_id, _ASK[delayed], ask, ask_size))
        self._write(conn, wire.tick_price(req_id, _LAST[delayed], last, last_size))
        self._write(conn, wire.tick_size(req_id, _VOLUME[delayed], volume))
        if first:
            close = _near_tick(self._closes.get(inst.conid, price), tick)
            self._write(conn, wire.tick_price(req_id, _CLOSE[delayed], close, 0.0))
        if inst.is_option:
            self._send_greeks(conn, req_id, inst, now, _MODEL_GREEKS[delayed])

    def _send_greeks(
        self, conn: _Conn, req_id: int, inst: Instrument, now: datetime, tick_type: int
    ) -> None:
        mode = self._sentinel
        if mode == "missing" or inst.conid in self._withheld:
            return
        if mode == "minus2":
            values: list[wire.Field] = [-1.0, -2.0, -1.0, -1.0, -2.0, -2.0, -2.0, -1.0]
        elif mode == "dblmax":
            values = [wire.UNSET_DOUBLE] * 8
        elif mode == "nan":
            values = [math.nan] * 8
        else:
            g = self.portfolio.greeks(inst.conid, now)
            if g is None:
                return
            vega, theta = (-2.0, -2.0) if mode == "vega_theta" else (g.vega, g.theta)
            values = [
                g.implied_vol,
                g.delta,
                g.option_price,
                0.0,
                g.gamma,
                vega,
                theta,
                g.underlying_price,
            ]
        self._write(conn, wire.tick_option_computation(req_id, tick_type, 0, *values))

    async def _stream_loop(self) -> None:
        last = self._clock.monotonic()
        last_account = last
        while True:
            await self._clock.sleep(self.tick_interval)
            mono = self._clock.monotonic()
            self.portfolio.step(mono - last, now=self._clock.now())
            last = mono
            if self.frozen or self._outage:
                continue
            for conn in self._started():
                for req_id, conid in list(conn.subs.items()):
                    self._send_ticks(conn, req_id, self.portfolio.instrument(conid), first=False)
            if self.account_interval > 0 and mono - last_account >= self.account_interval:
                last_account = mono
                for conn in self._started():
                    if conn.account_sub is not None:
                        self._send_account(conn, conn.account_sub)

    # -- position pushes ------------------------------------------------------------------

    def _position_msg(self, account: str, inst: Instrument, pos: Position | None) -> bytes:
        quantity = pos.quantity if pos is not None else 0.0
        avg_cost = pos.avg_cost if pos is not None else 0.0
        return wire.position(account, inst, quantity, avg_cost)

    def _portfolio_msg(self, pos: Position, now: datetime) -> bytes:
        price = self.portfolio.price(pos.conid, now)
        return wire.portfolio_value(
            pos.instrument,
            pos.quantity,
            price,
            self.portfolio.market_value(pos, now),
            pos.avg_cost,
            self.portfolio.unrealized_pnl(pos, now),
            0.0,
            pos.account,
        )

    def _on_position_change(self, change: PositionChange) -> None:
        inst = self.portfolio.instrument(change.conid)
        now = self._clock.now()
        for conn in self._started():
            if conn.positions_sub:
                self._write(conn, self._position_msg(change.account, inst, change.after))
            if conn.account_sub != change.account:
                continue
            if change.after is not None:
                self._write(conn, self._portfolio_msg(change.after, now))
            else:
                # A closed position is reported once more with quantity 0.
                price = self.portfolio.price(inst.conid, now)
                closed = wire.portfolio_value(inst, 0.0, price, 0.0, 0.0, 0.0, 0.0, change.account)
                self._write(conn, closed)
