"""The state a TWS simulator shares between its parts: sessions, fault flags, IB texts.

:class:`Conn` is one API socket; :class:`GatewayState` holds what the request handlers,
the market-data stream and the faults read and change, and writes messages to a session
(holding them back while the Gateway is frozen).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from attrs import frozen

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.sim import _tasks
from ibkr_bridge.sim.faults import FaultStep
from ibkr_bridge.sim.portfolio import Portfolio, Quote
from ibkr_bridge.sim.tws import _codec as wire
from ibkr_bridge.sim.tws import _messages as msg

log = logging.getLogger("ibkr_bridge.sim.tws")

MSG_CLIENT_IN_USE: Final = (
    "Unable to connect as the client id is already in use. Retry with a unique client id."
)
FARM_BROKEN: Final = (
    (2103, "Market data farm connection is broken:usfarm"),
    (2105, "HMDS data farm connection is broken:ushmds"),
    (2157, "Sec-def data farm connection is broken:secdefnj"),
)
FARM_OK: Final = (
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
DEFAULT_FARM: Final = {2105: "ushmds", 2106: "ushmds", 2107: "ushmds", 2157: "secdefnj"} | {
    2158: "secdefnj"
}
LOST: Final = (1100, "Connectivity between IB and Trader Workstation has been lost.")
RESTORED: Final = {
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


class Conn:
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


class GatewayState(_tasks.AsyncRunning):
    """What every part of the simulator works on; see :class:`TwsSimulator` for the arguments."""

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
        self._conns: dict[int, Conn] = {}
        self._conn_seq = 0
        self._requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self._request_signal = asyncio.Event()
        self._tasks = _tasks.BackgroundTasks(log)
        self._unsubscribe: Callable[[], None] | None = None
        self._closes: dict[int, float] = {}
        self._volume: dict[int, float] = {}
        # The latest quotes sent per conid (served_quotes): what a client's mid came from.
        self._quotes: dict[int, deque[Quote]] = {}
        self._fixed_quotes: dict[int, tuple[float, float, float]] = {}  # fixed_quote()
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

    @property
    def client_ids(self) -> frozenset[int]:
        """Client ids of the API sessions currently connected."""
        return frozenset(
            c.client_id for c in self._conns.values() if c.started and c.client_id is not None
        )

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def _started(self) -> list[Conn]:
        return [c for c in self._conns.values() if c.started and not c.closing]

    async def _wait_thawed(self) -> None:
        await self._thawed.wait()

    def _write(self, conn: Conn, data: bytes) -> None:
        if conn.closing:
            return
        if not self._thawed.is_set():
            conn.held.append(data)
            return
        conn.writer.write(data)

    def _send_error(self, conn: Conn, req_id: int, code: int, text: str) -> None:
        self._write(conn, msg.error(conn.version, req_id, code, text))

    def _new_generation(self, kind: str) -> int:
        """Count a new fault (or end) of ``kind``; a timed end only runs if still current."""
        self._gen[kind] += 1
        return self._gen[kind]

    def _end_after(
        self, seconds: float, kind: str, end: Callable[[], Awaitable[None] | None]
    ) -> None:
        """Run ``end`` after ``seconds`` unless another ``kind`` fault or end came first."""
        gen = self._gen[kind]
        self._tasks.spawn_after(self._clock, seconds, lambda: self._gen[kind] == gen, end)
